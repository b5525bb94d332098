"""Listings, items, single files and zip streams."""

from __future__ import annotations

import hashlib
import http.client as httpclient
import io
import zipfile

import pydicom
import requests

MAIN = "17-M-0181"

FILE_COLUMNS = ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content", "cat_ID",
                "digest"]


def _first_session(sb):
    subject = sb.study.subjects(MAIN)[0]
    return subject, sb.study.sessions(subject.id)[0]


def test_site_endpoints(sb, http, get_rows):
    assert http.get(sb.url + "/data/version").status_code == 404
    info = http.get(sb.url + "/xapi/siteConfig/buildInfo", params={"format": "json"}).json()
    assert info["version"] == "1.8.10" and "buildNumber" in info
    assert http.get(sb.url + "/xapi/siteConfig/buildInfo/version").text == "1.8.10"
    schemas = http.get(sb.url + "/xapi/schemas", params={"format": "json"}).json()
    assert set(schemas) == {"xnat", "xdat"}
    for name in schemas:
        r = http.get(f"{sb.url}/xapi/schemas/{name}")
        assert r.status_code == 200 and "<xs:schema" in r.text
    assert get_rows("/data/search/elements") == []


def test_projects(sb, http, get_rows):
    rows = get_rows("/data/projects")
    assert [r["ID"] for r in rows] == ["17-M-0181", "20-M-0042"]
    assert list(rows[0]) == ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"]
    assert rows[0]["URI"] == "/data/projects/17-M-0181"
    item = http.get(f"{sb.url}/data/projects/{MAIN}", params={"format": "json"}).json()["items"][0]
    assert item["data_fields"]["ID"] == MAIN and item["meta"]["xsi:type"] == "xnat:projectData"
    assert http.get(f"{sb.url}/data/projects/01-M-0192", params={"format": "json"}).status_code == 403
    assert http.get(f"{sb.url}/data/projects/01-M-0192/subjects", params={"format": "json"}).status_code == 403
    r = http.get(f"{sb.url}/data/projects/99-X-0000/subjects", params={"format": "json"})
    assert r.status_code == 404


def test_forbidden_reaches_ids_too(sb, http):
    subject = sb.study.subjects("01-M-0192")[0]
    session = sb.study.sessions(subject.id)[0]
    assert http.get(f"{sb.url}/data/subjects/{subject.id}", params={"format": "json"}).status_code == 403
    assert http.get(f"{sb.url}/data/experiments/{session.id}/scans/ALL/files",
                    params={"format": "json"}).status_code == 403


def test_subjects(sb, http, get_rows):
    rows = get_rows(f"/data/projects/{MAIN}/subjects")
    assert [r["label"] for r in rows] == [s.label for s in sb.study.subjects(MAIN)]
    assert list(rows[0]) == ["ID", "label", "project", "insert_date", "insert_user", "URI"]
    assert rows[0]["URI"] == f"/data/subjects/{rows[0]['ID']}"
    jane = next(r for r in rows if r["label"] == "DOE^JANE")
    for ref in (jane["ID"], "DOE^JANE", "DOE%5EJANE"):
        item = http.get(f"{sb.url}/data/projects/{MAIN}/subjects/{ref}", params={"format": "json"}).json()
        assert item["items"][0]["data_fields"]["ID"] == jane["ID"]
    item = http.get(f"{sb.url}/data/subjects/{jane['ID']}", params={"format": "json"}).json()
    assert item["items"][0]["data_fields"]["label"] == "DOE^JANE"
    assert http.get(f"{sb.url}/data/projects/{MAIN}/subjects/nobody", params={"format": "json"}).status_code == 404
    # the label of a subject is only valid under its own project
    r = http.get(f"{sb.url}/data/projects/20-M-0042/subjects/DOE^JANE", params={"format": "json"})
    assert r.status_code == 404


def test_columns(sb, http, get_rows):
    rows = get_rows(f"/data/projects/{MAIN}/subjects", columns="ID,label,xsiType")
    assert set(rows[0]) == {"ID", "label", "xsiType", "URI"}
    subject = sb.study.subjects(MAIN)[0]
    rows = get_rows(f"/data/projects/{MAIN}/subjects/{subject.label}/experiments",
                    columns="ID,label,date,xsiType,subject_ID,subject_label")
    assert rows[0]["subject_ID"] == subject.id and rows[0]["subject_label"] == subject.label


