"""``datalad fmrif-login`` against the sandbox XNAT and the real Secret Service.

Most tests call the command in-process (fast); the ones about the command
line, other processes, missing keyrings and leaks run ``datalad`` in
subprocesses, as a user would.
"""

from __future__ import annotations

import datetime
import http.server
import io
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from datalad_fmrif.credentials import default_credential_name, env_names

DATALAD = str(Path(sys.executable).parent / "datalad")
LOGIN_PATHS = {("PUT", "/data/services/auth")}


# -- helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def outside_any_dataset(tmp_path, monkeypatch):
    """The command reads the configuration of the dataset it runs in: not ours."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    # DataLad's pytest plugin may load datalad.cfg before conftest switches
    # HOME; a non-forced reload never notices a new global config file
    reload_config()


def fmrif_login(**kwargs) -> list[dict]:
    from datalad.api import fmrif_login as api

    return api(on_failure="ignore", result_renderer="disabled",
               return_type="list", **kwargs)


def login(monkeypatch, server: str, password: str, **kwargs) -> dict:
    """A plain login, the password on (non-terminal) standard input."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    results = fmrif_login(server=server, **kwargs)
    assert len(results) == 1
    return results[0]


def logins(sb) -> list:
    """Login requests the sandbox saw: form logins and basic-auth (token) ones."""
    return [r for r in sb.requests
            if (r.method, r.path) in LOGIN_PATHS or r.auth == "basic"]


def stored_secret(name: str) -> str | None:
    import keyring

    return keyring.get_password(f"datalad-{name}", "secret")


def stored_properties(name: str) -> dict:
    """The credential's properties in the user's git configuration."""
    out = subprocess.run(
        ["git", "config", "--global", "--get-regexp",
         rf"^datalad\.credential\.{name}\."],
        capture_output=True, text=True, check=False).stdout
    prefix = f"datalad.credential.{name}."
    return {k[len(prefix):]: v for k, v in
            (line.split(" ", 1) for line in out.splitlines())}


def reload_config():
    from datalad import cfg

    cfg.reload(force=True)


def cli_env(**changes) -> dict:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(*args, password: str | None = None, env=None, cwd=None):
    return subprocess.run(
        [DATALAD, *args], input="" if password is None else password + "\n",
        capture_output=True, text=True, env=env or cli_env(), cwd=cwd,
        timeout=120, check=False)


def assert_nothing_stored(name: str):
    assert stored_secret(name) is None
    assert stored_properties(name) == {}


# -- store, check, forget -------------------------------------------------------------


def test_store_and_check(secret_service, sandbox, state_dir, monkeypatch):
    from datalad.api import credentials

    name = default_credential_name(sandbox.url)
    res = login(monkeypatch, sandbox.url, sandbox.password, user=sandbox.user)
    assert res["status"] == "ok", res["message"]
    assert (res["action"], res["credential"], res["server"], res["user"]) == (
        "fmrif-login", name, sandbox.url, sandbox.user)
    assert sandbox.password not in repr(res)
    # exactly one login request, then a logout
    assert [(r.method, r.status) for r in logins(sandbox)] == [("PUT", 200)]
    assert ("DELETE", "/data/JSESSION") in [(r.method, r.path) for r in sandbox.requests]
    # the secret in the Secret Service, the rest in the configuration
    assert stored_secret(name) == sandbox.password
    props = stored_properties(name)
    assert props["user"] == sandbox.user and props["realm"] == sandbox.url
    assert "secret" not in props
    listed = {r["name"]: r for r in credentials(result_renderer="disabled",
                                                return_type="list")}
    assert listed[name]["cred_user"] == sandbox.user

    reload_config()
    (res,) = fmrif_login(server=sandbox.url, check=True)
    assert res["status"] == "ok", res["message"]
    assert "valid" in res["message"] and res["user"] == sandbox.user
    assert len(logins(sandbox)) == 2


