"""bulk: one zip stream per resource, verified entry by entry, into the annex.

Against the sandbox XNAT (its zips are shaped as XNAT 1.8's Java
ZipOutputStream writes them: stored entries with size and CRC in the local
header, no data descriptor; and, as an option, as Python's zipfile writes to
an unseekable stream: data descriptors and no sizes in the headers) and
against hand-made zips of the other shapes a server may send (deflated
entries, zip64 descriptors, hostile names).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import zipfile

import datalad.api as dl
import pytest

from datalad_fmrif.content import bulk
from datalad_fmrif.annex import Annex
from datalad_fmrif.content.bulk import BulkFile, fetch, fetch_resource_zip, tmp_root
from datalad_fmrif.credentials import Credential, Rejections
from datalad_fmrif.plan import PlanOptions, plan_session
from datalad_fmrif.sandbox import Fault, Sandbox, StudySpec
from datalad_fmrif.xnat.catalog import session_catalog, subject_sessions
from datalad_fmrif.xnat.errors import CredentialRejected
from datalad_fmrif.xnat.records import Subject
from datalad_fmrif.xnat.session import XnatSession

SPEC = StudySpec(seed=3, subjects=1, sessions_per_subject=(1, 1), scans_per_session=3,
                 files_per_scan=5, file_size=4096)
MAIN = "17-M-0181"


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SPEC) as sandbox:
        yield sandbox


@pytest.fixture
def xnat(sb, tmp_path):
    cred = Credential("sandbox", sb.user, sb.password, "environment")
    with XnatSession(sb.url, cred, retries=1, backoff=0.01,
                     rejections=Rejections(tmp_path / "rejected")) as session:
        yield session
    sb.clear_faults()


@pytest.fixture
def out(tmp_path):
    """Where verified entries go (tmp_path also holds the rejection memory)."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def session_of(sb):
    subject = sb.study.subjects(MAIN)[0]
    return sb.study.sessions(subject.id)[0]


def bulk_files(sb, scan_id="1", prefix="sub-01/ses-01"):
    e = session_of(sb)
    out = []
    for f in sb.study.scan_files(e.id, scan_id):
        out.append(BulkFile(
            path=f"{prefix}/{scan_id}/{f.name}", key=f"MD5E-s{f.size}--{f.md5}.dcm",
            size=f.size, md5=f.md5,
            folder=f"/data/experiments/{e.id}/scans/{scan_id}/resources/{f.resource_id}",
            name=f.name))
    return out


def zip_requests(sb):
    return [r for r in sb.requests if r.query.get("format") == "zip"]


# -- one resource -------------------------------------------------------------------

def test_resource_zip_written_verified_named_by_key(sb, xnat, out):
    files = bulk_files(sb)
    sb.clear_requests()
    written, failed = fetch_resource_zip(xnat, files[0].folder, files, out)
    assert failed == {}
    assert sorted(written) == sorted(f.key for f in files)
    for f in files:
        data = written[f.key].read_bytes()
        assert written[f.key].name == f.key
        assert hashlib.md5(data).hexdigest() == f.md5 and len(data) == f.size
    assert len(zip_requests(sb)) == 1
    assert not [r for r in sb.requests if "/files/" in r.path]  # no per-file request
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # nothing else


def test_entries_not_wanted_are_read_past(sb, xnat, out):
    files = bulk_files(sb)
    wanted = files[1::2]
    written, failed = fetch_resource_zip(xnat, files[0].folder, wanted, out)
    assert failed == {} and sorted(written) == sorted(f.key for f in wanted)
    assert len(list(out.iterdir())) == len(wanted)


def test_wrong_digest_fails_that_file_only(sb, xnat, out):
    files = bulk_files(sb)
    bad = files[2]
    other = "0" * 32
    files[2] = BulkFile(bad.path, f"MD5E-s{bad.size}--{other}.dcm", bad.size, other,
                        bad.folder, bad.name)
    written, failed = fetch_resource_zip(xnat, files[0].folder, files, out)
    assert list(failed) == [bad.path] and "MD5" in failed[bad.path]
    assert len(written) == len(files) - 1
    assert not any(p.name.endswith(".part") for p in out.iterdir())


