"""Injected faults, latency and bandwidth."""

from __future__ import annotations

import hashlib
import time

import pytest
import requests

from datalad_fmrif.sandbox import Fault

MAIN = "17-M-0181"


def _file_uri(sb):
    e = sb.study.sessions(sb.study.subjects(MAIN)[0].id)[0]
    f = sb.study.scan_files(e.id, "1")[0]
    return f"/data/experiments/{e.id}/scans/1/resources/{f.resource_id}/files/{f.name}", f


def test_status_fault(sb, http):
    sb.add_fault(Fault("status", path=r"/files/", status=503, times=2))
    uri, f = _file_uri(sb)
    for _ in range(2):
        r = http.get(sb.url + uri)
        assert r.status_code == 503 and r.text.startswith("<!DOCTYPE html>")
    r = http.get(sb.url + uri)
    assert r.status_code == 200 and hashlib.md5(r.content).hexdigest() == f.md5
    assert [x.status for x in sb.requests[-3:]] == [503, 503, 200]


def test_fault_method_filter_and_forever(sb, http):
    sb.add_fault(Fault("status", path=r"^/data/projects$", method="HEAD", status=500, times=None))
    for _ in range(3):
        assert http.head(sb.url + "/data/projects").status_code == 500
    assert http.get(sb.url + "/data/projects", params={"format": "json"}).status_code == 200
    sb.clear_faults()
    assert http.head(sb.url + "/data/projects").status_code == 200


def test_reset_before_response(sb, http):
    sb.add_fault(Fault("reset", path=r"/files/"))
    uri, f = _file_uri(sb)
    with pytest.raises(requests.ConnectionError):
        http.get(sb.url + uri)
    assert sb.requests[-1].status == 0
    assert hashlib.md5(http.get(sb.url + uri).content).hexdigest() == f.md5


def test_reset_mid_body(sb, http):
    sb.add_fault(Fault("reset", path=r"/files/", after_bytes=1000))
    uri, _ = _file_uri(sb)
    with pytest.raises(requests.exceptions.RequestException):
        http.get(sb.url + uri)


def test_truncate(sb, http):
    sb.add_fault(Fault("truncate", path=r"/files/", after_bytes=100))
    uri, f = _file_uri(sb)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        http.get(sb.url + uri)
    # raw view: the full length is announced, fewer bytes arrive
    sb.add_fault(Fault("truncate", path=r"/files/", after_bytes=100))
    r = http.get(sb.url + uri, stream=True)
    assert r.headers["Content-Length"] == str(f.size)
    got = b""
    with pytest.raises(Exception):
        for chunk in r.raw.stream(1024, decode_content=False):
            got += chunk
    assert len(got) <= 100


def test_truncate_zip(sb, http):
    e = sb.study.sessions(sb.study.subjects(MAIN)[0].id)[0]
    sb.add_fault(Fault("truncate", path=r"/scans/ALL/files", after_bytes=5000))
    with pytest.raises(requests.exceptions.RequestException):
        http.get(f"{sb.url}/data/experiments/{e.id}/scans/ALL/files", params={"format": "zip"})


def test_html200(sb, http):
    sb.add_fault(Fault("html200", path=r"/files"))
    uri, _ = _file_uri(sb)
    r = http.get(sb.url + uri)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.content.startswith(b"<")


def test_slow(sb, http):
    sb.add_fault(Fault("slow", path=r"/data/auth", delay=0.3))
    t = time.monotonic()
    assert http.get(sb.url + "/data/auth").status_code == 200
    assert time.monotonic() - t >= 0.3
    t = time.monotonic()
    http.get(sb.url + "/data/auth")
    assert time.monotonic() - t < 0.3


def test_expire(sb, http):
    sb.add_fault(Fault("expire", path=r"/data/projects"))
    assert http.get(sb.url + "/data/projects", params={"format": "json"}).status_code == 401
    assert http.get(sb.url + "/data/auth").status_code == 401  # the session is gone for good


def test_unknown_fault_kind():
    with pytest.raises(ValueError):
        Fault("explode")


def test_latency(sb, http):
    def timed(n=5):
        t = time.monotonic()
        for _ in range(n):
            http.get(sb.url + "/data/auth")
        return (time.monotonic() - t) / n

    fast = timed()
    sb.latency = 0.05
    slow = timed()
    assert slow >= 0.05 > fast
    sb.latency = 0
    assert timed() < 0.05


def test_bandwidth(sb, http):
    uri, f = _file_uri(sb)  # 8 KiB
    sb.bandwidth = 40_000  # bytes/s: 8 KiB takes ~0.2 s
    t = time.monotonic()
    r = http.get(sb.url + uri)
    took = time.monotonic() - t
    assert len(r.content) == f.size and took >= 0.15
    sb.bandwidth = None
    t = time.monotonic()
    http.get(sb.url + uri)
    assert time.monotonic() - t < took


def test_hold_keeps_a_file_request_unanswered_until_released(sb, http):
    """A request XNAT has accepted but not answered yet: FileList.java
    (xnat-web 1.8.10.1) sends a file's bytes, or a zip of a resource's, only
    as it reads them from the archive, and sets no time limit of its own, so
    a stalled archive (NFS) leaves the client waiting with no status line.
    A test holds one subject's files so that the download is provably still
    running when it acts (e.g. cancels a Slurm task), then releases them."""
    import threading

    uri, f = _file_uri(sb)
    fault = sb.add_fault(Fault("hold", path=r"/files/", times=None))
    got = {}
    t = threading.Thread(target=lambda: got.update(r=http.get(sb.url + uri)))
    t.start()
    assert fault.wait_held(30)
    t.join(0.2)
    assert t.is_alive() and "r" not in got  # no answer while held
    # other requests are answered meanwhile
    assert requests.get(sb.url + "/data/version").status_code in (200, 401)
    fault.release()
    t.join(30)
    assert hashlib.md5(got["r"].content).hexdigest() == f.md5
    # after the release, matching requests are answered at once
    assert hashlib.md5(http.get(sb.url + uri).content).hexdigest() == f.md5
