"""transfer.fetch against the sandbox XNAT, with each kind of fault."""

from __future__ import annotations

import hashlib

import pytest

from datalad_fmrif.credentials import Credential, Rejections
from datalad_fmrif.sandbox import Fault, Sandbox, StudySpec
from datalad_fmrif.content.transfer import fetch
from datalad_fmrif.xnat.errors import BadResponse, NotFound, TransientError
from datalad_fmrif.xnat.session import XnatSession

SPEC = StudySpec(seed=0, subjects=1, scans_per_session=2, files_per_scan=4, file_size=8192)


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SPEC, latency=0.0, users={"demo": "demo-password"}) as sandbox:
        yield sandbox


@pytest.fixture
def xnat(sb, tmp_path):
    """A logged-in session that records the headers of every request."""
    cred = Credential("sandbox", sb.user, sb.password, "environment")
    session = XnatSession(sb.url, cred, retries=3, backoff=0.01,
                          rejections=Rejections(tmp_path / "rejected"))
    session.sent = []
    request = session.request

    def recording(method, path, **kw):
        session.sent.append((method, path, dict(kw.get("headers") or {})))
        return request(method, path, **kw)

    session.request = recording
    with session:
        yield session
    sb.clear_faults()


def files(sb):
    project = sb.study.projects[0]
    subject = sb.study.subjects(project)[0]
    session = sb.study.sessions(subject.id)[0]
    return sb.study.files(session.id)


def path_of(f) -> str:
    if f.scan_id is None:
        return (f"/data/experiments/{f.session_id}/resources/{f.resource_id}"
                f"/files/{f.name}")
    return (f"/data/experiments/{f.session_id}/scans/{f.scan_id}/resources/"
            f"{f.resource_id}/files/{f.name}")


@pytest.fixture
def one(sb):
    return files(sb)[0]


def get(xnat, f, dest, **kw):
    kw.setdefault("size", f.size)
    kw.setdefault("md5", f.md5)
    fetch(xnat, path_of(f), dest, **kw)


def gets(xnat):
    return [headers for method, _, headers in xnat.sent if method == "GET"]


def test_fetch_verified_with_progress(xnat, one, tmp_path):
    dest = tmp_path / "f.dcm"
    seen = []
    get(xnat, one, dest, progress=seen.append)
    assert dest.read_bytes() == one.content()
    assert seen[-1] == one.size
    assert len(gets(xnat)) == 1 and "Range" not in gets(xnat)[0]


def test_fetch_without_digest_or_size(xnat, one, tmp_path):
    dest = tmp_path / "f.dcm"
    get(xnat, one, dest, size=None, md5=None)
    assert dest.read_bytes() == one.content()


def test_503_once_is_retried(sb, xnat, one, tmp_path):
    sb.add_fault(Fault("status", path=one.name, status=503))
    get(xnat, one, tmp_path / "f.dcm")
    assert (tmp_path / "f.dcm").read_bytes() == one.content()
    assert [r.status for r in sb.requests if r.path == path_of(one)][-2:] == [503, 200]


def test_reset_before_response_is_retried(sb, xnat, one, tmp_path):
    sb.add_fault(Fault("reset", path=one.name))
    get(xnat, one, tmp_path / "f.dcm")
    assert (tmp_path / "f.dcm").read_bytes() == one.content()


@pytest.mark.parametrize("kind", ["truncate", "reset"])
def test_broken_body_is_resumed_with_range(sb, xnat, one, tmp_path, kind):
    sb.add_fault(Fault(kind, path=one.name, after_bytes=3000))
    dest = tmp_path / "f.dcm"
    get(xnat, one, dest)
    assert dest.read_bytes() == one.content()
    sent = gets(xnat)
    assert [h.get("Range") for h in sent] == [None, "bytes=3000-"]


def test_body_that_keeps_breaking_gives_up(sb, xnat, one, tmp_path):
    sb.add_fault(Fault("truncate", path=one.name, after_bytes=1000, times=None))
    dest = tmp_path / "f.dcm"
    xnat.retries = 2
    with pytest.raises(TransientError, match="broke off 3 times.*3000 bytes are kept"):
        get(xnat, one, dest)
    assert len(gets(xnat)) == 3
    # each attempt resumed where the last stopped; what arrived is a valid
    # prefix, kept for a later resume
    assert [h.get("Range") for h in gets(xnat)] == [None, "bytes=1000-", "bytes=2000-"]
    assert dest.read_bytes() == one.content()[:3000]
    sb.clear_faults()
    get(xnat, one, dest)
    assert dest.read_bytes() == one.content()
    assert gets(xnat)[-1]["Range"] == "bytes=3000-"


