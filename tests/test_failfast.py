"""Final conditions end a ``datalad get`` fast, with one clear message.

With the server down, no credential, a rejected secret or a locked keyring,
every further file would fail the same way: the fmrif remote says the fix
once per process, fails the other keys at once, and git-annex does not
repeat them (DataLad's ``-c annex.retry=3`` is kept out by the dataset's
``datalad.annex.retry``). Real git-annex, DataLad, Secret Service, sandbox.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_remote import annex, make_dataset, run, study_files

from datalad_fmrif.credentials import default_credential_name, env_names
from datalad_fmrif.remote_setup import ensure_remote, recorded_credential
from datalad_fmrif.sandbox import Sandbox, StudySpec

pytestmark = pytest.mark.skipif(
    shutil.which("git-annex-remote-fmrif") is None,
    reason="git-annex-remote-fmrif must be on PATH")

SPEC = StudySpec(seed=3, subjects=2, scans_per_session=3, files_per_scan=4,
                 file_size=4096)
DATALAD = str(Path(sys.executable).parent / "datalad")


@pytest.fixture
def box(state_dir, monkeypatch):
    with Sandbox(SPEC) as sb:
        for var in env_names(default_credential_name(sb.url)):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv("DATALAD_FMRIF_CREDENTIAL", raising=False)
        yield sb


def _env_credential(monkeypatch, sb, name=None, password=None):
    user_var, secret_var = env_names(name or default_credential_name(sb.url))
    monkeypatch.setenv(user_var, sb.user)
    monkeypatch.setenv(secret_var, password or sb.password)


def datalad_get(ds: Path, env=None) -> list[dict]:
    proc = subprocess.run([DATALAD, "-f", "json", "get", "."], cwd=ds, env=env,
                          capture_output=True, text=True, timeout=300)
    results = [json.loads(line) for line in proc.stdout.splitlines()
               if line.startswith("{")]
    files = [r for r in results if r.get("action") == "get" and r.get("type") == "file"]
    assert files, proc.stdout + proc.stderr
    return files


def _message(result) -> str:
    """What DataLad reports for a file: git-annex's error messages."""
    return json.dumps([result.get("message"), result.get("error_message")])


def test_server_down_fails_every_file_once_with_one_fix(box, monkeypatch, tmp_path):
    _env_credential(monkeypatch, box)
    ds = tmp_path / "ds"
    paths = make_dataset(ds, box, study_files(box, 12))
    ensure_remote(SimpleNamespace(path=ds), box.url)
    assert run(ds, "git", "config", "datalad.annex.retry").stdout.strip() == "1"
    box.pause()
    files = datalad_get(ds)
    assert len(files) == len(paths)
    assert all(r["status"] == "error" for r in files)
    messages = [_message(r) for r in files]
    # the fix once (git-annex gets keys one by one from one remote process) ...
    assert sum("Check the URL and your network" in m for m in messages) == 1
    # ... every other file says what it was, and no file was tried twice
    assert sum("not tried again by this process" in m for m in messages) == len(paths) - 1
    assert all(m.count("cannot reach XNAT") == 1 for m in messages), messages


def test_missing_credential_is_said_once_and_the_keyring_asked_once(box, tmp_path):
    ds = tmp_path / "ds"
    make_dataset(ds, box, study_files(box, 6))
    ensure_remote(SimpleNamespace(path=ds), box.url)
    messages = [_message(r) for r in datalad_get(ds)]
    assert sum("fmrif-login" in m for m in messages) == 1
    assert all(m.count("no credential") == 1 for m in messages)
    assert box.requests == []


def test_transient_errors_are_still_retried_by_the_remote(box, monkeypatch, tmp_path):
    from datalad_fmrif.sandbox import Fault

    _env_credential(monkeypatch, box)
    ds = tmp_path / "ds"
    paths = make_dataset(ds, box, study_files(box, 3))
    ensure_remote(SimpleNamespace(path=ds), box.url)
    box.add_fault(Fault("status", status=503, path=r"/files/", times=2))
    files = datalad_get(ds)
    assert [r["status"] for r in files] == ["ok"] * len(paths)


