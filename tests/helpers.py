"""Helpers of the end-to-end tests: subject lists, results, git, the sandbox."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import datalad.api as dl

PROJECT = "17-M-0181"


def subjects_csv(tmp_path, rows, header=("Project", "Subject", "Pseudonym"),
                 name="processing_data.csv") -> Path:
    """A Processing Dashboard export: quoted, CRLF, no final newline."""
    lines = [",".join(f'"{c}"' for c in header)]
    lines += [",".join(f'"{c}"' for c in row) for row in rows]
    path = tmp_path / name
    path.write_bytes("\r\n".join(lines).encode())
    return path


def main_subjects(sb, n=2):
    return [s for s in sb.study.subjects(PROJECT)][:n]


def pseudonymous_list(tmp_path, sb, n=2):
    subs = main_subjects(sb, n)
    rows = [(PROJECT, s.label, f"P{i:02d}") for i, s in enumerate(subs, 1)]
    return subjects_csv(tmp_path, rows), subs


def download(ds, sb, subjects, **kw):
    return dl.fmrif_download(
        str(subjects), dataset=ds.path, server=sb.url,
        result_renderer="disabled", on_failure="ignore", return_type="list", **kw)


def by_status(results, type=None):
    out = {}
    for r in results:
        if type and r.get("type") != type:
            continue
        out.setdefault(r["status"], []).append(r)
    return out


def git(ds, *args) -> str:
    return subprocess.run(["git", *args], cwd=ds.path, check=True,
                          capture_output=True, text=True).stdout


def assert_fsck(ds, *options) -> None:
    """``git annex fsck`` finds nothing wrong in the dataset."""
    fsck = subprocess.run(["git", "annex", "fsck", *options], cwd=ds.path,
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout[-3000:] + fsck.stderr[-3000:]


def annexed_files(ds) -> list[str]:
    out = git(ds, "annex", "find", "--include", "*", "--json")
    return sorted(json.loads(line)["file"] for line in out.splitlines() if line)


def expected_files(sb, subjects, excluded=("REQUISITION", "SCREEN-SAVE", "SAVE")):
    """(session ID, scan ID, name) of every DICOM the download should take."""
    want = set()
    for s in subjects:
        for e in sb.study.sessions(s.id):
            types = {sc.id: sc.type for sc in sb.study.scans(e.id)}
            for f in sb.study.files(e.id):
                if f.scan_id is not None and types[f.scan_id] not in excluded:
                    want.add((e.id, f.scan_id, f.name))
    return want


def file_gets(sb):
    """Requests for the content of one file."""
    return [r for r in sb.requests if r.method == "GET" and "/files/" in r.path]


def zip_gets(sb):
    """Requests for the zip of a whole resource."""
    return [r for r in sb.requests if r.method == "GET" and r.path.endswith("/files")
            and r.query.get("format") == "zip"]


def content_gets(sb):
    """Every request for file content, one by one or zipped."""
    return file_gets(sb) + zip_gets(sb)


#: the path of every resource's zip (and of nothing else)
ZIP_PATH = r"/resources/[^/]+/files$"


def break_zips(sb):
    """Make every zip stream break off after its first bytes, so that
    fmrif-download fetches every file one by one through the special remote:
    for tests of that path (its retries, resumes, checks, logins)."""
    from datalad_fmrif.sandbox import Fault

    return sb.add_fault(Fault("reset", path=ZIP_PATH, after_bytes=64, times=None))


def manifests(ds) -> dict:
    folder = ds.pathobj / ".datalad" / "fmrif" / "sessions"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}




@contextlib.contextmanager
def keyring_sandbox(spec=None, **kwargs):
    """A sandbox XNAT whose user's credential is in the keyring, as after
    fmrif-login; the credential is removed and faults cleared afterwards."""
    from datalad_fmrif.credentials import CredentialStore, default_credential_name
    from datalad_fmrif.sandbox import Sandbox

    with Sandbox(spec, **kwargs) as sb:
        name = default_credential_name(sb.url)
        store = CredentialStore()
        store.set(name, sb.user, sb.password, realm=sb.url)
        try:
            yield sb
        finally:
            sb.clear_faults()
            store.remove(name)


def default_sigint():
    """A child's SIGINT as a terminal leaves it (``preexec_fn``): a
    background job of a non-interactive shell (``make test &``, some CI
    runners) starts with SIGINT ignored, and a test of Ctrl-C would then
    send a signal nobody receives."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
