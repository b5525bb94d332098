"""What XNAT 1.8 itself answers, where it differs from what a client expects.

Each behaviour names the server source it follows: xnat-web 1.8.10.1
(oncai/xnat) and Restlet 1.1 (restlet/restlet-framework-java, tag 1.1), the
framework XNAT 1.8 serves its REST API with.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile

import pytest
import requests

from datalad_fmrif.sandbox import Fault, Sandbox, StudySpec
from datalad_fmrif.sandbox.study import EMPTY_NAME, ODD_NAMES

MAIN = "17-M-0181"
SPEC = StudySpec(seed=1, subjects=1, sessions_per_subject=(1, 1), scans_per_session=2,
                 files_per_scan=2, file_size=4096, odd_names=True)


@pytest.fixture
def box():
    with Sandbox(SPEC) as sandbox:
        yield sandbox


def login(sb) -> requests.Session:
    s = requests.Session()
    assert s.put(f"{sb.url}/data/services/auth",
                 data={"username": sb.user, "password": sb.password}).status_code == 200
    return s


def first_session(sb):
    return sb.study.sessions(sb.study.subjects(MAIN)[0].id)[0]


def rows(http, url):
    r = http.get(url, params={"format": "json"})
    assert r.status_code == 200, (url, r.status_code)
    return r.json()["ResultSet"]["Result"]


def _ranged(sb, start):
    http = login(sb)
    e = first_session(sb)
    f = sb.study.scan_files(e.id, "1")[0]
    url = f"{sb.url}/data/experiments/{e.id}/scans/1/resources/{f.resource_id}/files/{f.name}"
    return f, http.get(url, headers={"Range": f"bytes={start}-"}, stream=True)


def test_open_range_is_answered_as_restlet_1_1_10_does(box):
    """XNAT 1.8 pins Restlet 1.1.10 (restlet-framework-java, tag 1.1, folder
    1.1.10/): RangeFilter.java wraps the entity in a RangeRepresentation,
    HttpServerConverter.java sends Representation.getAvailableSize (the
    rest, size - N) as Content-Length and RangeUtils.formatContentRange
    ``bytes N-(size-1)/size``: a correct 206."""
    f, r = _ranged(box, 1000)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 1000-{f.size - 1}/{f.size}"
    assert r.headers["Content-Length"] == str(f.size - 1000)
    assert r.content == f.content()[1000:]


def test_restlet_1_1_0_range_answer_as_an_option():
    """Restlet 1.1.0's RangeUtils.formatContentRange ends the range at
    N + size, and its Representation.getAvailableSize is unknown for a
    range, so HttpServerConverter sends no Content-Length: the rest of the
    file, ended by closing the connection."""
    with Sandbox(SPEC, range_answer="restlet-1.1.0") as sb:
        f, r = _ranged(sb, 1000)
        assert r.status_code == 206
        assert r.headers["Content-Range"] == f"bytes 1000-{1000 + f.size}/{f.size}"
        assert "Content-Length" not in r.headers
        assert r.headers["Connection"] == "close"
        assert r.content == f.content()[1000:]


def test_whole_length_range_answer_as_an_option():
    """The shape issue 15 described (no Restlet version sends it): the rest
    of the file under the whole file's Content-Length; the connection
    closes after the body."""
    with Sandbox(SPEC, range_answer="whole-length") as sb:
        f, r = _ranged(sb, 1000)
        assert r.status_code == 206
        assert r.headers["Content-Length"] == str(f.size)
        assert r.headers["Connection"] == "close"
        assert r.raw.read(f.size - 1000) == f.content()[1000:]
        r.close()


def test_body_broken_off_half_way(box):
    http = login(box)
    e = first_session(box)
    f = box.study.scan_files(e.id, "1")[0]
    box.add_fault(Fault("truncate", path=f.name, after_bytes=f.size // 2))
    url = f"{box.url}/data/experiments/{e.id}/scans/1/resources/{f.resource_id}/files/{f.name}"
    r = http.get(url, stream=True)
    assert r.headers["Content-Length"] == str(f.size)
    with pytest.raises(requests.exceptions.RequestException):
        r.content  # noqa: B018


def test_unreadable_or_missing_session(box):
    """ScanList.java (1.8.10.1) dereferences a session it could not load: 500
    with a NullPointerException page; FileList.java lists nothing (200,
    empty) for it; the zip of nothing is a 404."""
    http = login(box)
    e = first_session(box)
    box.study.make_unreadable(e.id)
    for eid in (e.id, "FMRIF_E09999"):
        base = f"{box.url}/data/experiments/{eid}"
        r = http.get(f"{base}/scans", params={"format": "json"})
        assert r.status_code == 500 and "NullPointerException" in r.text
        assert rows(http, f"{base}/scans/ALL/files") == []
        assert rows(http, f"{base}/resources/supplementary/files") == []
        assert http.get(f"{base}/scans/ALL/files", params={"format": "zip"}).status_code == 404
    # still listed for its subject
    subject = box.study.subjects(MAIN)[0]
    listed = rows(http, f"{box.url}/data/projects/{MAIN}/subjects/{subject.id}/experiments")
    assert e.id in {row["ID"] for row in listed}


def test_missing_session_resource_lists_nothing_and_a_missing_file_is_404(box):
    """FileList.java: a resource that does not exist has no files (200);
    a single file that is not there is a 404."""
    http = login(box)
    e = first_session(box)
    assert rows(http, f"{box.url}/data/experiments/{e.id}/resources/nothing/files") == []
    r = http.get(f"{box.url}/data/experiments/{e.id}/scans/1/resources/DICOM/files/gone.dcm")
    assert r.status_code == 404


def test_file_uris_are_listed_unencoded(box):
    """FileList.java builds the URI from the catalog entry's relative path,
    as stored: '#', '?', '%', spaces, non-ASCII and sub-folders unencoded;
    Name is the file's own name."""
    http = login(box)
    e = first_session(box)
    listed = rows(http, f"{box.url}/data/experiments/{e.id}/resources/supplementary/files")
    uris = {row["URI"].split("/files/", 1)[1]: row for row in listed}
    assert set(ODD_NAMES) | {EMPTY_NAME} <= set(uris)
    assert uris["run 2/Resp #1.1D"]["Name"] == "Resp #1.1D"
    assert uris[EMPTY_NAME]["Size"] == "0"
    for name in ODD_NAMES:
        f = box.study.file(e.id, None, name)
        url = box.url + requests.utils.quote(uris[name]["URI"], safe="/")
        got = http.get(url)
        assert got.status_code == 200 and got.content == f.content()
        assert hashlib.md5(got.content).hexdigest() == uris[name]["digest"]
    assert http.get(box.url + requests.utils.quote(uris[EMPTY_NAME]["URI"])).content == b""