def test_missing_file_fails_with_reason(sb, xnat, out):
    files = bulk_files(sb)
    ghost = BulkFile("sub-01/ghost.dcm", "MD5E-s4--" + "1" * 32 + ".dcm", 4, "1" * 32,
                     files[0].folder, "ghost.dcm")
    written, failed = fetch_resource_zip(xnat, files[0].folder, files + [ghost], out)
    assert list(failed) == [ghost.path] and "not in the zip" in failed[ghost.path]
    assert len(written) == len(files)


def test_broken_stream_keeps_what_arrived_intact(sb, xnat, out):
    files = bulk_files(sb)
    sb.add_fault(Fault("reset", path=r"/files$", after_bytes=3 * 4096 + 500))
    written, failed = fetch_resource_zip(xnat, files[0].folder, files, out)
    assert 1 <= len(written) < len(files)
    assert set(failed) == {f.path for f in files if f.key not in written}
    assert all("broke off" in why or "ended" in why for why in failed.values())
    for f in files:
        if f.key in written:
            assert hashlib.md5(written[f.key].read_bytes()).hexdigest() == f.md5
    assert not any(p.name.endswith(".part") for p in out.iterdir())


@pytest.mark.parametrize("after", [0, 40])
def test_stream_broken_at_its_start(sb, xnat, out, after):
    # before the first byte, or inside the first entry's header
    files = bulk_files(sb)
    sb.add_fault(Fault("reset", path=r"/files$", after_bytes=after))
    written, failed = fetch_resource_zip(xnat, files[0].folder, files, out)
    assert written == {}
    assert set(failed) == {f.path for f in files}
    assert all("broke off" in why or "ended" in why for why in failed.values())


def test_error_page_instead_of_zip(sb, xnat, out):
    files = bulk_files(sb)
    sb.add_fault(Fault("html200", path=r"/files$", times=None))
    logins = xnat.login_attempts
    written, failed = fetch_resource_zip(xnat, files[0].folder, files, out)
    assert written == {} and set(failed) == {f.path for f in files}
    assert "HTML" in next(iter(failed.values()))
    assert list(out.iterdir()) == []
    assert xnat.login_attempts == logins + 1 and xnat.pages_are_errors


def test_login_page_instead_of_zip_logs_in_again_once(sb, xnat, out):
    """An expired session answered with a login page and 200 (as a proxy or
    SSO front end does): one fresh login, the zip again, every file."""
    files = bulk_files(sb)
    sb.add_fault(Fault("html200", path=r"/files$"))
    logins = xnat.login_attempts
    written, failed = fetch_resource_zip(xnat, files[0].folder, files, out)
    assert failed == {} and sorted(written) == sorted(f.key for f in files)
    assert xnat.login_attempts == logins + 1


def test_pages_after_a_fresh_login_stop_the_bulk_fetch(tmp_path):
    """Never a silent fall-back to one request per file: when XNAT answers
    pages even to a fresh session, the bulk fetch stops and says so."""
    with Sandbox(SPEC) as box:
        box.add_fault(Fault("html200", path=r"/files$", times=None))
        cred = Credential("sandbox", box.user, box.password, "environment")
        ds = dl.create(tmp_path / "ds", result_renderer="disabled")
        with XnatSession(box.url, cred, retries=0,
                         rejections=Rejections(tmp_path / "rejected")) as xnat:
            files = [f for s in ("1", "2", "3") for f in bulk_files(box, s)]
            result = fetch(xnat, Annex(ds.path), files, jobs=1)
        assert result.done == [] and set(result.failed) == {f.path for f in files}
        assert result.stopped and "fresh login" in result.stopped
        assert len(zip_requests(box)) == 2  # the first zip and its one retry
        assert xnat.login_attempts == 2