def test_experiments(sb, http, get_rows):
    subject = sb.study.subjects(MAIN)[0]
    sessions = sb.study.sessions(subject.id)
    rows = get_rows(f"/data/projects/{MAIN}/subjects/{subject.label}/experiments")
    assert list(rows[0]) == ["ID", "label", "project", "xsiType", "date", "insert_date", "URI"]
    assert [r["ID"] for r in rows] == [e.id for e in sessions]
    assert rows[0]["URI"] == f"/data/experiments/{sessions[0].id}"
    assert rows[0]["xsiType"] == "xnat:mrSessionData" and rows[0]["date"] == sessions[0].date
    all_rows = get_rows(f"/data/projects/{MAIN}/experiments")
    assert len(all_rows) == len(sb.study.project_sessions(MAIN)) and "subject_ID" not in all_rows[0]
    assert get_rows(f"/data/projects/{MAIN}/experiments", date=sessions[0].date)[0]["ID"] == sessions[0].id
    e = sessions[0]
    for path in (f"/data/experiments/{e.id}", f"/data/projects/{MAIN}/experiments/{e.label}",
                 f"/data/projects/{MAIN}/subjects/{subject.id}/experiments/{e.id}",
                 f"/data/archive/projects/{MAIN}/experiments/{e.id}"):
        item = http.get(sb.url + path, params={"format": "json"}).json()["items"][0]
        assert item["data_fields"]["ID"] == e.id and item["meta"]["xsi:type"] == "xnat:mrSessionData"
    assert http.get(f"{sb.url}/data/experiments/FMRIF_E99999", params={"format": "json"}).status_code == 404


def test_scans_and_resources(sb, http, get_rows):
    _, e = _first_session(sb)
    rows = get_rows(f"/data/experiments/{e.id}/scans")
    assert set(rows[0]) == {"ID", "type", "xsiType", "quality", "series_description", "note", "URI",
                            "xnat_imagescandata_id"}
    assert [r["ID"] for r in rows] == [s.id for s in sb.study.scans(e.id)]
    assert rows[0]["URI"] == f"/data/experiments/{e.id}/scans/1"
    res = get_rows(f"/data/experiments/{e.id}/scans/1/resources")
    assert len(res) == 1
    assert set(res[0]) == {"xnat_abstractresource_id", "label", "element_name", "category", "cat_id", "cat_desc",
                           "format", "content", "tags", "file_count", "file_size"}
    assert res[0]["label"] == "DICOM" and res[0]["file_count"] == "4" and res[0]["file_size"] == str(4 * 8192)
    sres = get_rows(f"/data/experiments/{e.id}/resources")
    assert [r["label"] for r in sres] == ["supplementary"]
    assert http.get(f"{sb.url}/data/experiments/{e.id}/scans/77", params={"format": "json"}).status_code == 404


def test_file_listings(sb, http, get_rows):
    _, e = _first_session(sb)
    rows = get_rows(f"/data/experiments/{e.id}/scans/ALL/files")
    assert list(rows[0]) == FILE_COLUMNS
    expected = [f for f in sb.study.files(e.id) if f.scan_id is not None]
    assert [r["Name"] for r in rows] == [f.name for f in expected]
    assert [r["digest"] for r in rows] == [f.md5 for f in expected]
    f = expected[0]
    assert rows[0]["URI"] == f"/data/experiments/{e.id}/scans/{f.scan_id}/resources/{f.resource_id}/files/{f.name}"
    assert rows[0]["collection"] == "DICOM" and rows[0]["cat_ID"] == f.resource_id
    scan_rows = get_rows(f"/data/experiments/{e.id}/scans/{f.scan_id}/files")
    assert scan_rows == [r for r in rows if f"/scans/{f.scan_id}/" in r["URI"]]
    for ref in (f.resource_id, "DICOM"):
        assert get_rows(f"/data/experiments/{e.id}/scans/{f.scan_id}/resources/{ref}/files") == scan_rows
    sess = get_rows(f"/data/experiments/{e.id}/resources/supplementary/files")
    assert sess and all(r["URI"].startswith(f"/data/experiments/{e.id}/resources/") for r in sess)
    assert {r["Name"][:3] for r in sess} == {"ECG", "Res"}


def test_digest_mutation_shows_in_listing(sb, http, get_rows):
    _, e = _first_session(sb)
    f = sb.study.scan_files(e.id, "1")[0]
    sb.study.set_digest(e.id, "1", f.name, "")
    row = get_rows(f"/data/experiments/{e.id}/scans/1/files")[0]
    assert row["digest"] == ""
    body = http.get(sb.url + row["URI"]).content
    assert hashlib.md5(body).hexdigest() == f.true_md5