def test_a_configured_retry_is_the_users_choice(box, tmp_path):
    import datalad.api as dl

    ds = tmp_path / "ds"
    dl.create(ds, result_renderer="disabled")
    run(ds, "git", "config", "annex.retry", "2")
    ensure_remote(SimpleNamespace(path=ds), box.url)
    assert run(ds, "git", "config", "datalad.annex.retry", check=False).stdout == ""


def test_a_clone_tries_each_file_once_too(box, tmp_path):
    """autoenable runs the remote's INITREMOTE in the clone as well."""
    import datalad.api as dl

    ds = tmp_path / "ds"
    make_dataset(ds, box, study_files(box, 1))
    clone = tmp_path / "clone"
    dl.clone(str(ds), str(clone), result_renderer="disabled")
    assert run(clone, "git", "config", "remote.fmrif.annex-externaltype").stdout.strip() == "fmrif"
    assert run(clone, "git", "config", "--local", "datalad.annex.retry").stdout.strip() == "1"


# -- which credential --------------------------------------------------------------


def test_a_token_name_is_never_recorded(box, tmp_path):
    ds = tmp_path / "ds"
    make_dataset(ds, box, study_files(box, 1))  # remote 'fmrif' without credential
    annex(ds, "initremote", "lab", "type=external", "externaltype=fmrif",
          "encryption=none", "server=https://other.example.org")
    default = default_credential_name(box.url)
    other = SimpleNamespace(path=ds)
    # an existing remote keeps what it has; new ones record restorable names
    assert ensure_remote(other, box.url, f"{default}-token") == "fmrif"
    assert recorded_credential(ds, box.url) is None
    name = ensure_remote(other, "https://third.example.org", "mylab-token")
    assert recorded_credential(ds, "https://third.example.org") == "mylab"
    assert name != "fmrif"
    ensure_remote(other, "https://fourth.example.org", "fourth-token")
    assert recorded_credential(ds, "https://fourth.example.org") is None  # its default


def test_configuration_overrides_the_recorded_name(box, monkeypatch, tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, box, study_files(box, 2))
    annex(ds, "enableremote", "fmrif", "credential=gone-token")
    # the recorded credential does not exist: the server's default is used
    _env_credential(monkeypatch, box)
    assert [r["status"] for r in datalad_get(ds)] == ["ok"] * len(paths)
    annex(ds, "drop", "--force", ".")
    # DATALAD_FMRIF_CREDENTIAL wins over the recorded name and the default
    for var in env_names(default_credential_name(box.url)):
        monkeypatch.delenv(var)
    _env_credential(monkeypatch, box, name="batch")
    monkeypatch.setenv("DATALAD_FMRIF_CREDENTIAL", "batch")
    assert [r["status"] for r in datalad_get(ds)] == ["ok"] * len(paths)


def test_status_uses_the_recorded_credential(box, monkeypatch, tmp_path):
    import datalad.api as dl
    from helpers import by_status, download, pseudonymous_list

    _env_credential(monkeypatch, box, name="mylab")
    ds = dl.create(tmp_path / "study", result_renderer="disabled")
    subjects, _ = pseudonymous_list(tmp_path, box, n=1)
    results = download(ds, box, subjects, credential="mylab", no_content=True)
    assert "error" not in by_status(results), results
    assert recorded_credential(ds.path, box.url) == "mylab"
    status = dl.fmrif_status(dataset=ds.path, result_renderer="disabled",
                             on_failure="ignore", return_type="list")
    assert status and all(r["status"] == "ok" for r in status), status


# -- a locked keyring ------------------------------------------------------------

