"""Reliability, tried on purpose: faults, expiry, outages, kills, a full disk.

Every test runs the real thing (DataLad, git-annex, the ``fmrif`` special
remote, the keyring) against the sandbox XNAT, makes it misbehave with
injected faults, and then checks the dataset, not only the messages: what
is committed has verified content, nothing is half-done, and a re-run
completes the job. The studies are tiny (4 kB files, a few dozen of them) so
that the suite stays fast; the load test has a big brother under
``--run-slow``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datalad.api as dl
import pytest
from helpers import (PROJECT, ZIP_PATH, assert_fsck, break_zips, by_status, default_sigint,
                     download, git, file_gets, keyring_sandbox, manifests,
                     pseudonymous_list)

from datalad_fmrif.sandbox import Fault, StudySpec

DATALAD = str(Path(sys.executable).parent / "datalad")
EXCLUDED = ("REQUISITION", "SCREEN-SAVE", "SAVE")

# 1 subject, 2 sessions, 2 downloadable scans of 3 files each: 12 files
SMALL = StudySpec(seed=3, subjects=1, sessions_per_subject=(2, 2), scans_per_session=3,
                  files_per_scan=3, file_size=4096)


# -- helpers ---------------------------------------------------------------------------


def sandbox(spec=SMALL, **kwargs):
    """A sandbox whose demo credential is in the keyring (as after fmrif-login)."""
    return keyring_sandbox(spec, **kwargs)


@pytest.fixture
def small(secret_service, state_dir):
    with sandbox() as sb:
        yield sb


# Retries keep their number but not their waiting (0.5 s, 1 s, 2 s, 4 s: 7.5 s
# for every request that keeps failing), in this process and in every Python
# process the test starts (datalad, the special remote), through a
# sitecustomize module that patches the defaults when the modules load.
FAST_BACKOFF = 0.01
_SITECUSTOMIZE = f"""
import importlib.abc, importlib.util, sys

_TARGETS = {{"datalad_fmrif.xnat.session", "datalad_fmrif.content.transfer"}}


def _patch(module):
    if module.__name__.endswith("session"):
        module.XnatSession.__init__.__kwdefaults__["backoff"] = {FAST_BACKOFF}
    else:
        module.fetch.__kwdefaults__["backoff"] = {FAST_BACKOFF}


class _FastRetries(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _TARGETS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _FastRetries())
"""


@pytest.fixture
def fast_retries(tmp_path_factory, monkeypatch):
    """Retries without the waiting, here and in child processes."""
    from datalad_fmrif.content import transfer
    from datalad_fmrif.xnat.session import XnatSession

    site = tmp_path_factory.mktemp("fast-retries")
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setitem(XnatSession.__init__.__kwdefaults__, "backoff", FAST_BACKOFF)
    monkeypatch.setitem(transfer.fetch.__kwdefaults__, "backoff", FAST_BACKOFF)


def new_dataset(tmp_path, name="study"):
    """A fresh dataset; made after the credential is stored, so that its
    configuration manager has seen it."""
    return dl.create(tmp_path / name, result_renderer="disabled")


def wanted(sb, subjects) -> list:
    """Sandbox files a default download takes (no identifying series, DICOM only)."""
    found = []
    for s in subjects:
        for e in sb.study.sessions(s.id):
            types = {sc.id: sc.type for sc in sb.study.scans(e.id)}
            found += [f for f in sb.study.files(e.id)
                      if f.scan_id is not None and types[f.scan_id] not in EXCLUDED]
    return found


def file_re(f) -> str:
    """Fault path of one file's download."""
    return re.escape(f"/scans/{f.scan_id}/resources/{f.resource_id}/files/{f.name}") + "$"


def session_re(e, rest="") -> str:
    return re.escape(f"/data/experiments/{e.id}{rest}") + "$"


def cli(ds, sb, subjects, *args, env=None, timeout=300):
    """``datalad -f json fmrif-download`` as a user runs it: (process, records)."""
    proc = subprocess.run(
        [DATALAD, "-f", "json", "fmrif-download", "-d", ds.path, "--server", sb.url,
         *args, str(subjects)],
        capture_output=True, text=True, env=env, timeout=timeout, check=False)
    records = []
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return proc, records


def head_files(ds) -> set[str]:
    out = git(ds, "ls-tree", "-r", "--name-only", "HEAD")
    return {p for p in out.splitlines() if not p.startswith(".")}


def annex_lines(ds, *args) -> list[str]:
    return [line for line in git(ds, "annex", *args).splitlines() if line]