def terminal_dialogue(argv: list[str], answers) -> tuple[bytes, int | None]:
    """Run ``argv`` on a pseudo-terminal, answer its prompts, return what it
    showed and its exit status. ``answers``: (prompt text, reply) pairs; a
    password prompt gets its reply once echo is off."""
    import pty
    import select
    import signal

    pid, fd = pty.fork()
    if pid == 0:  # the child: datalad on a terminal
        os.execv(argv[0], argv)
    transcript = b""

    def until(text: bytes, timeout: float = 20.0):
        nonlocal transcript
        end = time.monotonic() + timeout
        while text not in transcript and time.monotonic() < end:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    transcript += os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    return

    status = None
    try:
        for prompt, reply in answers:
            until(prompt)
            if b"password" in prompt:
                time.sleep(0.2)  # let getpass switch echo off
            os.write(fd, reply + b"\n")
        end = time.monotonic() + 20
        while status is None and time.monotonic() < end:
            until(b"\0", 0.2)  # drain the terminal, never blocks
            done, code = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(code) if done else None
    finally:
        if status is None:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        os.close(fd)
    return transcript, status


def test_interactive_prompt_without_echo(secret_service, sandbox, state_dir):
    """On a terminal: user name (with a default) and password, not echoed."""
    transcript, status = terminal_dialogue(
        [DATALAD, "fmrif-login", "--server", sandbox.url],
        [(b"XNAT user name", sandbox.user.encode()),
         (b"XNAT password of", sandbox.password.encode())])
    assert b"stored the credential" in transcript, transcript
    assert status == 0
    assert b"(repeat)" not in transcript
    assert sandbox.password.encode() not in transcript
    assert stored_secret(default_credential_name(sandbox.url)) == sandbox.password
    assert len(logins(sandbox)) == 1


def test_forget(secret_service, sandbox, state_dir, monkeypatch):
    name = default_credential_name(sandbox.url)
    assert login(monkeypatch, sandbox.url, sandbox.password,
                 user=sandbox.user)["status"] == "ok"
    reload_config()
    (res,) = fmrif_login(server=sandbox.url, forget=True)
    assert res["status"] == "ok", res["message"]
    assert_nothing_stored(name)
    reload_config()
    (res,) = fmrif_login(server=sandbox.url, forget=True)
    assert res["status"] == "notneeded"
    (res,) = fmrif_login(server=sandbox.url, check=True)
    assert res["status"] == "impossible" and "fmrif-login" in res["message"]


def test_credential_name_and_server_from_dataset_config(
        secret_service, sandbox, state_dir, tmp_path, monkeypatch):
    from datalad.api import create

    ds = create(tmp_path / "ds", result_renderer="disabled")
    ds.config.set("datalad.fmrif.server", sandbox.url, scope="local")
    ds.config.set("datalad.fmrif.credential", "sandbox-xnat", scope="local")
    res = login(monkeypatch, None, sandbox.password, user=sandbox.user,
                dataset=ds.path)
    assert res["status"] == "ok", res["message"]
    assert (res["server"], res["credential"]) == (sandbox.url, "sandbox-xnat")
    assert stored_secret("sandbox-xnat") == sandbox.password
    # found from the current directory, without -d
    monkeypatch.chdir(ds.path)
    reload_config()
    (res,) = fmrif_login(check=True)
    assert (res["status"], res["server"], res["credential"]) == (
        "ok", sandbox.url, "sandbox-xnat")
    assert fmrif_login(forget=True)[0]["status"] == "ok"


# -- lockout safety -------------------------------------------------------------------


def test_wrong_password_one_attempt_and_never_again(
        secret_service, sandbox, state_dir, monkeypatch):
    name = default_credential_name(sandbox.url)
    res = login(monkeypatch, sandbox.url, "wrong-password", user=sandbox.user)
    assert res["status"] == "error"
    assert "login attempts made: 1" in res["message"]
    assert "datalad fmrif-login" in res["message"]
    assert "wrong-password" not in repr(res)
    assert sandbox.failed_logins(sandbox.user) == 1
    assert [r.status for r in logins(sandbox)] == [401]
    assert_nothing_stored(name)
    seen = len(sandbox.requests)

    # the same wrong password again: refused without a request
    res = login(monkeypatch, sandbox.url, "wrong-password", user=sandbox.user)
    assert res["status"] == "error" and "earlier" in res["message"]
    # ... and from the environment, in another process
    user_var, secret_var = env_names(name)
    proc = run_cli("fmrif-login", "--server", sandbox.url, "--check",
                   env=cli_env(**{user_var: sandbox.user,
                                  secret_var: "wrong-password"}))
    assert proc.returncode != 0
    assert "rejected earlier" in proc.stdout + proc.stderr
    assert "not tried again" in proc.stdout + proc.stderr
    assert len(sandbox.requests) == seen
    assert sandbox.failed_logins(sandbox.user) == 1
    assert_nothing_stored(name)

    # another password is a new attempt
    res = login(monkeypatch, sandbox.url, sandbox.password, user=sandbox.user)
    assert res["status"] == "ok", res["message"]


