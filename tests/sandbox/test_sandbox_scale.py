"""Determinism across servers, laziness of large studies, TLS."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests

from datalad_fmrif.sandbox import Sandbox, StudySpec

MAIN = "17-M-0181"


def _listing(sb, path):
    r = requests.get(sb.url + path, params={"format": "json"}, auth=(sb.user, sb.password))
    assert r.status_code == 200
    return r.json()["ResultSet"]["Result"]


def test_same_seed_same_md5s():
    spec = StudySpec(seed=42, subjects=2)
    digests = []
    for _ in range(2):
        with Sandbox(spec) as sb:
            e = sb.study.project_sessions(MAIN)[0]
            digests.append([(r["Name"], r["Size"], r["digest"])
                            for r in _listing(sb, f"/data/experiments/{e.id}/scans/ALL/files")])
    assert digests[0] == digests[1] and digests[0]


def test_large_study_is_lazy():
    t = time.monotonic()
    spec = StudySpec(subjects=1000, sessions_per_subject=(2, 2), scans_per_session=10, files_per_scan=300)
    with Sandbox(spec) as sb:
        subjects = _listing(sb, f"/data/projects/{MAIN}/subjects")
        assert len(subjects) == 1000
        label = subjects[777]["label"]
        sessions = _listing(sb, f"/data/projects/{MAIN}/subjects/{label}/experiments")
        assert len(sessions) == 2
        scans = _listing(sb, f"/data/experiments/{sessions[0]['ID']}/scans")
        assert len(scans) == 10
        assert sb.study.generated_files == 0
        # a single file of a 300-file scan: only that file is generated
        files = sb.study.scan_files(sessions[0]["ID"], "2")
        assert len(files) == 300
        uri = f"/data/experiments/{sessions[0]['ID']}/scans/2/files/{files[123].name}"
        r = requests.get(sb.url + uri, auth=(sb.user, sb.password))
        assert len(r.content) == 8192
        assert sb.study.generated_files == 1
    assert time.monotonic() - t < 10


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_https(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with Sandbox(https=(str(cert), str(key))) as sb:
        assert sb.url.startswith("https://127.0.0.1:")
        r = requests.get(sb.url + "/data/auth", auth=(sb.user, sb.password), verify=False)
        assert r.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(sb.url + "/data/auth", auth=(sb.user, sb.password))