def assert_consistent(ds, *, content=True):
    """What is committed is whole: no changes left over, no stray files, every
    committed annexed file with its verified content (unless --no-content)."""
    assert git(ds, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    if content:
        assert annex_lines(ds, "find", "--not", "--in", "here", "--branch", "HEAD") == []
    assert_fsck(ds, "--quiet")


def assert_complete(ds, sb, subjects):
    """Every wanted file committed with XNAT's content; nothing else; consistent."""
    want = {(f.session_id, f.scan_id, f.name): f for f in wanted(sb, subjects)}
    docs = manifests(ds)
    got = {(m["session"]["id"], f["scan_id"], f["name"]): f["path"]
           for m in docs.values() for f in m["files"]}
    assert set(got) == set(want)
    assert head_files(ds) == set(got.values())
    for k, path in got.items():
        data = (ds.pathobj / path).read_bytes()
        assert hashlib.md5(data).hexdigest() == want[k].true_md5, path
    assert_consistent(ds)


def failures(results, type="file") -> dict[str, str]:
    """Dataset path (relative) -> message of every failed result of a type."""
    out = {}
    for r in results:
        if r.get("type") == type and r["status"] in ("error", "impossible"):
            key = os.path.relpath(r["path"], r["refds"]) if type == "file" else \
                r.get("xnat_session_id") or r["message"]
            out[key] = r["message"]
    return out


def logins(sb) -> list:
    return [r for r in sb.requests if r.path == "/data/services/auth"]


def path_of(ds, f) -> str | None:
    """Dataset path a sandbox file was planned to (from the manifests), if any."""
    for m in manifests(ds).values():
        for entry in m["files"]:
            if (entry["scan_id"], entry["name"]) == (f.scan_id, f.name):
                return entry["path"]
    return None


def requests_for(sb, f) -> list:
    return [r for r in sb.requests if r.path.endswith(f"/files/{f.name}")]


# -- transient faults -------------------------------------------------------------------


def test_transient_faults_on_listings_and_files_are_retried(tmp_path, small, ds):
    sb = small
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    s1, s2 = sb.study.sessions(subs[0].id)
    files = wanted(sb, subs)
    a, b, c, d, e = files[0], files[2], files[5], files[7], files[10]
    break_zips(sb)  # every file one by one: the path whose retries are tested
    faults = [sb.add_fault(fault) for fault in (
        Fault("status", path=r"^/data/projects/[^/]+/subjects$", status=503),
        Fault("reset", path=r"/subjects/[^/]+/experiments$"),
        Fault("status", path=session_re(s1, "/scans"), status=502, times=2),
        Fault("reset", path=session_re(s2, "/scans/ALL/files")),
        Fault("status", path=file_re(a), status=503),
        Fault("status", path=file_re(b), status=500, times=2),
        Fault("reset", path=file_re(c)),  # before any byte
        Fault("reset", path=file_re(d), after_bytes=1000),  # mid-body
        Fault("truncate", path=file_re(e), after_bytes=1500),  # short body
    )]
    res = download(ds, sb, csv, jobs=2)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    assert all(f.hits == f.times for f in faults)  # each one was hit
    assert_complete(ds, sb, subs)
    # each failed request was retried until it worked
    assert [r.status for r in requests_for(sb, b)] == [500, 500, 200]
    assert [r.status for r in requests_for(sb, c)] == [0, 200]
    # broken bodies are resumed where they broke off, not fetched again
    assert [r.status for r in requests_for(sb, d)] == [200, 206]
    assert [r.status for r in requests_for(sb, e)] == [200, 206]
    assert sb.failed_logins(sb.user) == 0


def test_persistent_failures_are_reported_and_a_rerun_completes(tmp_path, small, ds, fast_retries):
    """A run that cannot finish says what failed, exits non-zero, commits only
    what is whole; a later run completes it."""
    sb = small
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    s1, s2 = sb.study.sessions(subs[0].id)
    files = [f for f in wanted(sb, subs) if f.session_id == s1.id]
    a, b = files[1], files[4]
    break_zips(sb)  # every file one by one: the path whose retries are tested
    sb.add_fault(Fault("status", path=file_re(a), status=503, times=None))
    sb.add_fault(Fault("reset", path=file_re(b), times=None))
    sb.add_fault(Fault("status", path=session_re(s2, "/scans/ALL/files"), status=500,
                       times=None))
    head = git(ds, "rev-parse", "HEAD")
    proc, records = cli(ds, sb, csv, "-J", "2")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    # the failed files are named, with the reason, and so is the failed session
    failed = failures(records)
    assert len(failed) == 2, output
    assert all("503" in m or "ConnectionError" in m or "Reset" in m or "failed" in m
               for m in failed.values()), failed
    assert s2.id in output
    # the other session was downloaded; what is committed is whole, and the
    # failed files are not in the dataset
    assert git(ds, "rev-parse", "HEAD") != head
    assert_consistent(ds)
    assert len(head_files(ds)) == len(files) - 2
    for f in (a, b):
        path = path_of(ds, f)
        assert path is None or not os.path.lexists(ds.pathobj / path)
    assert len(requests_for(sb, a)) > 1  # retried, within a budget
    assert len(requests_for(sb, a)) <= 10

    sb.clear_faults()
    res = download(ds, sb, csv, jobs=2)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    assert_complete(ds, sb, subs)


def test_bad_content_is_never_committed(tmp_path, small, ds, fast_retries):
    """A body that never arrives whole, an HTML page with status 200, a wrong
    digest, a wrong size: each is reported per file, none becomes content."""
    sb = small
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    files = wanted(sb, subs)
    cut, html, digest, size, nodigest_html, nodigest_sniff = (
        files[0], files[3], files[5], files[6], files[8], files[11])
    break_zips(sb)  # every file one by one (tests/test_bulk.py: the same in zips)
    sb.add_fault(Fault("truncate", path=file_re(cut), after_bytes=0, times=None))
    sb.add_fault(Fault("html200", path=file_re(html), times=None))
    sb.study.set_digest(digest.session_id, digest.scan_id, digest.name, "0" * 32)
    # XNAT has no digest for two files: only the HTML check can catch the page
    for f in (nodigest_html, nodigest_sniff):
        sb.study.set_digest(f.session_id, f.scan_id, f.name, "")
    sb.add_fault(Fault("html200", path=file_re(nodigest_html), times=None))
    page = b"<!DOCTYPE html><html><body>Login</body></html>"
    sb.add_fault(Fault("body", path=file_re(nodigest_sniff), times=None,
                       body=page, content_type="application/octet-stream"))

    # the listing announces a size the download does not have
    def wrong_size(body: bytes) -> bytes:
        doc = json.loads(body)
        for row in doc["ResultSet"]["Result"]:
            if row["Name"] == size.name:
                row["Size"] = str(size.size + 10)
        return json.dumps(doc).encode()

    sb.add_fault(Fault("body", path=session_re(sb.study.session(size.session_id),
                                                "/scans/ALL/files"), body=wrong_size))

    res = download(ds, sb, csv, jobs=2)
    failed = failures(res)
    assert len(failed) == 6, res
    messages = "\n".join(failed.values())
    assert "broke off" in messages
    assert "HTML" in messages
    assert "MD5" in messages or "Verification" in messages
    assert "bytes" in messages
    # nothing of them is in the dataset, its history or its annex
    bad = [cut, html, digest, size, nodigest_html, nodigest_sniff]
    committed = head_files(ds)
    assert len(committed) == len(files) - len(bad)
    for f in bad:
        assert not any(p.endswith(f.name) for p in committed)
        assert not list((ds.pathobj / ".git" / "annex" / "objects").rglob(f"*{f.md5 or 'none'}*"))
    assert_consistent(ds)

    sb.clear_faults()
    for f in bad:
        sb.study.set_digest(f.session_id, f.scan_id, f.name, None)
    res = download(ds, sb, csv, jobs=2)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    assert_complete(ds, sb, subs)


# -- session expiry ---------------------------------------------------------------------


# Flaky on a loaded machine (two test suites at once on 2 cores): a process
# logged in again after the idle pause can meet "did not answer like XNAT
# after login" from xnatpy's check of the new session. Passes alone; the
# same re-login path is covered by test_forced_expiry_logs_in_again_once.
# Runs with --run-slow until the cause is found.
@pytest.mark.slow
def test_idle_session_expiry_logs_in_again(tmp_path, secret_service, state_dir):
    # XNAT's idle timeout is 15 minutes; 3 s keeps the test short and still
    # leaves a loaded CI machine time between a login and its first request
    with sandbox(session_timeout=3.0) as sb:
        ds = new_dataset(tmp_path)
        csv, subs = pseudonymous_list(tmp_path, sb, n=1)
        _, s2 = sb.study.sessions(subs[0].id)
        # a pause longer than the idle timeout, in the middle of the listings
        # (this process) and in the middle of the transfers (special remote)
        sb.add_fault(Fault("slow", path=session_re(s2, "/scans"), delay=4.0))
        break_zips(sb)  # every file through the special remote
        sb.add_fault(Fault("slow", path=file_re(wanted(sb, subs)[4]), delay=4.0))
        res = download(ds, sb, csv, jobs=2)
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        assert_complete(ds, sb, subs)
        expired = [r for r in sb.requests if r.status == 401]
        assert len(expired) >= 2
        assert sb.failed_logins(sb.user) == 0
        # this process and each special-remote process: one login each, plus
        # one for every expiry (the remote processes' own pauses may add some)
        assert 3 <= len(logins(sb)) <= 3 + len(expired)


def test_forced_expiry_logs_in_again_once(tmp_path, small, ds):
    """XNAT ends sessions whenever it likes: each process logs in again, once
    per expiry, and goes on; also when its very first request meets one (a
    special-remote process logs in lazily)."""
    sb = small
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    s1, s2 = sb.study.sessions(subs[0].id)
    files = wanted(sb, subs)
    break_zips(sb)  # every file through the special remote, whose logins are counted
    faults = [sb.add_fault(fault) for fault in (
        Fault("expire", path=session_re(s1, "/scans/ALL/files")),
        # XNAT's login page with status 200 where JSON was expected: expired too
        Fault("html200", path=session_re(s2, "/scans")),
        Fault("expire", path=file_re(files[9])),
        # the first file request: the first request of a special-remote process
        Fault("expire", path="/files/", times=1),
    )]
    res = download(ds, sb, csv, jobs=2)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    assert all(f.hits == f.times for f in faults)
    assert_complete(ds, sb, subs)
    # this process: one login and two re-logins; each special-remote process
    # (git-annex starts one or two for -J 2): one login; plus one per expiry
    remote_processes = len(logins(sb)) - 3 - 2
    assert remote_processes in (1, 2), [(r.method, r.path, r.status) for r in sb.requests]
    assert sb.failed_logins(sb.user) == 0


def test_a_session_that_keeps_expiring_is_not_a_login_loop(tmp_path, small, ds, fast_retries):
    sb = small
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    s1, _ = sb.study.sessions(subs[0].id)
    sb.add_fault(Fault("expire", path=session_re(s1, "/scans"), times=None))
    head = git(ds, "rev-parse", "HEAD")
    res = download(ds, sb, csv, jobs=2)
    assert "error" in by_status(res)
    assert any("fresh session" in r["message"] for r in res if r["status"] == "error")
    assert len(logins(sb)) == 2  # the login and exactly one re-login
    assert sb.failed_logins(sb.user) == 0
    assert len([r for r in sb.requests if r.path.endswith(f"{s1.id}/scans")]) == 2
    assert git(ds, "rev-parse", "HEAD") == head or head_files(ds) == set()
    assert_consistent(ds)


# -- the server goes away -----------------------------------------------------------------


def _wait_for(predicate, timeout=60.0, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_server_unreachable_mid_run(tmp_path, secret_service, state_dir, fast_retries):
    """The server disappears while a run lists sessions, and later while one
    transfers files: each run stops with a clear error, the dataset holds
    only what was completed and saved, and a run with the server back
    completes it."""
    spec = StudySpec(seed=4, subjects=2, sessions_per_subject=(2, 2), scans_per_session=3,
                     files_per_scan=6, file_size=4096)
    with sandbox(spec, bandwidth=200_000) as sb:
        ds = new_dataset(tmp_path)
        csv, subs = pseudonymous_list(tmp_path, sb, n=2)
        sessions = [e for s in subs for e in sb.study.sessions(s.id)]

        def listing():
            return any(r.path.endswith(f"{sessions[1].id}/scans/ALL/files")
                       for r in sb.requests)

        objects = Path(ds.path, ".git", "annex", "objects")

        def transfer():
            # some content has arrived (a response that has only begun is
            # not enough: the pause would break it before any file is done)
            try:
                return any(p.is_file() for p in objects.rglob("*"))
            except OSError:  # a folder made or moved while walking
                return False

        for gone in (listing, transfer):
            sb.clear_requests()
            proc = subprocess.Popen(
                [DATALAD, "-f", "json", "fmrif-download", "-d", ds.path, "--server", sb.url,
                 "-J", "2", str(csv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            try:
                assert _wait_for(gone, timeout=60)
                sb.pause()
                out, err = proc.communicate(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                sb.resume()
            assert proc.returncode != 0, out + err
            assert "cannot reach XNAT" in out + err, out + err
            assert_consistent(ds)
            if gone is listing:
                assert head_files(ds) == set()  # nothing half-planned into the dataset
            else:
                assert 0 < len(head_files(ds)) < len(wanted(sb, subs))

        res = download(ds, sb, csv, jobs=2)
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        assert_complete(ds, sb, subs)


def test_unreachable_is_final_a_reset_is_transient(small, fast_retries):
    """A server that refuses connections ends a process's work at once; a
    connection reset is one request's bad luck, retried, then reported."""
    from datalad_fmrif.credentials import Credential, Rejections
    from datalad_fmrif.xnat.errors import ServerUnreachable, TransientError
    from datalad_fmrif.xnat.session import XnatSession

    sb = small
    cred = Credential("sandbox", sb.user, sb.password, "environment")
    path = f"/data/projects/{PROJECT}/subjects"
    with XnatSession(sb.url, cred, rejections=Rejections()) as xnat:
        sb.add_fault(Fault("reset", path=re.escape(path), times=None))
        with pytest.raises(TransientError) as reset:
            xnat.request("GET", path)
        assert not isinstance(reset.value, ServerUnreachable)
        assert len([r for r in sb.requests if r.path == path]) == 5
        sb.pause()
        try:
            with pytest.raises(ServerUnreachable, match="cannot reach XNAT"):
                xnat.request("GET", path)
        finally:
            sb.resume()
        sb.clear_faults()
        assert xnat.request("GET", path).status_code == 200


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies do not count: in
    some containers nobody reaps orphans)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# -- kills -----------------------------------------------------------------------------------


def test_killed_again_and_again_then_completed(tmp_path, secret_service, state_dir):
    """SIGINT and SIGKILL at random moments (seeded), to the whole process
    group (Ctrl-C, a killed job) or SIGINT to datalad alone: four times in a
    row; the next run completes the dataset, with verified content and no
    stray files."""
    rng = random.Random(20261125)
    spec = StudySpec(seed=5, subjects=2, sessions_per_subject=(1, 2), scans_per_session=4,
                     files_per_scan=6, file_size=4096)
    signals = [signal.SIGINT, signal.SIGKILL, signal.SIGINT, signal.SIGKILL]
    rng.shuffle(signals)
    # slow streams (a zip of a scan takes over a second), so that every run
    # has zips streaming and verified files going into the annex to interrupt
    with sandbox(spec, latency=0.002, bandwidth=15_000) as sb:
        ds = new_dataset(tmp_path)
        csv, subs = pseudonymous_list(tmp_path, sb, n=2)
        argv = [DATALAD, "fmrif-download", "-d", ds.path, "--server", sb.url, "-J", "2",
                str(csv)]
        interrupted = []
        for sig in signals:
            # SIGKILL to datalad alone is left out: its git-annex child then
            # hangs for good, holding its transfer locks (see docs/guarantees.md)
            whom = rng.choice(["group", "datalad"]) if sig == signal.SIGINT else "group"
            delay = rng.uniform(0.5, 5.0)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                if whom == "group":
                    os.killpg(proc.pid, sig)
                else:
                    os.kill(proc.pid, sig)
                interrupted.append((sig.name, whom, round(delay, 1)))
            proc.wait(timeout=60)
            # git-annex children of a killed datalad finish on their own (a
            # run started meanwhile would find their transfers in progress)
            assert _wait_for(lambda pid=proc.pid: not _group_alive(pid), timeout=60), interrupted
            # whatever was committed so far has its content
            assert annex_lines(ds, "find", "--not", "--in", "here", "--branch", "HEAD") == []
        assert len(interrupted) >= 3, interrupted

        res = download(ds, sb, csv, jobs=2)
        assert not [r for r in res if r["status"] in ("error", "impossible")], (interrupted, res)
        assert_complete(ds, sb, subs)
        for tmp in (ds.pathobj / ".git" / "annex" / "tmp", ds.pathobj / ".git" / "fmrif" / "tmp"):
            assert not tmp.exists() or not [p for p in tmp.rglob("*") if p.is_file()], tmp
        assert not (ds.pathobj / ".git" / "index.lock").exists()


# -- a full disk ----------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str):
    """Mount a small tmpfs (needs root or CAP_SYS_ADMIN; else the test is skipped)."""
    if not shutil.which("mount"):
        pytest.skip("no mount command: cannot make a small file system")
    where.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if made.returncode != 0:
        reason = (f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): "
                  f"{made.stderr.strip()}")
        print(reason)
        pytest.skip(reason)


@pytest.mark.parametrize("full", ["dataset", "transfer-tmp"])
def test_disk_full(tmp_path, secret_service, state_dir, full):
    """No space left: on the dataset's file system (git-annex refuses what
    does not fit), or where the transfers write (zips in .git/fmrif/tmp, single
    files in .git/annex/tmp: they break off with ENOSPC).
    A clear error per file, only whole files committed, the repository
    intact; with space again, a re-run completes the dataset."""
    spec = StudySpec(seed=6, subjects=1, sessions_per_subject=(2, 2), scans_per_session=3,
                     files_per_scan=6, file_size=98304)  # 24 files, 2.4 MB
    mounts = []
    try:
        with sandbox(spec) as sb:
            if full == "dataset":
                _mount_tmpfs(tmp_path / "disk", "2m")
                mounts.append(tmp_path / "disk")
                ds = dl.create(tmp_path / "disk" / "study", result_renderer="disabled")
            else:
                ds = new_dataset(tmp_path)
                # smaller than one file: every transfer hits the wall
                for where in (ds.pathobj / ".git" / "annex" / "tmp",
                              ds.pathobj / ".git" / "fmrif" / "tmp"):
                    _mount_tmpfs(where, "48k")
                    mounts.append(where)
            # git-annex keeps 100 MB free by default and would refuse every
            # file at once; let it get as close to the wall as it can
            git(ds, "config", "annex.diskreserve", "0")
            csv, subs = pseudonymous_list(tmp_path, sb, n=1)
            res = download(ds, sb, csv, jobs=2)
            problems = [r for r in res if r["status"] in ("error", "impossible")]
            assert problems, res
            messages = " ".join(r["message"] for r in problems)
            # git-annex's own check, or the write that hit the wall (a transfer,
            # or git writing its index when the transfers left no byte free)
            assert any(text in messages for text in (
                "not enough free space", "No space left", "Out of diskspace")), messages
            # nothing half-committed: what HEAD has is whole, the repository
            # sound (read-only checks: git-annex itself needs a byte to run)
            committed = head_files(ds)
            assert len(committed) < len(wanted(sb, subs))
            assert all((ds.pathobj / p).exists() for p in committed)  # content is there
            subprocess.run(["git", "fsck", "--no-progress"], cwd=ds.path, check=True,
                           capture_output=True)
            assert not list((ds.pathobj / ".git").glob("fast_import_crash_*"))
            if full == "transfer-tmp":  # the dataset's own disk had room: all tidy
                assert git(ds, "status", "--porcelain") == ""
                assert len(head_files(ds)) == len(wanted(sb, subs)) - len(failures(res))

            for where in mounts:
                subprocess.run(["mount", "-o", "remount,size=64m", str(where)], check=True)
            res = download(ds, sb, csv, jobs=2)
            assert not [r for r in res if r["status"] in ("error", "impossible")], res
            assert_complete(ds, sb, subs)
    finally:
        for where in mounts:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


# -- load ---------------------------------------------------------------------------------------


LOAD = {
    # 2 subjects x 2 sessions x 5 downloadable scans x 25 files: 250 files
    "small": StudySpec(seed=7, subjects=2, sessions_per_subject=(2, 2), scans_per_session=6,
                       files_per_scan=25, file_size=4096),
    # 6 subjects x 2 sessions x 8 downloadable scans x 30 files: 2,880 files
    "big": StudySpec(seed=8, subjects=6, sessions_per_subject=(2, 2), scans_per_session=9,
                     files_per_scan=30, file_size=4096),
}


@pytest.mark.parametrize("size", ["small", pytest.param("big", marks=pytest.mark.slow)])
def test_long_run_with_sprinkled_faults(tmp_path, secret_service, state_dir, size,
                                        request):
    """Hundreds (thousands, with --run-slow) of files while a few percent of
    all requests fail in every way a network fails: everything arrives,
    verified, in one run."""
    if size == "small":
        request.getfixturevalue("fast_retries")
    with sandbox(LOAD[size], latency=0.001) as sb:
        ds = new_dataset(tmp_path)
        csv, subs = pseudonymous_list(tmp_path, sb, n=len(sb.study.subjects(PROJECT)))
        faults = [
            # zips: a failed request is retried, a stream that breaks off
            # leaves its files to the per-file path, which has faults too
            Fault("status", path=ZIP_PATH, status=503, rate=0.1, seed=11, times=None),
            Fault("reset", path=ZIP_PATH, after_bytes=3000, rate=0.15, seed=12, times=None),
            Fault("truncate", path=ZIP_PATH, after_bytes=9000, rate=0.15, seed=13, times=None),
            Fault("status", path="/files/", status=503, rate=0.02, seed=1, times=None),
            Fault("reset", path="/files/", rate=0.01, seed=2, times=None),
            Fault("reset", path="/files/", after_bytes=1000, rate=0.01, seed=3, times=None),
            Fault("truncate", path="/files/", after_bytes=2000, rate=0.01, seed=4, times=None),
            Fault("status", path=r"/scans(/ALL/files)?$", status=502, rate=0.1, seed=5,
                  times=None),
            Fault("reset", path=r"/experiments$", rate=0.1, seed=6, times=None),
        ]
        for fault in faults:
            sb.add_fault(fault)
        res = download(ds, sb, csv, jobs=2 if size == "small" else 4)
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        assert sum(f.hits for f in faults[:3]) >= 1
        assert sum(f.hits for f in faults[:7]) >= (5 if size == "small" else 40)
        assert file_gets(sb)  # what broken zips lacked came one by one
        assert_complete(ds, sb, subs)


# -- an interrupt at every step of the run ----------------------------------------------------

#: the steps fmrif-download announces at debug level ("fmrif-download phase: NAME")
PHASES = ("repair", "plan", "remote", "register", "fetch", "discard", "record",
          "commit-files", "commit-record", "done")
#: how a run is stopped: the signal, and whom it reaches (Ctrl-C in a terminal
#: reaches the whole process group; a plain kill or a scheduler, datalad alone)
STOPS = (("SIGINT", "group"), ("SIGTERM", "datalad"), ("SIGKILL", "group"),
         ("SIGHUP", "datalad"))


def start_download(ds, sb, csv, *args):
    """fmrif-download at debug level, in a process group of its own, with
    SIGINT as a terminal leaves it; returns the process and a list that a
    thread fills with its stderr lines as they come."""
    proc = subprocess.Popen(
        [DATALAD, "-l", "debug", "fmrif-download", "-d", ds.path, "--server", sb.url,
         "-J", "2", *args, str(csv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=default_sigint)
    lines: list[str] = []

    def drain():
        for line in proc.stderr:
            lines.append(line)

    import threading
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc.reader = reader
    return proc, lines


def stop(proc, signame: str, whom: str) -> None:
    sig = getattr(signal, signame)
    with contextlib.suppress(ProcessLookupError):
        if whom == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


def ended(proc, ds) -> str:
    """The standard output of a run that was stopped (or ran to its end),
    once it and everything it started have ended: nothing of it may be left
    running (git-annex children, special remotes), also when only datalad
    got the signal, and its lock must be free."""
    try:
        out = proc.stdout.read()
        proc.wait(timeout=120)
        proc.reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _wait_for(lambda: not _group_alive(proc.pid), timeout=60), \
        _group_commands(proc.pid)
    assert lock_is_free(ds)
    return out


def lock_is_free(ds) -> bool:
    import fcntl

    path = ds.pathobj / ".git" / "fmrif" / "download.lock"
    if not path.exists():
        return True
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


def assert_as_if_never_interrupted(ds, sb, subs, *, content: bool):
    """What an uninterrupted run leaves: every wanted file committed and
    registered on the fmrif remote only (never on git-annex's web remote),
    one fmrif remote, one run record, both fscks clean, and nothing left
    over (refs, crash reports, pending records, stray files, locks)."""
    if content:
        assert_complete(ds, sb, subs)
    else:
        want = {(f.session_id, f.scan_id, f.name) for f in wanted(sb, subs)}
        got = {(m["session"]["id"], f["scan_id"], f["name"]): f["path"]
               for m in manifests(ds).values() for f in m["files"]}
        assert set(got) == want
        assert head_files(ds) == set(got.values())
        assert_consistent(ds, content=False)
    kinds = git(ds, "config", "--get-regexp", r"^remote\..*\.annex-externaltype$")
    assert kinds.split() == ["remote.fmrif.annex-externaltype", "fmrif"], kinds
    assert annex_lines(ds, "find", "--in", "web", "--branch", "HEAD") == []
    assert annex_lines(ds, "find", "--not", "--in", "fmrif", "--branch", "HEAD") == []
    assert_fsck(ds, "--from", "fmrif", "--fast", "--quiet")
    records = git(ds, "log", "--format=%H", "--grep", r"^\[DATALAD RUNCMD\]").split()
    assert len(records) == 1, git(ds, "log", "--format=%s")
    assert git(ds, "for-each-ref", "refs/fmrif/") == ""
    gitdir = ds.pathobj / ".git"
    assert not list(gitdir.glob("fast_import_crash_*"))
    assert not (gitdir / "fmrif" / "pending-run-record.json").exists()
    assert not (gitdir / "index.lock").exists()
    assert lock_is_free(ds)


def interrupted_then_rerun(tmp_path, sb, csv, subs, name, *, content, when, signame, whom):
    """One run stopped at a phase (``when`` a name) or after some seconds
    (a number), then the same command again; the dataset must end as if
    nothing had happened. Returns whether the stop met the run."""
    ds = new_dataset(tmp_path, name)
    args = () if content else ("--no-content",)
    proc, lines = start_download(ds, sb, csv, *args)
    met = False
    try:
        if isinstance(when, str):
            marker = f"fmrif-download phase: {when}"
            met = _wait_for(lambda: any(marker in line for line in lines)
                            or proc.poll() is not None, timeout=120) \
                and proc.poll() is None
        else:
            try:
                proc.wait(timeout=when)
            except subprocess.TimeoutExpired:
                met = True
        if met:
            stop(proc, signame, whom)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    out = ended(proc, ds)
    said = out + "".join(lines)
    # stopped while the download worked (not while Python started, nor after it)
    working = "fmrif-download phase:" in said and "phase: done" not in said
    if met and signame != "SIGKILL" and proc.returncode != 0 and working:
        assert "running the same command again completes" in said, said[-3000:]
        assert "Unable to create" not in said
    # the same command again
    res = download(ds, sb, csv, jobs=2, no_content=not content)
    assert not [r for r in res if r["status"] in ("error", "impossible")], (when, res)
    assert_as_if_never_interrupted(ds, sb, subs, content=content)
    return met


def _phase_cases(everything: bool):
    """(mode, phase, signal, whom): by default every phase in both modes, the
    stops taking turns; with ``everything``, every stop at every phase."""
    cases = []
    for content in (True, False):
        for phase in PHASES:
            if phase == "fetch" and not content:
                continue  # --no-content has no fetch step
            stops = STOPS if everything else [STOPS[len(cases) % len(STOPS)]]
            for signame, whom in stops:
                mode = "content" if content else "no-content"
                cases.append(pytest.param(content, phase, signame, whom,
                                          id=f"{mode}-{phase}-{signame}"))
    return cases


@pytest.mark.parametrize("content,phase,signame,whom", _phase_cases(False))
def test_interrupt_at_a_phase_then_rerun(tmp_path, small, content, phase, signame, whom):
    """An interrupt right at a step boundary of the run (Ctrl-C to the group,
    SIGTERM or SIGHUP to datalad alone, SIGKILL to the group), then the same
    command: the dataset ends exactly as after an uninterrupted run."""
    csv, subs = pseudonymous_list(tmp_path, small, n=1)
    met = interrupted_then_rerun(tmp_path, small, csv, subs, "study", content=content,
                                 when=phase, signame=signame, whom=whom)
    # the run was still there to be stopped (after its last commit it may
    # end before the signal comes, on a busy machine)
    assert met or phase in ("commit-record", "done")


@pytest.mark.slow
@pytest.mark.parametrize("content,phase,signame,whom", _phase_cases(True))
def test_interrupt_at_every_phase_with_every_signal(tmp_path, small, content, phase,
                                                    signame, whom):
    csv, subs = pseudonymous_list(tmp_path, small, n=1)
    interrupted_then_rerun(tmp_path, small, csv, subs, "study", content=content,
                           when=phase, signame=signame, whom=whom)


@pytest.mark.slow
@pytest.mark.parametrize("content", [True, False])
def test_interrupt_at_a_sweep_of_times(tmp_path, secret_service, state_dir, content):
    """Interrupts at 0.1 s steps over the whole run (and its set-up of the
    remote), each in a fresh dataset, signals and whom they reach in turn."""
    with sandbox(latency=0.002, bandwidth=200_000) as sb:
        csv, subs = pseudonymous_list(tmp_path, sb, n=1)
        met = 0
        for i in range(40):
            signame, whom = STOPS[i % len(STOPS)]
            met += interrupted_then_rerun(
                tmp_path, sb, csv, subs, f"study{i}", content=content,
                when=0.3 + 0.1 * i, signame=signame, whom=whom)
        assert met >= 10


def test_two_runs_at_once_do_the_work_once(tmp_path, secret_service, state_dir):
    """A second run in the same dataset waits for the first, naming it, and
    then finds nothing left to do: one transfer of each file, one record,
    and never git's advice to remove index.lock by hand."""
    # slow streams: the first run is still at work when the second starts
    with sandbox(latency=0.002, bandwidth=15_000) as sb:
        # and one zip that keeps it busy longer than a datalad takes to start
        sb.add_fault(Fault("slow", path=ZIP_PATH, delay=6.0, times=1))
        csv, subs = pseudonymous_list(tmp_path, sb, n=1)
        ds = new_dataset(tmp_path)
        first, first_lines = start_download(ds, sb, csv)
        assert _wait_for(lambda: any("phase: fetch" in line for line in first_lines))
        second, second_lines = start_download(ds, sb, csv)
        for proc in (first, second):
            proc.stdout.read()
            assert proc.wait(timeout=300) == 0, "".join(first_lines + second_lines)[-3000:]
            proc.reader.join(timeout=10)
        said = "".join(second_lines)
        assert f"another fmrif-download (process {first.pid}) is working" in said
        assert "Unable to create" not in said + "".join(first_lines)
        assert_as_if_never_interrupted(ds, sb, subs, content=True)
        # each file came once (in a zip, or on its own)
        names = [r.path for r in content_gets_of(sb)]
        assert len(names) == len(set(names))


def content_gets_of(sb):
    from helpers import content_gets

    return [r for r in content_gets(sb) if r.status in (200, 206)]


def test_the_remote_is_quiet_when_git_annex_has_gone(capfd):
    """A special-remote process logs a failed logout at exit, when git-annex
    no longer reads its protocol: no "--- Logging error ---" traceback."""
    import logging

    from annexremote import Master

    from datalad_fmrif.remote import _AnnexLog

    read, write = os.pipe()
    os.close(read)  # git-annex has gone
    master = Master(os.fdopen(write, "w"))
    log = logging.getLogger("datalad.fmrif.test-remote-exit")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = _AnnexLog(master)
    log.addHandler(handler)
    try:
        log.debug("logout from %s failed: %s", "https://xnat.invalid", "ConnectionError")
    finally:
        log.removeHandler(handler)
    assert "Logging error" not in capfd.readouterr().err


def _group_commands(pgid: int) -> list[str]:
    """Command lines of the live processes of a process group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_to_datalad_alone_stops_the_special_remotes(tmp_path, secret_service,
                                                            state_dir, signame):
    """A plain kill (or a closed terminal) reaches datalad only, while
    git-annex fetches files through special-remote processes: all of them
    end, no lock is held, and the same command completes the dataset."""
    with sandbox(latency=0.002, bandwidth=20_000) as sb:
        break_zips(sb)  # every file through the special remote
        csv, subs = pseudonymous_list(tmp_path, sb, n=1)
        ds = new_dataset(tmp_path)
        proc, lines = start_download(ds, sb, csv)
        try:
            # fetching (the remote also runs while it is set up, earlier)
            assert _wait_for(lambda: any("phase: fetch" in line for line in lines)
                             and any("git-annex-remote-fmrif" in c
                                     for c in _group_commands(proc.pid))
                             or proc.poll() is not None, timeout=120)
            assert proc.poll() is None, "".join(lines)[-3000:]
            stop(proc, signame, "datalad")
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        out = ended(proc, ds)
        assert "running the same command again completes" in out + "".join(lines)
        sb.clear_faults()
        res = download(ds, sb, csv, jobs=2)
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        assert_as_if_never_interrupted(ds, sb, subs, content=True)
