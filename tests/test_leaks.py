"""Secrets and identifiers, tried on purpose.

- The password never shows: not in any output at debug level, not in any
  file of the dataset or its history (every object of every branch, the
  git-annex branch included), not under $HOME outside the keyring's own
  store, not in the argv or the environment of any child process.
- Under pseudonyms, the same holds for subject labels, session labels and
  session dates (the downloaded DICOM content itself aside).
- TLS is verified, always: a self-signed server is refused with a message
  that says what to do, and works once its certificate is configured, in the
  special remote's transfers too.
- NIH accounts lock: a wrong password costs exactly one failed login per
  machine, whatever the parallelism, and later runs do not try it again.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import datalad.api as dl
import pytest
from helpers import PROJECT, break_zips, content_gets, git, keyring_sandbox, subjects_csv

from datalad_fmrif.sandbox import StudySpec

BIN = Path(sys.executable).parent
DATALAD = str(BIN / "datalad")
SPEC = StudySpec(seed=10, subjects=2, sessions_per_subject=(1, 2), scans_per_session=3,
                 files_per_scan=2, file_size=4096)


def sandbox(spec=SPEC, *, user="demo", password="demo-password", **kwargs):
    """A sandbox whose user's password is in the keyring (fmrif-login done)."""
    return keyring_sandbox(spec, users={user: password}, **kwargs)


def pseudonymous_csv(tmp_path, sb):
    subjects = sb.study.subjects(PROJECT)
    rows = [(PROJECT, s.label, f"P{n:02d}") for n, s in enumerate(subjects, 1)]
    return subjects_csv(tmp_path, rows), subjects


# -- the spies ------------------------------------------------------------------------------


def spies(tmp_path: Path) -> tuple[Path, Path]:
    """``git``, ``git-annex`` and ``git-annex-remote-fmrif`` first on PATH:
    each call writes its argv and environment to a file of its own, then
    becomes the real program (stdin and stdout untouched: the special
    remote's protocol goes through)."""
    bindir, logs = tmp_path / "spybin", tmp_path / "spylogs"
    bindir.mkdir()
    logs.mkdir()
    for name in ("git", "git-annex", "git-annex-remote-fmrif"):
        real = shutil.which(name)
        assert real, name
        spy = bindir / name
        spy.write_text(
            "#!/bin/sh\n"
            f'log="{logs}/{name}.$$.log"\n'
            '{ printf "%s\\n" "$0" "$@"; echo ----; env; } > "$log"\n'
            f'exec "{real}" "$@"\n')
        spy.chmod(0o755)
    return bindir, logs


def every_file(root: Path, *, skip=()) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        found += [here / f for f in filenames if not (here / f).is_symlink()]
    return found


def git_objects(repo: Path) -> bytes:
    """Every object reachable from any ref (all branches, git-annex), inflated."""
    listed = subprocess.run(["git", "rev-list", "--all", "--objects"], cwd=repo,
                            capture_output=True, check=True).stdout
    ids = b"".join(line.split(b" ")[0] + b"\n" for line in listed.splitlines())
    return subprocess.run(["git", "cat-file", "--batch"], cwd=repo, input=ids,
                          capture_output=True, check=True).stdout


def assert_absent(needles: dict[str, bytes], places: dict[str, bytes]):
    for what, needle in needles.items():
        for where, haystack in places.items():
            assert needle not in haystack, f"{what} found in {where}"


# -- the leak scan ----------------------------------------------------------------------------


