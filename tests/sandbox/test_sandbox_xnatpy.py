"""xnatpy 0.8.1 cannot tell the sandbox from XNAT."""

from __future__ import annotations

import logging
import os

import xnat

MAIN = "17-M-0181"


def _connect(sb, **kw):
    return xnat.connect(sb.url, user=sb.user, password=sb.password, loglevel=logging.ERROR, **kw)


def test_full_connect_and_browse(sb, tmp_path):
    with _connect(sb) as session:
        assert session.xnat_version == "1.8.10"
        assert set(session.projects.keys()) == {MAIN, "20-M-0042"}
        subjects = session.projects[MAIN].subjects
        labels = sorted(s.label for s in subjects.values())
        assert labels == sorted(s.label for s in sb.study.subjects(MAIN))
        jane = subjects["DOE^JANE"]
        experiments = jane.experiments
        expected = sb.study.sessions(jane.id)
        assert sorted(experiments.keys()) == sorted(e.id for e in expected)
        exp = experiments[expected[0].id]
        assert exp.label == expected[0].label
        scans = exp.scans
        assert [scans[k].type for k in sorted(scans.keys(), key=int)] == [s.type for s in sb.study.scans(exp.id)]
        scan = scans["1"]
        res = scan.resources["DICOM"]
        assert len(res.files) == len(sb.study.scan_files(exp.id, "1"))

        jane.download_dir(str(tmp_path))
        got = [f for _, _, fs in os.walk(tmp_path) for f in fs]
        assert sorted(got) == sorted(f.name for e in expected
                                     for f in sb.study.files(e.id) if f.scan_id is not None)
    assert sb.requests[-1].method == "DELETE" and sb.requests[-1].path == "/data/JSESSION"
    paths = [r.path for r in sb.requests]
    assert "/data/services/auth" in paths and "/xapi/schemas/xnat" in paths


def test_no_parse_model(sb, tmp_path):
    sb.clear_requests()
    session = _connect(sb, no_parse_model=True)
    try:
        rows = session.get_json("/data/projects")["ResultSet"]["Result"]
        assert [r["ID"] for r in rows] == [MAIN, "20-M-0042"]
        e = sb.study.sessions(sb.study.subjects(MAIN)[0].id)[0]
        listing = session.get_json(f"/data/experiments/{e.id}/scans/ALL/files")["ResultSet"]["Result"]
        session.download(listing[0]["URI"], str(tmp_path / "a.dcm"), verbose=False)
        assert (tmp_path / "a.dcm").stat().st_size == int(listing[0]["Size"])
        session.download_zip(f"/data/experiments/{e.id}/scans/ALL/files", str(tmp_path / "a.zip"), verbose=False)
        assert (tmp_path / "a.zip").stat().st_size > 0
    finally:
        session.disconnect()
    assert not any(r.path.startswith("/xapi/schemas") for r in sb.requests)


def test_alias_token_connect(sb):
    import requests

    tok = requests.get(sb.url + "/data/services/tokens/issue", auth=(sb.user, sb.password)).json()
    with xnat.connect(sb.url, user=tok["alias"], password=tok["secret"], no_parse_model=True,
                      loglevel=logging.ERROR) as session:
        assert session.logged_in_user == sb.user
        assert session.get_json("/data/projects")["ResultSet"]["totalRecords"] == "2"