def test_single_file_get_head_range(sb, http, get_rows):
    _, e = _first_session(sb)
    rows = get_rows(f"/data/experiments/{e.id}/scans/ALL/files")
    row = rows[0]
    r = http.get(sb.url + row["URI"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/dicom"
    assert int(r.headers["Content-Length"]) == int(row["Size"]) == len(r.content)
    assert hashlib.md5(r.content).hexdigest() == row["digest"]
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.PatientID and ds.SeriesDescription
    h = http.head(sb.url + row["URI"])
    assert h.status_code == 200 and h.headers["Content-Length"] == row["Size"] and h.content == b""
    # an open range is Restlet 1.1's quirk (test_sandbox_xnat18.py); a closed one is plain
    part = http.get(sb.url + row["URI"], headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == r.content[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(r.content)}"
    assert http.get(sb.url + row["URI"], headers={"Range": "bytes=999999-"}).status_code == 416
    # resource label instead of ID, URL-encoded names
    by_label = row["URI"].replace(f"/resources/{row['cat_ID']}/", "/resources/DICOM/")
    assert http.get(sb.url + by_label).content == r.content
    assert http.get(sb.url + row["URI"].replace(".dcm", "%2Edcm")).content == r.content
    assert http.get(sb.url + row["URI"] + "x").status_code == 404
    # physio is text
    sess = get_rows(f"/data/experiments/{e.id}/resources/supplementary/files")
    p = http.get(sb.url + sess[0]["URI"])
    assert p.headers["Content-Type"].startswith("text/plain") and hashlib.md5(p.content).hexdigest() == sess[0]["digest"]


def _check_zip(resp, rows):
    assert resp.status_code == 200
    assert resp.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in resp.headers
    zf = zipfile.ZipFile(io.BytesIO(resp.content))
    by_name = {r["Name"]: r for r in rows}
    names = zf.namelist()
    assert len(names) == len(rows)
    for n in names:
        row = by_name[n.rsplit("/", 1)[1]]
        assert hashlib.md5(zf.read(n)).hexdigest() == row["digest"]
    return names


def test_zip_streams(sb, http, get_rows):
    _, e = _first_session(sb)
    rows = get_rows(f"/data/experiments/{e.id}/scans/ALL/files")
    names = _check_zip(http.get(f"{sb.url}/data/experiments/{e.id}/scans/ALL/files", params={"format": "zip"}),
                       rows)
    scan = sb.study.scans(e.id)[0]
    assert f"{e.label}/scans/{scan.id}-{scan.type}/resources/DICOM/files/{rows[0]['Name']}" in names
    scan_rows = [r for r in rows if "/scans/2/" in r["URI"]]
    _check_zip(http.get(f"{sb.url}/data/experiments/{e.id}/scans/2/files", params={"format": "zip"}), scan_rows)
    _check_zip(http.get(f"{sb.url}/data/experiments/{e.id}/scans/2/resources/DICOM/files",
                        params={"format": "zip"}), scan_rows)
    # keep-alive survives a chunked response
    assert http.get(sb.url + "/data/auth").status_code == 200


def test_keepalive_one_connection_many_responses(sb, http):
    """Every kind of response leaves the connection usable (lengths are right)."""
    _, e = _first_session(sb)
    cookie = "JSESSIONID=" + http.cookies["JSESSIONID"]
    conn = httpclient.HTTPConnection("127.0.0.1", int(sb.url.rsplit(":", 1)[1]), timeout=10)
    file_uri = sb.study.scan_files(e.id, "1")[0]
    uri = f"/data/experiments/{e.id}/scans/1/files/{file_uri.name}"
    plan = [("GET", "/data/projects?format=json", 200), ("GET", "/data/projects/nope?format=json", 404),
            ("HEAD", uri, 200), ("GET", uri, 200), ("GET", f"/data/experiments/{e.id}/scans/ALL/files?format=zip", 200),
            ("GET", "/data/version", 404), ("GET", "/", 200), ("GET", "/data/auth", 200)]
    for method, path, status in plan:
        conn.request(method, path, headers={"Cookie": cookie})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == status, path
    conn.close()


def test_request_log(sb, http):
    sb.clear_requests()
    http.get(sb.url + "/data/projects", params={"format": "json", "columns": "ID"})
    http.get(sb.url + "/data/projects/nope", params={"format": "json"})
    log = sb.requests
    assert [(x.method, x.path, x.status, x.auth) for x in log] == [
        ("GET", "/data/projects", 200, "cookie"), ("GET", "/data/projects/nope", 404, "cookie")]
    assert log[0].query == {"format": "json", "columns": "ID"}
    requests.get(sb.url + "/data/projects")
    assert sb.requests[-1].auth == "none" and sb.requests[-1].status == 401