def test_no_secret_and_no_identifier_anywhere(tmp_path, secret_service, state_dir):
    password = f"Pw=&+/ {secrets.token_hex(12)}"
    started = time.time()
    bindir, logs = spies(tmp_path)
    env = dict(os.environ, DATALAD_LOG_LEVEL="debug",
               PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with sandbox(user="leaky", password=password) as sb:
        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        csv, subjects = pseudonymous_csv(tmp_path, sb)
        runs = [subprocess.run(
            [DATALAD, "fmrif-download", "-d", ds.path, "--server", sb.url, "-J", "2",
             str(csv)], capture_output=True, env=env, timeout=300)]
        assert runs[0].returncode == 0, runs[0].stderr.decode()[-3000:]
        clone = tmp_path / "clone"
        runs.append(subprocess.run([DATALAD, "clone", ds.path, str(clone)],
                                   capture_output=True, env=env, timeout=120))
        runs.append(subprocess.run([DATALAD, "get", "-J", "4", "-s", "fmrif", "."],
                                   cwd=clone, capture_output=True, env=env, timeout=300))
        assert [r.returncode for r in runs] == [0, 0, 0], runs[-1].stderr.decode()[-3000:]
        assert git(dl.Dataset(clone), "annex", "find", "--not", "--in", "here") == ""
        urls = "\n".join(f"{r.method} {r.path} {r.query}" for r in sb.requests).encode()
    output = b"\n".join(r.stdout + r.stderr for r in runs)
    assert b"[DEBUG]" in output  # really at debug level
    spied = b"\n".join(p.read_bytes() for p in logs.iterdir())
    assert b"git-annex-remote-fmrif" in spied and b"fast-import" in spied  # the spies saw it all

    # the password, in every form it could take on its way
    needles = {"password": password.encode(),
               "password (form-encoded)": quote_plus(password).encode(),
               "password (URL-encoded)": quote(password, safe="").encode(),
               "password (basic auth)": base64.b64encode(f"leaky:{password}".encode())}
    home = Path.home()
    keyrings = home / ".local" / "share" / "keyrings"
    places = {"the output": output, "a URL": urls, "argv or environment": spied}
    for repo in (ds.pathobj, clone):
        places[f"the git objects of {repo.name}"] = git_objects(repo)
        for p in every_file(repo):
            places[str(p)] = p.read_bytes()
    for p in every_file(home, skip={keyrings}) + every_file(state_dir):
        places[str(p)] = p.read_bytes()
    assert_absent(needles, places)

    # identifiers: labels and dates of subjects and sessions (the DICOM
    # content in the annex holds them, as it must; nothing else may)
    sessions = [e for s in subjects for e in sb.study.sessions(s.id)]
    needles = {f"subject label {s.id}": s.label.encode() for s in subjects}
    needles.update({f"session label {e.id}": e.label.encode() for e in sessions})
    needles.update({f"session date {e.id}": e.date.encode() for e in sessions})
    needles.update({f"session date {e.id} (compact)": e.date.replace("-", "").encode()
                    for e in sessions})
    places = {"the output": output, "argv or environment": spied}
    for repo in (ds.pathobj, clone):
        places[f"the git objects of {repo.name}"] = git_objects(repo)
        for p in every_file(repo, skip={repo / ".git" / "annex" / "objects"}):
            places[str(p)] = p.read_bytes()
    for p in every_file(home, skip={keyrings}):
        if p.stat().st_mtime >= started:
            places[str(p)] = p.read_bytes()
    assert_absent(needles, places)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def self_signed(tmp_path):
    """A certificate for 127.0.0.1 that no CA bundle trusts, from openssl."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_is_always_verified(tmp_path, secret_service, state_dir, self_signed,
                                monkeypatch):
    import certifi

    # bundles in the environment that do not know the sandbox's certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    with sandbox(https=self_signed) as sb:
        assert sb.url.startswith("https://")
        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        csv, _ = pseudonymous_csv(tmp_path, sb)

        def fmrif_download():
            return dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, jobs=2,
                                     result_renderer="disabled", on_failure="ignore",
                                     return_type="list")

        for bundle in (None, str(tmp_path / "missing.pem")):
            if bundle:
                ds.config.set("datalad.fmrif.ca-bundle", bundle, scope="local")
            (res,) = fmrif_download()
            assert res["status"] == "error", res
            assert "cannot verify the TLS certificate" in res["message"]
            assert "datalad.fmrif.ca-bundle" in res["message"]
            assert sb.requests == []  # not even the login went through
        assert sb.failed_logins(sb.user) == 0

        ds.config.set("datalad.fmrif.ca-bundle", self_signed[0], scope="local")
        res = fmrif_download()
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        # ... and that included the content's transfers
        assert git(ds, "annex", "find", "--not", "--in", "here") == ""
        assert content_gets(sb)

        # a clone knows no bundle: its transfers are refused, then work (git
        # annex directly: `datalad get` would retry every refusal three times)
        clone = dl.clone(ds.path, tmp_path / "clone", result_renderer="disabled")
        got = subprocess.run(["git", "annex", "get", "--from", "fmrif", "."], cwd=clone.path,
                             capture_output=True, text=True, timeout=300)
        assert got.returncode != 0
        assert "cannot verify the TLS certificate" in got.stdout + got.stderr
        clone.config.set("datalad.fmrif.ca-bundle", self_signed[0], scope="local")
        got = subprocess.run([DATALAD, "get", "-J", "2", "-s", "fmrif", "."], cwd=clone.path,
                             capture_output=True, text=True, timeout=300)
        assert got.returncode == 0, got.stdout + got.stderr
        assert git(clone, "annex", "find", "--not", "--in", "here") == ""


# -- lockout ------------------------------------------------------------------------------------


def test_one_failed_login_whatever_the_parallelism(tmp_path, secret_service, state_dir):
    """The password is changed on the server while a -J 8 download runs:
    eight special-remote processes start with the stale stored password,
    and XNAT counts one failed login. A `datalad get -J 8` in a clone and
    another download make no further attempt."""
    spec = StudySpec(seed=11, subjects=1, sessions_per_subject=(1, 1), scans_per_session=3,
                     files_per_scan=4, file_size=4096)  # 8 files: one per job
    with sandbox(spec, lockout_after=3) as sb:
        # no zips (they would come through the download's own session, logged
        # in before the change): every file through a special-remote process
        break_zips(sb)
        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        csv, _ = pseudonymous_csv(tmp_path, sb)
        res = dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, no_content=True,
                                result_renderer="disabled", return_type="list")
        assert {r["status"] for r in res} == {"ok"}
        sb.clear_requests()

        def login(r):
            return (r.method, r.path) == ("PUT", "/data/services/auth")

        def change_password_after_the_first_login():
            end = time.monotonic() + 120
            while time.monotonic() < end:
                if any(login(r) and r.status == 200 for r in sb.requests):
                    sb.set_password(sb.user, "changed-on-the-web-page")
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=change_password_after_the_first_login)
        watcher.start()
        run = subprocess.run(
            [DATALAD, "fmrif-download", "-d", ds.path, "--server", sb.url, "-J", "8", str(csv)],
            capture_output=True, text=True, timeout=300)
        watcher.join()
        output = run.stdout + run.stderr
        assert run.returncode != 0, output
        assert "fmrif-login" in output
        assert sb.failed_logins(sb.user) == 1
        assert [r.status for r in sb.requests if login(r)] == [200, 401]
        assert not sb.locked(sb.user)
        assert git(ds, "status", "--porcelain") == ""
        assert git(ds, "annex", "find", "--in", "here") == ""

        seen = len(sb.requests)
        clone = dl.clone(ds.path, tmp_path / "clone", result_renderer="disabled")
        got = subprocess.run([DATALAD, "get", "-J", "8", "."], cwd=clone.path,
                             capture_output=True, text=True, timeout=300)
        assert got.returncode != 0
        assert "not tried again" in got.stdout + got.stderr
        res = dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, jobs=8,
                                result_renderer="disabled", on_failure="ignore",
                                return_type="list")
        assert any("not tried again" in r["message"] for r in res), res
        assert sb.requests[seen:] == []  # not one request more, let alone a login
        assert sb.failed_logins(sb.user) == 1