def test_resume_from_existing_prefix(xnat, one, tmp_path):
    dest = tmp_path / "f.dcm"
    dest.write_bytes(one.content()[:5000])
    get(xnat, one, dest)
    assert dest.read_bytes() == one.content()
    assert [h.get("Range") for h in gets(xnat)] == ["bytes=5000-"]


def test_wrong_prefix_starts_over_once(xnat, one, tmp_path):
    dest = tmp_path / "f.dcm"
    dest.write_bytes(b"\0" * 5000)
    get(xnat, one, dest)
    assert dest.read_bytes() == one.content()
    assert [h.get("Range") for h in gets(xnat)] == ["bytes=5000-", None]


def test_complete_file_is_not_downloaded_again(xnat, one, tmp_path):
    dest = tmp_path / "f.dcm"
    dest.write_bytes(one.content())
    get(xnat, one, dest)
    assert gets(xnat) == []


def test_html_with_200_is_never_kept(sb, xnat, one, tmp_path):
    sb.add_fault(Fault("html200", path=one.name, times=None))
    dest = tmp_path / "f.dcm"
    logins = xnat.login_attempts
    with pytest.raises(BadResponse, match="HTML.*, also right after a fresh login"):
        get(xnat, one, dest)
    assert not dest.exists()
    # one fresh login, one more try; then pages are errors, without logins
    assert xnat.login_attempts == logins + 1
    with pytest.raises(BadResponse, match="HTML"):
        get(xnat, one, dest)
    assert xnat.login_attempts == logins + 1


def test_login_page_on_a_file_logs_in_again_once(sb, xnat, one, tmp_path):
    """An expired session answered with a login page and 200 (a proxy or SSO
    front end does this): one re-login, one retry, the file arrives."""
    sb.add_fault(Fault("html200", path=one.name))
    dest = tmp_path / "f.dcm"
    logins = xnat.login_attempts
    get(xnat, one, dest)
    assert dest.read_bytes() == one.content()
    assert xnat.login_attempts == logins + 1


def test_html_body_sent_as_binary_is_recognised(sb, xnat, one, tmp_path):
    # an error page labelled as a binary type still starts with "<"
    sb.add_fault(Fault("html200", path=one.name, times=None))
    request = xnat.request

    def relabelled(*args, **kw):
        response = request(*args, **kw)
        response.headers["Content-Type"] = "application/octet-stream"
        return response

    xnat.request = relabelled
    dest = tmp_path / "f.dcm"
    with pytest.raises(BadResponse, match="HTML page instead of the file"):
        get(xnat, one, dest, size=None, md5=None)
    assert not dest.exists()


def test_changed_file_fails_verification(sb, xnat, tmp_path):
    f = files(sb)[1]
    registered = f.md5
    sb.study.change_file(f.session_id, f.scan_id, f.name)
    dest = tmp_path / "f.dcm"
    with pytest.raises(BadResponse) as err:
        get(xnat, f, dest, md5=registered)
    message = str(err.value)
    assert path_of(f) in message
    assert registered in message
    assert hashlib.md5(f.content()).hexdigest() in message
    assert sb.password not in message
    assert not dest.exists()


def test_size_mismatch_is_caught_before_the_body(xnat, one, tmp_path):
    dest = tmp_path / "f.dcm"
    with pytest.raises(BadResponse, match="XNAT lists 9000 bytes, the server sent 8192"):
        get(xnat, one, dest, size=9000)
    assert not dest.exists()


def test_missing_file(xnat, one, tmp_path):
    with pytest.raises(NotFound):
        fetch(xnat, path_of(one) + "-gone", tmp_path / "f.dcm", size=1, md5=None)


def test_expired_session_logs_in_again_once(sb, xnat, one, tmp_path):
    sb.add_fault(Fault("expire", path=one.name))
    get(xnat, one, tmp_path / "a.dcm")
    sb.expire_sessions()
    get(xnat, one, tmp_path / "b.dcm")
    assert (tmp_path / "b.dcm").read_bytes() == one.content()
    assert xnat.login_attempts == 3  # the first login and one per expiry


def test_slow_server_is_waited_for(sb, xnat, one, tmp_path):
    sb.add_fault(Fault("slow", path=one.name, delay=0.3))
    get(xnat, one, tmp_path / "f.dcm")
    assert (tmp_path / "f.dcm").read_bytes() == one.content()


# -- XNAT 1.8's own answers ------------------------------------------------------