@pytest.mark.parametrize("shape", ["java", "descriptor"])
def test_both_zip_shapes_of_the_sandbox(tmp_path, shape):
    """XNAT's own shape (ZipUtils of xnat-web 1.8.10.1) and the data-descriptor
    shape, each verified entry by entry; a file the zip lacks (missing on the
    archive's disk: XNAT skips it without a word) is reported, not lost."""
    with Sandbox(SPEC, zip_shape=shape) as box:
        files = bulk_files(box)
        e = session_of(box)
        box.study.remove_from_disk(e.id, "1", files[1].name)
        cred = Credential("sandbox", box.user, box.password, "environment")
        with XnatSession(box.url, cred, rejections=Rejections(tmp_path / "r")) as xnat:
            written, failed = fetch_resource_zip(xnat, files[0].folder, files, tmp_path / "o")
        assert set(failed) == {files[1].path}
        assert "not in the zip" in failed[files[1].path]
        assert sorted(written) == sorted(f.key for f in files if f is not files[1])


# -- zips of other shapes -----------------------------------------------------------

class _Raw:
    def __init__(self, data: bytes, piece: int = 1000):
        self.stream, self.piece = io.BytesIO(data), piece

    def read1(self, n, decode_content=True):
        return self.stream.read(min(n, self.piece))


class _Response:
    def __init__(self, data: bytes):
        self.raw, self.headers, self.status_code = _Raw(data), {
            "Content-Type": "application/zip"}, 200

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _FakeXnat:
    """Serves one prepared zip body for any request."""

    def __init__(self, data: bytes | Exception):
        self.data, self.requests = data, []

    def request(self, method, path, **kw):
        self.requests.append((method, path, kw.get("params")))
        if isinstance(self.data, Exception):
            raise self.data
        return _Response(self.data)


FOLDER = "/data/experiments/E1/scans/1/resources/11"


def make_zip(entries, *, compression=zipfile.ZIP_STORED, seekable=True,
             force_zip64=False) -> bytes:
    """entries: (zip entry name, bytes)."""

    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.buf = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.buf += b
            return len(b)

    out = io.BytesIO() if seekable else Unseekable()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 15, 12, 0, 0))
            info.compress_type = compression
            with zf.open(info, "w", force_zip64=force_zip64) as fh:
                fh.write(data)
    return bytes(out.getvalue() if seekable else out.buf)


def planned(name: str, data: bytes, path: str | None = None) -> BulkFile:
    md5 = hashlib.md5(data).hexdigest()
    return BulkFile(path or f"ds/{name}", f"MD5E-s{len(data)}--{md5}.dcm", len(data), md5,
                    FOLDER, name)


def entry(name: str) -> str:
    return f"E123/scans/1-T1w/resources/DICOM/files/{name}"


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize("zip64", [False, True])
def test_zip_shapes(tmp_path, compression, seekable, zip64):
    blobs = {f"f{i}.dcm": os.urandom(3000 + i) * (1 + i % 2) for i in range(4)}
    blobs["z.dcm"] = b"\0" * 50_000  # compresses well
    extra = os.urandom(2000)  # an entry nobody asked for, between wanted ones
    entries = [(entry("f0.dcm"), blobs["f0.dcm"]), (entry("other.dcm"), extra)]
    entries += [(entry(n), d) for n, d in blobs.items() if n != "f0.dcm"]
    data = make_zip(entries, compression=compression, seekable=seekable, force_zip64=zip64)
    files = [planned(n, d) for n, d in blobs.items()]
    written, failed = fetch_resource_zip(_FakeXnat(data), FOLDER, files, tmp_path)
    assert failed == {}
    for f in files:
        assert written[f.key].read_bytes() == blobs[f.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.key for f in files)