# -- import ----------------------------------------------------------------------------


@pytest.mark.parametrize("keys, remove, mode", [
    (("username", "password"), False, 0o600),
    (("user", "pass"), True, 0o600),
    # readable by others, but removed: no advice about it any more
    (("username", "password"), True, 0o644),
])
def test_import(secret_service, sandbox, state_dir, tmp_path, keys, remove, mode):
    name = default_credential_name(sandbox.url)
    path = tmp_path / "xnat.yml"
    path.write_text(f"{keys[0]}: {sandbox.user}\n{keys[1]}: '{sandbox.password}'\n")
    path.chmod(mode)
    (res,) = fmrif_login(server=sandbox.url, import_file=str(path),
                         remove_imported=remove)
    assert res["status"] == "ok", res["message"]
    assert res["user"] == sandbox.user
    assert stored_secret(name) == sandbox.password
    assert len(logins(sandbox)) == 1
    assert path.exists() is not remove
    if remove:
        assert f"removed {path}" in res["message"]
        assert "readable" not in res["message"] and "chmod" not in res["message"]
    assert ("removed" in res["message"]) is remove
    assert "readable by other users" not in res["message"]


def test_import_warns_about_a_group_readable_file(
        secret_service, sandbox, state_dir, tmp_path):
    path = tmp_path / "xnat.yml"
    path.write_text(f"username: {sandbox.user}\npassword: {sandbox.password}\n")
    path.chmod(0o640)
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    log = logging.getLogger("datalad.fmrif.login")
    log.addHandler(handler)
    try:
        (res,) = fmrif_login(server=sandbox.url, import_file=str(path))
    finally:
        log.removeHandler(handler)
    assert res["status"] == "ok", res["message"]
    # said once, in the result; not again as a log warning
    assert not any("readable by other users" in w.getMessage() for w in warnings)
    assert res["message"].count("readable by other users") == 1
    assert "-rw-r-----" in res["message"]
    assert path.exists()


def test_short_password_is_masked_without_mangling_words(
        secret_service, state_dir, monkeypatch):
    """A one-letter password rejected: the message keeps 'xnat-...' whole."""
    from datalad_fmrif.sandbox import Sandbox

    with Sandbox(users={"demo": "z"}) as sb:
        res = login(monkeypatch, sb.url, "x", user="demo")
        assert res["status"] == "error"
        name = default_credential_name(sb.url)
        assert name.startswith("xnat-") and repr(name) in res["message"]
        assert "***nat" not in res["message"]
        assert "user demo" in res["message"]  # the user, not only the credential


def _unreadable(path: Path):
    path.write_text("username: demo\npassword: demo-password\n")
    path.chmod(0)


