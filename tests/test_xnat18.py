"""The client against what XNAT 1.8 itself answers (see
tests/sandbox/test_sandbox_xnat18.py for the server side and its sources):
names as XNAT lists them, zero-byte files, unreadable sessions, stale
catalogs, expired sessions answered with a login page, and a special remote
that can give back everything a download registered."""

from __future__ import annotations

import subprocess
from urllib.parse import quote

import datalad.api as dl
import pytest

from datalad_fmrif.sandbox import Fault, StudySpec
from datalad_fmrif.sandbox.study import EMPTY_NAME, ODD_NAMES
from helpers import (
    PROJECT,
    assert_fsck,
    by_status,
    download,
    git,
    keyring_sandbox,
    manifests,
    subjects_csv,
)

SPEC = StudySpec(seed=2, subjects=2, sessions_per_subject=(1, 1), scans_per_session=2,
                 files_per_scan=2, file_size=4096, odd_names=True)


@pytest.fixture
def box(secret_service, state_dir):
    with keyring_sandbox(SPEC) as sandbox:
        yield sandbox


def one_subject(tmp_path, box, n=1):
    subs = box.study.subjects(PROJECT)[:n]
    return subjects_csv(tmp_path, [(PROJECT, s.label, f"P{i:02d}")
                                   for i, s in enumerate(subs, 1)]), subs


def test_odd_names_and_empty_files_come_back(tmp_path, box, ds):
    """Files named with '#', '?', '%', spaces, parentheses, non-ASCII and
    sub-folders, and a file of zero bytes: downloaded, verified, dropped and
    got again through the fmrif remote; git annex testremote passes on
    the empty one."""
    csv, (subject,) = one_subject(tmp_path, box)
    res = download(ds, box, csv, resource=["DICOM", "supplementary"])
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    (doc,) = manifests(ds).values()
    by_name = {f["name"]: f["path"] for f in doc["files"]}
    assert set(ODD_NAMES) | {EMPTY_NAME} <= set(by_name)
    e = box.study.sessions(subject.id)[0]
    for name in (*ODD_NAMES, EMPTY_NAME):
        assert (ds.pathobj / by_name[name]).read_bytes() == box.study.file(e.id, None, name).content()
    assert len(set(by_name.values())) == len(by_name)
    odd = [by_name[n] for n in (*ODD_NAMES, EMPTY_NAME)]
    ds.drop(odd, result_renderer="disabled")
    assert not any((ds.pathobj / p).exists() for p in odd)
    ds.get(odd, result_renderer="disabled")
    for name in (*ODD_NAMES, EMPTY_NAME):
        assert (ds.pathobj / by_name[name]).read_bytes() == box.study.file(e.id, None, name).content()
    test = subprocess.run(["git", "annex", "testremote", "fmrif", "--test-readonly",
                           by_name[EMPTY_NAME]], cwd=ds.path, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-2000:]
    assert (ds.pathobj / by_name[EMPTY_NAME]).read_bytes() == b""
    assert_fsck(ds)
    assert_fsck(ds, "--from", "fmrif", "--fast")


def test_checkpresent_says_no_for_a_file_xnat_cannot_send(tmp_path, box, ds):
    """A file the catalog still lists but the archive lost: drop must not
    trust the listing alone."""
    csv, (subject,) = one_subject(tmp_path, box)
    download(ds, box, csv)
    (doc,) = manifests(ds).values()
    entry = doc["files"][0]
    box.study.remove_from_disk(doc["session"]["id"], entry["scan_id"] or None, entry["name"])
    res = ds.drop(entry["path"], result_renderer="disabled",
                  on_failure="ignore", return_type="list")
    assert res[0]["status"] == "error"
    assert (ds.pathobj / entry["path"]).read_bytes()


def test_unreadable_session_is_reported_not_skipped(tmp_path, box, ds):
    """XNAT 1.8 lists no files of a session the user cannot read (200, empty)
    and answers its scans with 500: a clear report, at once, never "nothing
    to do"; the other sessions are downloaded."""
    csv, subs = one_subject(tmp_path, box, n=2)
    gone = box.study.sessions(subs[0].id)[0]
    box.study.make_unreadable(gone.id)
    box.clear_requests()
    res = download(ds, box, csv)
    bad = [r for r in res if r.get("xnat_session_id") == gone.id]
    assert [r["status"] for r in bad] == ["impossible"]
    assert "no files" in bad[0]["message"] and "read" in bad[0]["message"]
    # one scan listing, no retries of its 500
    assert len([r for r in box.requests if r.path.endswith(f"{gone.id}/scans")]) == 1
    other = box.study.sessions(subs[1].id)[0]
    assert other.id in manifests(ds)


def test_missing_supplementary_resource_is_silent(tmp_path, secret_service, state_dir):
    spec = StudySpec(seed=2, subjects=1, sessions_per_subject=(1, 1), scans_per_session=2,
                     files_per_scan=2, file_size=4096, physio=False)
    with keyring_sandbox(spec) as box:
        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        csv, _ = one_subject(tmp_path, box)
        res = download(ds, box, csv, resource=["DICOM", "supplementary"])
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        assert by_status(res, "session")["ok"]