@pytest.mark.parametrize("range_answer", ["restlet", "restlet-1.1.0", "whole-length"])
def test_resume_on_every_206_shape(tmp_path, range_answer):
    """XNAT 1.8's Restlet 1.1.10 answers a correct 206; Restlet 1.1.0 sends
    no length, and a stand-in may announce the whole file's length. The
    resume reads exactly the rest, then closes."""
    with Sandbox(SPEC, range_answer=range_answer) as box:
        f = files(box)[0]
        box.add_fault(Fault("truncate", path=f.name, after_bytes=f.size // 2))
        cred = Credential("sandbox", box.user, box.password, "environment")
        with XnatSession(box.url, cred, retries=2, backoff=0.01,
                         rejections=Rejections(tmp_path / "rejected")) as xnat:
            dest = tmp_path / "f.dcm"
            get(xnat, f, dest)
            assert dest.read_bytes() == f.content()
            statuses = [r.status for r in box.requests if r.path == path_of(f)]
            assert statuses == [200, 206]
            # the connection closed after the rest: the next file still arrives
            get(xnat, files(box)[1], tmp_path / "g.dcm")
            assert (tmp_path / "g.dcm").read_bytes() == files(box)[1].content()


def test_retries_per_file_are_bounded_in_one_place(sb, xnat, one, tmp_path):
    """Failed answers and broken bodies spend one budget: retries + 1
    requests for the file, not (retries + 1) squared."""
    xnat.retries = 3
    sb.clear_requests()
    # the first matching fault applies: half the requests 503, the rest break off
    sb.add_fault(Fault("status", path=one.name, status=503, times=None, rate=0.5, seed=3))
    sb.add_fault(Fault("truncate", path=one.name, after_bytes=1000, times=None))
    with pytest.raises(TransientError):
        get(xnat, one, tmp_path / "f.dcm")
    statuses = [r.status for r in sb.requests if r.path == path_of(one)]
    assert len(statuses) == 4
    assert 503 in statuses and {200, 206} & set(statuses)


def test_zero_byte_file_comes_back(tmp_path):
    spec = StudySpec(seed=0, subjects=1, scans_per_session=1, files_per_scan=1,
                     file_size=4096, odd_names=True)
    with Sandbox(spec) as box:
        empty = next(f for f in files(box) if f.size == 0)
        cred = Credential("sandbox", box.user, box.password, "environment")
        with XnatSession(box.url, cred, rejections=Rejections(tmp_path / "r")) as xnat:
            dest = tmp_path / "empty"
            get(xnat, empty, dest)
            assert dest.exists() and dest.read_bytes() == b""
            get(xnat, empty, dest)  # an existing empty file is the file
            assert dest.exists() and dest.read_bytes() == b""


def test_odd_names_are_fetched_by_their_listed_path(tmp_path):
    """XNAT lists '#', '?', '%', spaces, non-ASCII and folders unencoded; the
    URL quotes them once."""
    from datalad_fmrif.xnat.catalog import session_catalog
    from datalad_fmrif.xnat.records import Session

    spec = StudySpec(seed=0, subjects=1, scans_per_session=1, files_per_scan=1,
                     file_size=4096, odd_names=True)
    with Sandbox(spec) as box:
        e = box.study.sessions(box.study.subjects("17-M-0181")[0].id)[0]
        cred = Credential("sandbox", box.user, box.password, "environment")
        with XnatSession(box.url, cred, rejections=Rejections(tmp_path / "r")) as xnat:
            record = Session(e.project, e.id, e.label, e.subject_id, e.date, e.xsi_type)
            cat = session_catalog(xnat, record, ["supplementary"])
            names = {f.name for f in cat.files if f.scan_id is None}
            assert {"ECG #2.1D", "50%41.txt", "a (1)?.1D", "run 2/Resp #1.1D"} <= names
            truth = {f.name: f for f in box.study.session_level_files(e.id)}
            for n, f in enumerate(ff for ff in cat.files if ff.scan_id is None):
                dest = tmp_path / str(n)
                fetch(xnat, f.path, dest, size=f.size, md5=f.md5)
                assert dest.read_bytes() == truth[f.name].content()


def test_stale_catalog_is_reported_once_with_what_arrived(sb, xnat, tmp_path):
    f = files(sb)[2]
    listed = (f.size, f.md5)
    sb.study.make_stale(f.session_id, f.scan_id, f.name)
    truth = sb.study.file(f.session_id, f.scan_id, f.name)
    with pytest.raises(BadResponse) as err:
        fetch(xnat, path_of(f), tmp_path / "f", size=listed[0], md5=listed[1])
    message = str(err.value)
    assert listed[1] in message and hashlib.md5(truth.content()).hexdigest() in message
    assert "refresh" in message and "catalog" in message
    assert len(gets(xnat)) == 1  # no retry can help


def test_connections_for_every_parallel_job(xnat):
    """-J allows 32 parallel transfers; requests keeps 10 connections per
    host unless told otherwise, and would open and close the rest each time."""
    adapter = xnat.http.get_adapter(xnat.server + "/data/")
    assert adapter._pool_maxsize == 32
