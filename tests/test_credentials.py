"""Unit tests of datalad_fmrif.credentials: names, servers, the keyring check,
the environment override and the rejection memory. No network."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from datalad_fmrif.credentials import (
    DEFAULT_SERVER,
    Credential,
    CredentialError,
    CredentialStore,
    NoKeyring,
    Rejections,
    default_credential_name,
    env_names,
    keyring_problem,
    normalize_server,
    resolve_credential_name,
    resolve_server,
    resolve_verify,
)

TOKEN_ALIAS = "0b5e8c1e-3f0a-4a7e-9d2b-6c1f2e3d4a5b"


# -- credential names -----------------------------------------------------------


@pytest.mark.parametrize("server, name", [
    (DEFAULT_SERVER, "fmrif-xnat"),
    ("https://FMRIF-XNAT.nimh.nih.gov/", "fmrif-xnat"),
    ("https://xnat.example.org:8443/xnat", "xnat-8443"),
    ("http://127.0.0.1:41234", "xnat-127-0-0-1-41234"),
    ("http://localhost:8080", "xnat-localhost-8080"),
    ("https://[::1]:8443", "xnat-1-8443"),
])
def test_default_credential_name(server, name):
    assert default_credential_name(server) == name


def test_resolve_credential_name_order():
    server = "http://127.0.0.1:41234"
    assert resolve_credential_name(None, server, {}) == "xnat-127-0-0-1-41234"
    cfg = {"datalad.fmrif.credential": "from-config"}
    assert resolve_credential_name(None, server, cfg) == "from-config"
    assert resolve_credential_name("explicit", server, cfg) == "explicit"


def test_env_names_round_trip_through_datalad_config(monkeypatch):
    """The variables we advertise are the ones DataLad maps to the credential."""
    from datalad.config import ConfigManager

    user_var, secret_var = env_names("xnat-127-0-0-1-41234")
    assert user_var == "DATALAD_CREDENTIAL_XNAT__127__0__0__1__41234_USER"
    assert secret_var == "DATALAD_CREDENTIAL_XNAT__127__0__0__1__41234_SECRET"
    monkeypatch.setenv(user_var, "someone")
    cfg = ConfigManager()
    assert cfg.get("datalad.credential.xnat-127-0-0-1-41234.user") == "someone"


# -- servers ----------------------------------------------------------------------


def test_resolve_server_order():
    assert resolve_server(None, {}) == DEFAULT_SERVER
    cfg = {"datalad.fmrif.server": "https://xnat.example.org/"}
    assert resolve_server(None, cfg) == "https://xnat.example.org"
    assert resolve_server("http://127.0.0.1:9/xnat/", cfg) == "http://127.0.0.1:9/xnat"


def test_resolve_server_dataset_config_over_global(tmp_path):
    """A dataset's configuration wins over the user's (global) one."""
    from datalad import cfg as user_cfg
    from datalad.api import create

    ds = create(tmp_path / "ds", result_renderer="disabled")
    user_cfg.set("datalad.fmrif.server", "https://global.example.org",
                 scope="global")
    try:
        user_cfg.reload(force=True)
        ds.config.reload(force=True)
        assert resolve_server(None, user_cfg) == "https://global.example.org"
        assert resolve_server(None, ds.config) == "https://global.example.org"
        ds.config.set("datalad.fmrif.server", "https://ds.example.org",
                      scope="local")
        assert resolve_server(None, ds.config) == "https://ds.example.org"
        assert resolve_server(None, user_cfg) == "https://global.example.org"
    finally:
        user_cfg.unset("datalad.fmrif.server", scope="global")
        user_cfg.reload(force=True)


@pytest.mark.parametrize("url", [
    "https://demo:s3cr3t-in-url@xnat.example.org",
    "ftp://demo:s3cr3t-in-url@xnat.example.org",
])
def test_server_url_with_password_is_refused_without_quoting_it(url):
    with pytest.raises(CredentialError) as info:
        normalize_server(url)
    assert "s3cr3t-in-url" not in str(info.value)
    assert "must not contain" in str(info.value)


@pytest.mark.parametrize("url", ["xnat.example.org", "ftp://x.org",
                                 "https://x.org/?a=1", "https://x.org/#f"])
def test_server_url_must_be_plain_http(url):
    with pytest.raises(CredentialError):
        normalize_server(url)


def test_tls_verification_is_never_off(monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    assert resolve_verify({}) is True
    assert resolve_verify({"datalad.fmrif.ca-bundle": "/ca.pem"}) == "/ca.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/env-ca.pem")
    assert resolve_verify({}) == "/env-ca.pem"


# -- the credential record ------------------------------------------------------


def test_credential_repr_hides_the_secret():
    cred = Credential("fmrif-xnat", "demo", "s3cr3t-value", "keyring")
    assert "s3cr3t-value" not in repr(cred)
    assert "s3cr3t-value" not in str(cred)
    assert "demo" in repr(cred)


def test_token_and_expiry():
    now = datetime.now(timezone.utc)
    past = Credential("x-token", TOKEN_ALIAS, "s", "keyring",
                      (now - timedelta(minutes=1)).isoformat())
    future = Credential("x-token", TOKEN_ALIAS, "s", "keyring",
                        (now + timedelta(hours=47)).isoformat())
    assert past.is_token and past.expired()
    assert future.is_token and not future.expired()
    assert not Credential("x", "demo", "s", "keyring").is_token
    assert not Credential("x", "demo", "s", "keyring").expired()


# -- the environment override -----------------------------------------------------


def test_environment_override_needs_no_keyring(monkeypatch):
    """With both variables set, the keyring is not consulted at all."""
    import keyring
    from keyring.backends import fail

    user_var, secret_var = env_names("env-only")
    monkeypatch.setenv(user_var, "demo")
    monkeypatch.setenv(secret_var, "from-env")
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        cred = CredentialStore().get("env-only")
        assert (cred.user, cred.secret, cred.source) == ("demo", "from-env",
                                                         "environment")
        monkeypatch.delenv(user_var)
        with pytest.raises(CredentialError, match=user_var):
            CredentialStore().get("env-only")
        monkeypatch.delenv(secret_var)
        with pytest.raises(NoKeyring, match="keyring"):
            CredentialStore().get("env-only")
    finally:
        keyring.set_keyring(previous)


# -- the keyring check -------------------------------------------------------------


def test_keyring_problem_detects_fail_and_silent_plaintext(monkeypatch):
    import keyring
    from keyring.backends import fail
    from keyrings.alt.file import PlaintextKeyring

    previous = keyring.get_keyring()
    try:
        keyring.set_keyring(fail.Keyring())
        assert "no keyring backend" in keyring_problem()
        keyring.set_keyring(PlaintextKeyring())
        monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
        assert "plaintext" in keyring_problem()
        # chosen explicitly, it is the user's decision
        monkeypatch.setenv("PYTHON_KEYRING_BACKEND",
                           "keyrings.alt.file.PlaintextKeyring")
        assert keyring_problem() is None
    finally:
        keyring.set_keyring(previous)


def test_secret_service_is_fine(secret_service):
    assert keyring_problem() is None


@pytest.mark.parametrize("provider", [None, "nihldap"])
def test_the_stored_credential_reads_as_datalads_manager_reads_it(secret_service, provider):
    """CredentialStore.get reads what the manager stored without importing
    datalad_next (see CredentialStore._stored); both reads must agree."""
    from datalad import cfg
    from datalad_next.credman import CredentialManager

    name = f"xnat-read-test-{provider or 'plain'}"
    store = CredentialStore(cfg)
    store.set(name, "someone", "not-a-real-secret", realm="http://127.0.0.1:9/",
              expires="2031-01-01T00:00:00Z", auth_provider=provider)
    try:
        by_manager = {k: v for k, v in CredentialManager(cfg).get(name).items()
                      if not k.startswith("_")}
        assert store._stored(name) == by_manager
        cred = store.get(name)
        assert (cred.user, cred.secret, cred.source, cred.expires, cred.auth_provider) == (
            "someone", "not-a-real-secret", "keyring", "2031-01-01T00:00:00Z", provider)
    finally:
        store.remove(name)
    assert store._stored(name) is None and store.get(name) is None


# -- the rejection memory ----------------------------------------------------------


def test_rejections_remember_a_fingerprint_only(state_dir):
    rejections = Rejections()
    wrong = Credential("fmrif-xnat", "demo", "wrong-s3cr3t", "prompt")
    right = Credential("fmrif-xnat", "demo", "right-s3cr3t", "prompt")
    assert rejections.rejected_at(wrong) is None
    rejections.remember(wrong, "https://x.org")
    assert rejections.rejected_at(wrong)
    # the same secret from elsewhere (the environment, another process)
    assert Rejections().rejected_at(
        Credential("fmrif-xnat", "demo", "wrong-s3cr3t", "environment"))
    assert rejections.rejected_at(right) is None
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert b"wrong-s3cr3t" not in path.read_bytes()
            if path.suffix == ".json":
                assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    rejections.forget("fmrif-xnat")
    assert rejections.rejected_at(wrong) is None


def test_expired_check_uses_the_clock():
    soon = datetime.now(timezone.utc) + timedelta(seconds=60)
    cred = Credential("x-token", TOKEN_ALIAS, "s", "keyring", soon.isoformat())
    assert not cred.expired()
    assert cred.expired(now=time.time() + 120)


def test_null_keyring_is_refused():
    """keyring --disable selects the null backend, which stores nothing."""
    import keyring
    from keyring.backends import null

    from datalad_fmrif.credentials import keyring_problem

    before = keyring.get_keyring()
    keyring.set_keyring(null.Keyring())
    try:
        assert "disabled" in keyring_problem()
    finally:
        keyring.set_keyring(before)
    assert keyring_problem() is None or "disabled" not in keyring_problem()