BAD_FILES = {
    "missing": (None, "does not exist"),
    "directory": (lambda p: p.mkdir(), "not a regular file"),
    "unreadable": (_unreadable, "permission denied"),
    "not-yaml": (b'username: demo\npassword: "demo-password\n', "not valid YAML at line"),
    "binary": (b"\xff\xfe\x00\x01username", "not a text"),
    "empty": (b"", "not a YAML mapping"),
    "a-list": (b"- demo\n- demo-password\n", "not a YAML mapping"),
    "no-password": (b"username: demo\n", "incomplete: no password"),
    "no-user": (b"password: demo-password\n", "incomplete: no user name"),
    "number": (b"username: demo\npassword: 0123\n", "put it in quotes"),
    "newline": (b'username: demo\npassword: "demo-\\npassword"\n', "line break"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_import_bad_files(secret_service, sandbox, state_dir, tmp_path, case):
    make, expected = BAD_FILES[case]
    if case == "unreadable" and os.geteuid() == 0:
        pytest.skip("root can read any file")
    path = tmp_path / "xnat.yml"
    if isinstance(make, bytes):
        path.write_bytes(make)
        path.chmod(0o600)
    elif make:
        make(path)
    (res,) = fmrif_login(server=sandbox.url, import_file=str(path),
                         remove_imported=True)
    assert res["status"] in ("error", "impossible")
    assert expected in res["message"]
    assert "demo-password" not in res["message"]
    assert "demo-\npassword" not in res["message"]
    assert sandbox.requests == []
    assert_nothing_stored(default_credential_name(sandbox.url))
    if case != "missing":
        assert path.exists()  # never removed unless stored


def test_import_cli_fails_with_nonzero_exit(sandbox, state_dir, tmp_path):
    proc = run_cli("fmrif-login", "--server", sandbox.url, "--import",
                   str(tmp_path / "nothing.yml"))
    assert proc.returncode != 0
    assert "does not exist" in proc.stdout + proc.stderr


# -- bad input and bad servers --------------------------------------------------------


@pytest.mark.parametrize("user, stdin, expected", [
    ("demo\nroot", "demo-password\n", "user name contains a line break"),
    ("demo", "demo-password\nsecond line\n", "password contains a line break"),
    ("demo", "", "no password on standard input"),
    ("demo", "\n", "no password on standard input"),
])
def test_single_line_credentials(secret_service, sandbox, state_dir, monkeypatch,
                                 user, stdin, expected):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    (res,) = fmrif_login(server=sandbox.url, user=user)
    assert res["status"] == "impossible"
    assert expected in res["message"]
    assert sandbox.requests == []
    assert_nothing_stored(default_credential_name(sandbox.url))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Hello(http.server.BaseHTTPRequestHandler):
    """Not XNAT: 200 'hello' to everything."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def hello_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_server(secret_service, state_dir, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    res = login(monkeypatch, url, "demo-password", user="demo")
    assert res["status"] == "error"
    assert "cannot reach XNAT" in res["message"]
    assert_nothing_stored(default_credential_name(url))


def test_server_that_is_not_xnat(secret_service, state_dir, monkeypatch,
                                 hello_server):
    res = login(monkeypatch, hello_server, "demo-password", user="demo")
    assert res["status"] == "error"
    assert "XNAT" in res["message"]
    assert "demo-password" not in res["message"]
    assert_nothing_stored(default_credential_name(hello_server))


@pytest.fixture
def self_signed(tmp_path):
    """A certificate for 127.0.0.1 that no system CA bundle trusts."""
    x509 = pytest.importorskip("cryptography.x509")
    from ipaddress import IPv4Address

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_is_verified_and_a_ca_bundle_can_be_configured(
        secret_service, state_dir, tmp_path, monkeypatch, self_signed):
    import certifi
    from datalad.api import create

    from datalad_fmrif.sandbox import Sandbox

    # a CA bundle in the environment that does not know the sandbox's CA
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with Sandbox(https=self_signed) as sb:
        name = default_credential_name(sb.url)
        res = login(monkeypatch, sb.url, sb.password, user=sb.user)
        assert res["status"] == "error"
        assert "cannot verify the TLS certificate" in res["message"]
        assert "datalad.fmrif.ca-bundle" in res["message"]
        assert sb.failed_logins(sb.user) == 0
        assert_nothing_stored(name)
        # the site's CA, configured for the dataset, wins over the environment
        ds = create(tmp_path / "ds", result_renderer="disabled")
        ds.config.set("datalad.fmrif.ca-bundle", self_signed[0], scope="local")
        res = login(monkeypatch, sb.url, sb.password, user=sb.user,
                    dataset=ds.path)
        assert res["status"] == "ok", res["message"]
        assert stored_secret(name) == sb.password
        # ... and the token request goes through the same verified session
        (res,) = fmrif_login(server=sb.url, token=True, dataset=ds.path)
        assert res["status"] == "ok", res["message"]
        # REQUESTS_CA_BUNDLE alone works too
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", self_signed[0])
        (res,) = fmrif_login(server=sb.url, check=True)
        assert res["status"] == "ok", res["message"]


# -- alias tokens ---------------------------------------------------------------------


def test_token_issue_and_use_from_the_environment(
        secret_service, sandbox, state_dir, monkeypatch):
    name = default_credential_name(sandbox.url)
    token_name = f"{name}-token"
    assert login(monkeypatch, sandbox.url, sandbox.password,
                 user=sandbox.user)["status"] == "ok"
    reload_config()
    sandbox.clear_requests()
    (res,) = fmrif_login(server=sandbox.url, token=True)
    assert res["status"] == "ok", res["message"]
    assert res["credential"] == token_name
    secret = stored_secret(token_name)
    props = stored_properties(token_name)
    alias = props["user"]
    assert secret and secret not in repr(res)
    # one login with the password, one request for the token
    assert [(r.method, r.path) for r in logins(sandbox)] == [
        ("PUT", "/data/services/auth")]
    assert "/data/services/tokens/issue" in [r.path for r in sandbox.requests]
    # its expiry: XNAT's estimatedExpirationTime, 48 h by default
    expires = datetime.datetime.fromisoformat(props["expires"]).timestamp()
    assert abs(expires - (time.time() + 48 * 3600)) < 120
    assert res["expires"] == props["expires"]
    # the advice: the token in the variables of the credential datasets use
    user_var, secret_var = env_names(name)
    assert user_var in res["message"] and secret_var in res["message"]
    assert f"credentials get {token_name}" in res["message"]
    assert "--credential" not in res["message"]
    assert "expires at" in res["message"]

    # a compute node: no Secret Service, no keyring at all, only the variables
    sandbox.clear_requests()
    proc = run_cli(
        "fmrif-login", "--server", sandbox.url, "--check",
        env=cli_env(DBUS_SESSION_BUS_ADDRESS=None,
                    PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
                    **{user_var: alias, secret_var: secret}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout
    assert secret not in proc.stdout + proc.stderr
    assert [(r.method, r.path, r.auth, r.status) for r in logins(sandbox)] == [
        ("GET", "/data/JSESSION", "basic", 200)]


def test_expired_token_is_not_tried(secret_service, sandbox, state_dir,
                                    monkeypatch):
    name = default_credential_name(sandbox.url)
    token_name = f"{name}-token"
    assert login(monkeypatch, sandbox.url, sandbox.password,
                 user=sandbox.user)["status"] == "ok"
    reload_config()
    assert fmrif_login(server=sandbox.url, token=True)[0]["status"] == "ok"
    past = (datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(hours=1)).isoformat(timespec="seconds")
    subprocess.run(["git", "config", "--global",
                    f"datalad.credential.{token_name}.expires", past], check=True)
    reload_config()
    sandbox.clear_requests()
    (res,) = fmrif_login(server=sandbox.url, credential=token_name, check=True)
    assert res["status"] == "error"
    assert "expired" in res["message"] and "--token" in res["message"]
    assert sandbox.requests == []


# -- no keyring -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fail-keyring", "silent-plaintext"])
def test_no_keyring_is_refused(sandbox, state_dir, variant):
    env = cli_env(DBUS_SESSION_BUS_ADDRESS=None, PYTHON_KEYRING_BACKEND=None)
    if variant == "fail-keyring":
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    else:
        # make sure keyring really picks keyrings.alt's plaintext file here
        chosen = subprocess.run(
            [sys.executable, "-c", "import keyring; print(keyring.get_keyring())"],
            capture_output=True, text=True, env=env, check=True).stdout
        assert "PlaintextKeyring" in chosen, chosen
    name = default_credential_name(sandbox.url)
    proc = run_cli("fmrif-login", "--server", sandbox.url, "--user", sandbox.user,
                   password=sandbox.password, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "cannot store the XNAT password safely" in output
    assert "gnome-keyring-daemon" in output and env_names(name)[1] in output
    assert sandbox.requests == []  # not even a login
    assert stored_properties(name) == {}
    assert not list(Path.home().glob(".local/share/python_keyring/*"))


# -- parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(check=True, forget=True),
    dict(token=True, import_file="x.yml"),
    dict(remove_imported=True),
    dict(user="demo", check=True),
    dict(credential="Not.A-Name", check=True),
])
def test_conflicting_parameters(kwargs):
    from datalad_next.constraints.exceptions import CommandParametrizationError

    with pytest.raises(CommandParametrizationError):
        fmrif_login(**kwargs)


# -- the secret goes nowhere --------------------------------------------------------


def _git_spy(tmp_path: Path) -> tuple[Path, Path]:
    """A ``git`` first on PATH that records argv and environment of each call."""
    real = shutil.which("git")
    bindir, log = tmp_path / "spybin", tmp_path / "git-calls.log"
    bindir.mkdir()
    spy = bindir / "git"
    spy.write_text(f'#!/bin/sh\n{{ printf "%s\\n" "$@"; env; }} >> "{log}"\n'
                   f'exec "{real}" "$@"\n')
    spy.chmod(0o755)
    return bindir, log


def test_secret_leaks_nowhere(secret_service, tmp_path):
    from datalad.api import create

    from datalad_fmrif.sandbox import Sandbox

    password = "Pw-" + secrets.token_hex(12)
    wrong = "Wrong-" + secrets.token_hex(12)
    home = Path.home()
    bindir, git_log = _git_spy(tmp_path)
    env = cli_env(DATALAD_LOG_LEVEL="debug",
                  PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with Sandbox(users={"leaky": password}) as sb:
        name = default_credential_name(sb.url)
        ds = create(home / f"leak-ds-{sb.port}", result_renderer="disabled")
        yaml_file = home / ".xnat"
        runs = [
            run_cli("fmrif-login", "--server", sb.url, "--user", "leaky",
                    password=wrong, env=env),
            run_cli("fmrif-login", "-d", ds.path, "--server", sb.url,
                    "--user", "leaky", password=password, env=env),
            # JSON output shows every field of a result record
            run_cli("-f", "json", "fmrif-login", "--server", sb.url, "--check",
                    env=env, cwd=ds.path),
            run_cli("-f", "json", "fmrif-login", "--server", sb.url, "--token",
                    env=env),
        ]
        assert [p.returncode for p in runs] == [1, 0, 0, 0], [
            p.stdout + p.stderr for p in runs]
        token_secret = stored_secret(f"{name}-token")
        assert token_secret
        yaml_file.write_text(f"username: leaky\npassword: '{password}'\n")
        yaml_file.chmod(0o600)
        runs += [
            run_cli("fmrif-login", "--server", sb.url, "--import",
                    str(yaml_file), "--remove-imported", env=env),
            run_cli("fmrif-login", "--server", sb.url, "--forget", env=env),
        ]
        assert [p.returncode for p in runs[4:]] == [0, 0], [
            p.stdout + p.stderr for p in runs[4:]]
        assert not yaml_file.exists()
        recorded = [f"{r.path} {r.query}" for r in sb.requests]
    needles = {"password": password, "wrong password": wrong,
               "token secret": token_secret}

    # debug logs and results of every run
    output = "\n".join(p.stdout + p.stderr for p in runs)
    assert "[DEBUG]" in output  # really at debug level
    # every file under HOME but the keyring's own store
    keyrings = home / ".local" / "share" / "keyrings"
    files = [p for p in home.rglob("*")
             if p.is_file() and not p.is_symlink() and keyrings not in p.parents]
    assert any(p.name == ".gitconfig" for p in files)
    # the dataset's history, the requests' URLs, argv and environment of git
    history = subprocess.run(["git", "-C", ds.path, "log", "-p", "--all"],
                             capture_output=True, text=True, check=True).stdout
    spied = git_log.read_text()
    assert "credential" in spied  # the spy saw the config writes
    for what, needle in needles.items():
        assert needle not in output, f"{what} in the output"
        for path in files:
            assert needle.encode() not in path.read_bytes(), f"{what} in {path}"
        assert needle not in history, f"{what} in the git history"
        assert not any(needle in r for r in recorded), f"{what} in a URL"
        assert needle not in spied, f"{what} in argv or environment of git"