LOCKED_SESSION = r"""
set -e
printf %s throwaway | gnome-keyring-daemon --unlock --components=secrets >/dev/null
"$PYTHON" - <<'PY'
import os, secretstorage
from datalad_fmrif.credentials import CredentialStore
CredentialStore().set(os.environ["NAME"], os.environ["XUSER"], os.environ["XPASS"],
                      realm=os.environ["SERVER"])
collection = secretstorage.get_default_collection(secretstorage.dbus_init())
collection.lock()
assert collection.is_locked()
PY
unset XPASS
cd "$DS"
"$DATALAD" -f json fmrif-login --server "$SERVER" --check > "$OUT/check.json" 2> "$OUT/check.err" || true
"$DATALAD" -f json get . > "$OUT/get.json" 2> "$OUT/get.err" || true
echo not-sent | "$DATALAD" -f json fmrif-login --server "$SERVER" --user demo > "$OUT/login.json" 2> "$OUT/login.err" || true
"$DATALAD" -f json fmrif-list --server "$SERVER" 17-M-0181 > "$OUT/list.json" 2> "$OUT/list.err" || true
"""


@pytest.mark.skipif(shutil.which("dbus-run-session") is None
                    or shutil.which("gnome-keyring-daemon") is None,
                    reason="needs dbus-run-session and gnome-keyring-daemon")
def test_locked_keyring_gets_one_clear_message(box, tmp_path):
    """The collection is locked and no display can unlock it (gcr-prompter:
    'cannot open display'): a result with the fix, never a traceback."""
    ds = tmp_path / "ds"
    make_dataset(ds, box, study_files(box, 5))
    ensure_remote(SimpleNamespace(path=ds), box.url)
    out = tmp_path / "out"
    out.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), DS=str(ds), OUT=str(out),
               SERVER=box.url, NAME=default_credential_name(box.url),
               XUSER=box.user, XPASS=box.password, PYTHON=sys.executable,
               DATALAD=DATALAD, DISPLAY="",
               PYTHON_KEYRING_BACKEND="keyring.backends.SecretService.Keyring",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    subprocess.run(["dbus-run-session", "--", "sh", "-c", LOCKED_SESSION],
                   env=env, check=True, timeout=300, capture_output=True)
    name = default_credential_name(box.url)
    user_var, secret_var = env_names(name)
    # a new login: refused before the password is sent (box.requests below)
    for command in ("check", "list", "login"):
        (result,) = [json.loads(line) for line in
                     (out / f"{command}.json").read_text().splitlines()
                     if line.startswith("{")]
        assert result["status"] in ("error", "impossible")
        message = result["message"]
        assert f"credential {name!r} is locked" in message, message
        assert "dbus-run-session" in message and user_var in message
        assert "cannot store" not in message
        assert "Traceback" not in (out / f"{command}.err").read_text()
    gets = [json.loads(line) for line in (out / "get.json").read_text().splitlines()
            if line.startswith("{")]
    messages = [_message(r) for r in gets if r.get("type") == "file"]
    assert len(messages) == 5
    assert sum(secret_var in m for m in messages) == 1
    assert sum("not tried again by this process" in m for m in messages) == 4
    assert all("is locked" in m for m in messages)
    assert box.requests == []


def test_reading_without_a_keyring_says_so(box, tmp_path):
    """No keyring backend at all: the commands that only read say they
    cannot read the credential, not that they cannot store a password."""
    env = dict(os.environ, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    proc = subprocess.run([DATALAD, "fmrif-login", "--server", box.url, "--check"],
                          env=env, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "cannot read the XNAT credential" in output
    assert "cannot store" not in output and "Traceback" not in output
    ds = tmp_path / "ds"
    make_dataset(ds, box, study_files(box, 3))
    fsck = subprocess.run(["git", "annex", "fsck", "--from", "fmrif", "--fast"],
                          cwd=ds, env=env, capture_output=True, text=True, timeout=120)
    output = fsck.stdout + fsck.stderr
    assert fsck.returncode != 0
    assert output.count("gnome-keyring-daemon") == 1, output
    assert "cannot store" not in output


def test_environment_credential_needs_no_keyring_whatever_the_recorded_name(
        box, monkeypatch, tmp_path):
    """A compute node: no keyring, the dataset records 'mylab', the job's
    variables are for the server's default name."""
    ds = tmp_path / "ds"
    paths = make_dataset(ds, box, study_files(box, 2))
    annex(ds, "enableremote", "fmrif", "credential=mylab")
    _env_credential(monkeypatch, box)
    env = dict(os.environ, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    assert [r["status"] for r in datalad_get(ds, env=env)] == ["ok"] * len(paths)
