"""Logging in with an NIH account: XNAT's authentication providers.

The sandbox site offers its local database and an LDAP provider ``nihldap``;
``nihuser`` is an LDAP user who never logged in on the web page, so XNAT's
provider-less lookup checks the password against the local database and
refuses it (XnatProviderManager.retrieveAuthMethod).
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from test_login import (
    cli_env,
    fmrif_login,
    logins,
    outside_any_dataset,  # noqa: F401 - autouse fixture
    reload_config,
    run_cli,
    stored_properties,
    stored_secret,
)

from datalad_fmrif.credentials import default_credential_name, env_names

LDAP_PW = "ldap-password"


@pytest.fixture
def nih():
    from datalad_fmrif.sandbox import Sandbox

    with Sandbox(users={"demo": "demo-password", "nihuser": LDAP_PW},
                 auth_providers={"nihldap": "ldap"},
                 user_providers={"nihuser": "nihldap"}) as box:
        yield box


def _pipe(monkeypatch, password):
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))


def test_several_providers_and_no_terminal_say_how_to_choose(
        secret_service, nih, state_dir, monkeypatch):
    _pipe(monkeypatch, LDAP_PW)
    (res,) = fmrif_login(server=nih.url, user="nihuser")
    assert res["status"] == "impossible"
    assert "nihldap" in res["message"] and "localdb" in res["message"]
    assert "--auth-provider" in res["message"]
    assert logins(nih) == []  # only the login page was read
    assert [r.path for r in nih.requests] == ["/app/template/Login.vm"]
    assert stored_secret(default_credential_name(nih.url)) is None


def test_auth_provider_is_stored_and_used_by_other_processes(
        secret_service, nih, state_dir, monkeypatch):
    name = default_credential_name(nih.url)
    _pipe(monkeypatch, LDAP_PW)
    (res,) = fmrif_login(server=nih.url, user="nihuser", auth_provider="nihldap")
    assert res["status"] == "ok", res["message"]
    assert res["auth_provider"] == "nihldap" and "nihldap" in res["message"]
    assert stored_properties(name)["auth-provider"] == "nihldap"
    assert stored_secret(name) == LDAP_PW
    assert [r.status for r in logins(nih)] == [200]
    # another process logs in with the stored provider (a provider-less
    # login of this user would be refused: XNAT cached 'localdb' for it)
    nih.clear_requests()
    proc = run_cli("fmrif-login", "--server", nih.url, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r.status for r in logins(nih)] == [200]
    # a new password (here: the same) keeps the stored provider, without asking
    reload_config()
    _pipe(monkeypatch, LDAP_PW)
    (res,) = fmrif_login(server=nih.url, user="nihuser")
    assert res["status"] == "ok" and res["auth_provider"] == "nihldap", res["message"]
    # --auth-provider beats the configuration
    subprocess.run(["git", "config", "--global", "datalad.fmrif.auth-provider",
                    "nosuch"], check=True)
    reload_config()
    try:
        (res,) = fmrif_login(server=nih.url, check=True, auth_provider="nihldap")
    finally:
        subprocess.run(["git", "config", "--global", "--unset",
                        "datalad.fmrif.auth-provider"], check=True)
        reload_config()
    assert res["status"] == "ok", res["message"]


def test_provider_less_401_explains_and_a_named_provider_gets_one_attempt(
        nih, state_dir):
    user_var, secret_var = env_names(default_credential_name(nih.url))
    env = cli_env(**{user_var: "nihuser", secret_var: LDAP_PW})
    proc = run_cli("fmrif-login", "--server", nih.url, "--check", env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "--auth-provider" in out and "web page" in out
    assert "user nihuser" in out  # the user name, not only the credential's
    assert LDAP_PW not in out
    assert [r.status for r in logins(nih)] == [401]
    # the same password, provider-less: never again
    proc = run_cli("fmrif-login", "--server", nih.url, "--check", env=env)
    assert "rejected earlier" in proc.stdout + proc.stderr
    assert len(logins(nih)) == 1
    # naming the provider allows one new attempt with the same password
    proc = run_cli("fmrif-login", "--server", nih.url, "--check",
                   "--auth-provider", "nihldap", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r.status for r in logins(nih)] == [401, 200]


def test_configured_provider_for_credentials_from_the_environment(
        nih, state_dir, tmp_path):
    """A batch job: the secret in the environment, the provider in git config."""
    user_var, secret_var = env_names(default_credential_name(nih.url))
    subprocess.run(["git", "config", "--global", "datalad.fmrif.auth-provider",
                    "nihldap"], check=True)
    reload_config()
    env = cli_env(**{user_var: "nihuser", secret_var: LDAP_PW})
    try:
        proc = run_cli("fmrif-login", "--server", nih.url, "--check", env=env)
    finally:  # and through DataLad's environment mapping of the same setting
        subprocess.run(["git", "config", "--global", "--unset",
                        "datalad.fmrif.auth-provider"], check=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env["DATALAD_FMRIF_AUTH__PROVIDER"] = "nihldap"
    proc = run_cli("fmrif-login", "--server", nih.url, "--check", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r.status for r in logins(nih)] == [200, 200]


def test_unknown_provider_is_named_and_not_remembered(
        secret_service, nih, state_dir, monkeypatch):
    _pipe(monkeypatch, LDAP_PW)
    (res,) = fmrif_login(server=nih.url, user="nihuser", auth_provider="nosuch")
    assert res["status"] == "error"
    assert "no authentication provider 'nosuch'" in res["message"]
    _pipe(monkeypatch, LDAP_PW)
    (res,) = fmrif_login(server=nih.url, user="nihuser", auth_provider="nihldap")
    assert res["status"] == "ok", res["message"]


def test_single_other_provider_is_used_without_asking(
        secret_service, state_dir, monkeypatch):
    """A login page with one provider that is not the local database."""
    from datalad_fmrif.sandbox import Sandbox
    from datalad_fmrif.xnat.loginpage import parse_login_providers

    page = ('<form><input type="hidden" id="login_method" name="login_method" '
            'value="nihldap"/></form>')
    assert parse_login_providers(page) == [("nihldap", "")]
    with Sandbox(users={"demo": "pw"}) as sb:
        _pipe(monkeypatch, "pw")
        (res,) = fmrif_login(server=sb.url, user="demo")
        assert res["status"] == "ok" and res["auth_provider"] is None


def test_on_a_terminal_the_provider_is_asked_for(secret_service, nih, state_dir):
    """Two providers on the login page and a terminal: the user chooses."""
    from test_login import DATALAD, terminal_dialogue

    transcript, status = terminal_dialogue(
        [DATALAD, "fmrif-login", "--server", nih.url],
        [(b"XNAT user name", b"nihuser"),
         (b"XNAT password of", LDAP_PW.encode()),
         (b"choices:", b"")])  # the default: the provider that is not localdb
    assert b"choices: localdb, [nihldap]" in transcript, transcript
    assert status == 0, transcript
    assert LDAP_PW.encode() not in transcript
    assert stored_properties(default_credential_name(nih.url))["auth-provider"] == "nihldap"
    assert [r.status for r in logins(nih)] == [200]


def test_datalad_get_logs_in_with_the_stored_provider(
        secret_service, nih, state_dir, monkeypatch, tmp_path):
    """The special remote, in another process, names the stored provider."""
    from test_remote import annex, make_dataset, present, study_files

    _pipe(monkeypatch, LDAP_PW)
    (res,) = fmrif_login(server=nih.url, user="nihuser", auth_provider="nihldap")
    assert res["status"] == "ok", res["message"]
    ds = tmp_path / "ds"
    paths = make_dataset(ds, nih, study_files(nih, 3))
    nih.clear_requests()
    annex(ds, "get", ".")
    assert present(ds) == set(paths)
    assert [r.status for r in logins(nih)] == [200]