def test_hostile_names_are_never_written(tmp_path):
    good = os.urandom(1000)
    evil = b"#!/bin/sh\necho pwned\n"
    entries = [("../../../evil.dcm", evil), ("/etc/evil.dcm", evil),
               ("E1/scans/1-X/resources/DICOM/files/../../../../evil.dcm", evil),
               (entry("good.dcm"), good)]
    data = make_zip(entries, seekable=False)
    files = [planned("good.dcm", good),
             # a planned name that only a traversal entry could match
             planned("../../../../evil.dcm", evil, path="ds/evil.dcm")]
    written, failed = fetch_resource_zip(_FakeXnat(data), FOLDER, files, tmp_path / "t")
    assert list(written) == [files[0].key]
    assert list(failed) == ["ds/evil.dcm"]  # left to the per-file path, which checks it
    found = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert found == {files[0].key}
    assert not (tmp_path.parent / "evil.dcm").exists()


@pytest.mark.parametrize("prefix", ["", "E123/", "E123/scans/1/resources/DICOM/",
                                    "x/files/y/"])
def test_entry_names_of_any_structure_match_by_their_tail(tmp_path, prefix):
    # XNAT's zip layout depends on its version and the `structure` asked for;
    # a file in a subfolder of the resource keeps its subfolder
    a, b = os.urandom(1000), os.urandom(1000)
    data = make_zip([(prefix + "a.dcm", a), (prefix + "sub/b.dcm", b),
                     (prefix + "c.dcm", b)], seekable=False)
    files = [planned("a.dcm", a), planned("sub/b.dcm", b)]
    written, failed = fetch_resource_zip(_FakeXnat(data), FOLDER, files, tmp_path)
    assert failed == {}
    assert written[files[0].key].read_bytes() == a
    assert written[files[1].key].read_bytes() == b


def test_truncated_and_garbage_streams(tmp_path):
    a, b = os.urandom(5000), os.urandom(5000)
    data = make_zip([(entry("a.dcm"), a), (entry("b.dcm"), b)], seekable=False)
    files = [planned("a.dcm", a), planned("b.dcm", b)]
    written, failed = fetch_resource_zip(_FakeXnat(data[:7000]), FOLDER, files, tmp_path / "1")
    assert list(written) == [files[0].key] and list(failed) == ["ds/b.dcm"]
    written, failed = fetch_resource_zip(_FakeXnat(b"PK\x03\x04 this is no zip" * 10),
                                         FOLDER, files, tmp_path / "2")
    assert written == {} and set(failed) == {"ds/a.dcm", "ds/b.dcm"}


def test_credential_rejected_is_raised(tmp_path):
    fake = _FakeXnat(CredentialRejected("rejected", attempts=1))
    with pytest.raises(CredentialRejected):
        fetch_resource_zip(fake, FOLDER, [planned("a.dcm", b"x")], tmp_path)


# -- into the annex ---------------------------------------------------------------------

@pytest.fixture
def ds(tmp_path):
    return dl.create(tmp_path / "ds", result_renderer="disabled")


def planned_session(sb, xnat):
    subject = sb.study.subjects(MAIN)[0]
    session = subject_sessions(xnat, Subject(project=MAIN, id=subject.id,
                                             label=subject.label))[0]
    catalog = session_catalog(xnat, session)
    return plan_session(catalog, subject="01", session="01", project=MAIN,
                        options=PlanOptions())


