"""transfer.fetch against the sandbox XNAT, with each kind of fault."""

from __future__ import annotations

import hashlib

import pytest

from datalad_fmrif.credentials import Credential, Rejections
from datalad_fmrif.sandbox import Fault, Sandbox, StudySpec
from datalad_fmrif.transfer import fetch
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
    fetch(xnat, path_of(f), dest, backoff=0.01, **kw)


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
    with pytest.raises(TransientError, match="broke off 3 times.*3000 bytes are kept"):
        get(xnat, one, dest, retries=2)
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
    sb.add_fault(Fault("html200", path=one.name))
    dest = tmp_path / "f.dcm"
    with pytest.raises(BadResponse, match="HTML"):
        get(xnat, one, dest)
    assert not dest.exists()


def test_html_body_sent_as_binary_is_recognised(sb, xnat, one, tmp_path):
    # an error page labelled as a binary type still starts with "<"
    sb.add_fault(Fault("html200", path=one.name))
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
    with pytest.raises(BadResponse, match="8192 bytes, XNAT's listing said 9000"):
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