def test_stale_catalog_is_reported_once_and_the_rest_committed(tmp_path, box, ds):
    csv, (subject,) = one_subject(tmp_path, box)
    e = box.study.sessions(subject.id)[0]
    f = box.study.scan_files(e.id, "1")[0]
    listed = f.md5
    box.study.make_stale(e.id, "1", f.name)
    box.clear_requests()
    res = download(ds, box, csv)
    failed = [r for r in res if r["status"] == "error" and r.get("type") == "file"]
    assert len(failed) == 1, res
    message = failed[0]["message"]
    assert listed in message and "catalog" in message and "refresh" in message
    # not retried for minutes: the zip, then one request for the file
    assert len([r for r in box.requests if r.path.endswith("/" + quote(f.name))
                or r.path.endswith("/" + f.name)]) <= 2
    (doc,) = manifests(ds).values()
    assert f.name not in {x["name"] for x in doc["files"]}
    assert doc["files"]  # the rest of the session
    assert git(ds, "status", "--porcelain") == ""
    status = dl.fmrif_status(dataset=ds.path, result_renderer="disabled",
                             return_type="list", on_failure="ignore")
    stale = [r for r in status if r.get("type") == "file" and r.get("state") == "untracked"]
    assert len(stale) == 1 and "catalog" in stale[0]["message"]


def test_expired_session_as_login_page_on_zips_and_files(tmp_path, box, ds):
    """A login page with status 200 where a zip or a file was expected: one
    fresh login, and the download goes on in zips (not file by file)."""
    csv, (subject,) = one_subject(tmp_path, box)
    box.add_fault(Fault("html200", path=r"/files$"))
    box.clear_requests()
    res = download(ds, box, csv)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    logins = [r for r in box.requests if r.path == "/data/services/auth"]
    assert len(logins) == 2
    assert not [r for r in box.requests if "/files/" in r.path and r.method == "GET"]


def test_listing_whose_total_disagrees_is_asked_again_then_refused(tmp_path):
    import json

    from datalad_fmrif.credentials import Credential, Rejections
    from datalad_fmrif.sandbox import Sandbox
    from datalad_fmrif.xnat.errors import BadResponse
    from datalad_fmrif.xnat.session import XnatSession

    def short(body: bytes) -> bytes:  # one row lost on the way
        doc = json.loads(body)
        doc["ResultSet"]["Result"] = doc["ResultSet"]["Result"][:-1]
        return json.dumps(doc).encode()

    with Sandbox(SPEC) as sb:
        e = sb.study.sessions(sb.study.subjects(PROJECT)[0].id)[0]
        path = f"/data/experiments/{e.id}/scans/ALL/files"
        cred = Credential("sandbox", sb.user, sb.password, "environment")
        with XnatSession(sb.url, cred, rejections=Rejections(tmp_path / "r")) as xnat:
            sb.add_fault(Fault("body", path=path + "$", body=short))
            rows = xnat.result_set(path)  # asked again: whole
            assert len(rows) == len(sb.study.files(e.id)) - len(
                sb.study.session_level_files(e.id))
            sb.add_fault(Fault("body", path=path + "$", body=short, times=None))
            sb.clear_requests()
            with pytest.raises(BadResponse, match="says it has .* rows but holds"):
                xnat.result_set(path)
            assert len([r for r in sb.requests if r.path == path]) == 2


def test_timeout_and_retries_settings(tmp_path, box, ds):
    """git config datalad.fmrif.timeout / .retries: used when numbers, a
    clear refusal naming the setting when not."""
    from datalad_fmrif.commands._common import xnat_session

    ds.config.set("datalad.fmrif.timeout", "42", scope="local")
    ds.config.set("datalad.fmrif.retries", "7", scope="local")
    xnat = xnat_session(ds.config, box.url, None)
    assert (xnat.timeout, xnat.retries) == (42.0, 7)
    ds.config.set("datalad.fmrif.retries", "many", scope="local")
    csv, _ = one_subject(tmp_path, box)
    res = download(ds, box, csv)
    assert [r["status"] for r in res] == ["impossible"]
    assert "datalad.fmrif.retries is 'many'" in res[0]["message"]


def test_login_pages_in_the_special_remote_cost_one_login_each(tmp_path, box, ds):
    """datalad get through the fmrif remote while XNAT (or a proxy) answers
    with a login page and 200: each page costs one fresh login and one more
    try, and every file arrives."""
    csv, _ = one_subject(tmp_path, box)
    download(ds, box, csv)
    files = [f["path"] for m in manifests(ds).values() for f in m["files"]]
    ds.drop(files, result_renderer="disabled")
    box.add_fault(Fault("html200", path=r"/files/.+", times=1))
    box.clear_requests()
    res = ds.get(files, result_renderer="disabled", on_failure="ignore", return_type="list")
    assert all(r["status"] in ("ok", "notneeded") for r in res), res
    # datalad get without -J: one special-remote process, its login and
    # one fresh login after the page
    logins = [r for r in box.requests if r.path == "/data/services/auth"]
    assert len(logins) == 2
    for p in files:
        assert (ds.pathobj / p).exists()


def test_a_file_the_zip_lacks_is_reported_and_the_rest_committed(tmp_path, box, ds):
    """XNAT leaves a file that is missing on its disk out of the zip without
    a word; the download asks for it on its own and reports the 404."""
    csv, (subject,) = one_subject(tmp_path, box)
    e = box.study.sessions(subject.id)[0]
    gone = box.study.scan_files(e.id, "1")[0]
    box.study.remove_from_disk(e.id, "1", gone.name)
    res = download(ds, box, csv)
    failed = [r for r in res if r["status"] == "error" and r.get("type") == "file"]
    assert len(failed) == 1 and "404" in failed[0]["message"], res
    (doc,) = manifests(ds).values()
    names = {f["name"] for f in doc["files"]}
    assert gone.name not in names and names
    assert git(ds, "status", "--porcelain") == ""
    assert_fsck(ds)