def _local_headers(data: bytes):
    pos = 0
    while data[pos:pos + 4] == b"PK\x03\x04":
        (_, version, flags, method, _, _, crc, csize, usize, nlen,
         xlen) = struct.unpack("<IHHHHHIIIHH", data[pos:pos + 30])
        name = data[pos + 30:pos + 30 + nlen].decode("utf-8")
        yield name, flags, method, crc, csize, usize
        pos += 30 + nlen + xlen + csize


def test_zip_as_java_zipoutputstream_writes_it(box):
    """ZipRepresentation.java and ZipUtils (xnat-web 1.8.10.1) through
    java.util.zip.ZipOutputStream: STORED entries with CRC and sizes in the
    local header, no data descriptor, the UTF-8 flag; paths
    {session label}/scans/{ID}-{type}/resources/{label}/files/{path} and
    {session label}/resources/{label}/files/{path}; a file missing on disk is
    skipped; no Content-Length."""
    http = login(box)
    e = first_session(box)
    gone = box.study.scan_files(e.id, "1")[1]
    box.study.remove_from_disk(e.id, "1", gone.name)
    r = http.get(f"{box.url}/data/experiments/{e.id}/files", params={"format": "zip"})
    assert r.status_code == 200 and "Content-Length" not in r.headers
    headers = list(_local_headers(r.content))
    assert headers and all(flags == 0x800 and method == 0 for _, flags, method, *_ in headers)
    names = [h[0] for h in headers]
    assert not any(n.endswith(gone.name) for n in names)
    scan = box.study.scan(e.id, "1")
    kept = box.study.scan_files(e.id, "1")[0]
    want = f"{e.label}/scans/1-{scan.type.replace(' ', '_')}/resources/DICOM/files/{kept.name}"
    assert any(n.startswith(f"{e.label}/scans/1-") and n.endswith(kept.name) for n in names)
    assert f"{e.label}/resources/supplementary/files/ECG #2.1D" in names
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.testzip() is None
    for name, _, _, crc, csize, usize in headers:
        assert csize == usize == zf.getinfo(name).file_size and crc == zf.getinfo(name).CRC
    assert want.split("/files/")[1] == kept.name


def test_zip_with_data_descriptors_as_an_option():
    with Sandbox(SPEC, zip_shape="descriptor") as sb:
        http = login(sb)
        e = first_session(sb)
        r = http.get(f"{sb.url}/data/experiments/{e.id}/scans/1/files", params={"format": "zip"})
        headers = list(_local_headers(r.content[:200]))
        assert headers[0][1] & 0x08 and headers[0][4] == 0  # sizes follow the data
        assert zipfile.ZipFile(io.BytesIO(r.content)).testzip() is None


def test_empty_zip_is_404(box):
    """ZipRepresentation with no entries: XNAT answers 404."""
    http = login(box)
    e = first_session(box)
    for f in box.study.scan_files(e.id, "2"):
        box.study.remove_from_disk(e.id, "2", f.name)
    r = http.get(f"{box.url}/data/experiments/{e.id}/scans/2/files", params={"format": "zip"})
    assert r.status_code == 404


def test_stale_catalog(box):
    """CatalogUtils.java: Size and digest in a listing come from the catalog
    XML, not the file; a file changed without a catalog refresh is listed
    with its old size and digest."""
    http = login(box)
    e = first_session(box)
    f = box.study.scan_files(e.id, "1")[0]
    before = (f.size, f.md5)
    box.study.make_stale(e.id, "1", f.name, new_size=f.size + 512)
    row = next(r for r in rows(http, f"{box.url}/data/experiments/{e.id}/scans/ALL/files")
               if r["Name"] == f.name)
    assert (int(row["Size"]), row["digest"]) == before
    got = http.get(box.url + row["URI"]).content
    assert len(got) == f.size + 512 and hashlib.md5(got).hexdigest() != before[1]


def test_slow_listing_and_proxy_504(box):
    """XNAT has no rate limit; a proxy in front answers 504 while XNAT builds
    a big listing (the sandbox injects both)."""
    http = login(box)
    e = first_session(box)
    url = f"{box.url}/data/experiments/{e.id}/scans/ALL/files"
    box.add_fault(Fault("status", path=r"/scans/ALL/files$", status=504))
    assert http.get(url, params={"format": "json"}).status_code == 504
    box.add_fault(Fault("slow", path=r"/scans/ALL/files$", delay=0.2))
    assert rows(http, url)