def test_fetch_into_annex(sb, xnat, ds):
    plan = planned_session(sb, xnat)
    files = list(plan.files)
    annex = Annex(ds.path)
    sb.clear_requests()
    # registered first (files, URLs, metadata), as in a download
    reg = annex.register([(pf.key, pf.path, sb.url + pf.url_path, pf.metadata(MAIN))
                          for pf in files])
    assert all(r["success"] for r in reg), reg
    seen = []
    result = fetch(xnat, annex, files, jobs=2, progress=seen.append)
    assert result.failed == {}
    assert sorted(result.done) == sorted(pf.path for pf in files)
    scans = {pf.file.scan_id for pf in files}
    assert result.zips == len(zip_requests(sb)) == len(scans)
    assert sum(seen) == result.bytes > sum(pf.size for pf in files)
    assert annex.find_present([pf.path for pf in files]) == {pf.path for pf in files}
    for pf in files[:3]:
        assert hashlib.md5((ds.pathobj / pf.path).read_bytes()).hexdigest() == pf.md5
    # nothing left behind: no temporary directory, no stray file in the work tree
    assert not any(tmp_root(ds.path).iterdir())
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=ds.path, capture_output=True, text=True).stdout
    assert all(line.startswith("A ") for line in status.splitlines()), status
    fsck = subprocess.run(["git", "annex", "fsck", "--json"], cwd=ds.path,
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout[-2000:]


def test_fetch_leaves_failures_for_per_file(sb, xnat, ds):
    plan = planned_session(sb, xnat)
    files = list(plan.files)
    no_digest = files[0]
    files[0] = type(no_digest)(**{**no_digest.__dict__, "key": None, "md5": ""})
    e = session_of(sb)
    changed = files[1]
    sb.study.set_digest(e.id, changed.file.scan_id, changed.file.name, "f" * 32)
    try:
        files[1] = type(changed)(**{**changed.__dict__, "md5": "f" * 32,
                                    "key": f"MD5E-s{changed.size}--{'f' * 32}.dcm"})
        annex = Annex(ds.path)
        result = fetch(xnat, annex, files, jobs=3)
    finally:
        sb.study.set_digest(e.id, changed.file.scan_id, changed.file.name, None)
    assert set(result.failed) == {files[0].path, files[1].path}
    assert "no MD5" in result.failed[files[0].path]
    assert "MD5" in result.failed[files[1].path]
    assert sorted(result.done) == sorted(pf.path for pf in files[2:])
    assert not any(tmp_root(ds.path).iterdir())


def test_stale_temporary_directories_are_removed(ds):
    base = tmp_root(ds.path)
    base.mkdir(parents=True, exist_ok=True)
    dead = base / "bulk-999999999-1-1"
    dead.mkdir()
    (dead / "MD5E-s1--x.dcm").write_bytes(b"x")
    mine = base / f"bulk-{os.getpid()}-1-1"
    mine.mkdir()
    bulk.remove_stale(ds.path)
    assert not dead.exists() and mine.exists()


def test_reinject_and_register_report_each_item(ds, tmp_path):
    annex = Annex(ds.path)
    good, bad = os.urandom(2000), os.urandom(2000)
    gkey = f"MD5E-s{len(good)}--{hashlib.md5(good).hexdigest()}.dcm"
    bkey = f"MD5E-s{len(bad)}--{'0' * 32}.dcm"
    src = tmp_path / "src"
    src.mkdir()
    (src / gkey).write_bytes(good)
    (src / bkey).write_bytes(bad)
    recs = annex.reinject([src / gkey, src / bkey])
    assert [r["success"] for r in recs] == [True, False]
    assert not (src / gkey).exists() and (src / bkey).exists()  # a mismatch stays put
    regs = annex.register([
        (gkey, "a/good.dcm", "https://xnat.example.org/data/x/files/good.dcm",
         {"xnat_file": "good.dcm"}),
        ("not a key", "a/bad.dcm", "https://xnat.example.org/data/x/files/bad.dcm",
         {"xnat_file": "bad.dcm"}),
    ])
    assert [r["success"] for r in regs] == [True, False]
    assert regs[1]["error-messages"]
    assert (ds.pathobj / "a" / "good.dcm").read_bytes() == good
    meta = subprocess.run(["git", "annex", "metadata", "--json", "a/good.dcm"], cwd=ds.path,
                          capture_output=True, text=True).stdout
    assert '"xnat_file":["good.dcm"]' in meta.replace(" ", "")
