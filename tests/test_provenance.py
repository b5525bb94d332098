"""What the dataset records: run records, manifests, metadata, fmrif-status."""

from __future__ import annotations

import json
import subprocess

import datalad.api as dl
from datalad.local.rerun import get_run_info

from helpers import (
    annexed_files,
    by_status,
    content_gets,
    download,
    git,
    manifests,
    pseudonymous_list,
)


def test_manifests_match_the_tree_one_to_one(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb)
    download(ds, sb, csv, resource=["DICOM", "supplementary"])
    docs = manifests(ds)
    listed = sorted(f["path"] for m in docs.values() for f in m["files"])
    assert listed == annexed_files(ds)
    for m in docs.values():
        session = sb.study.session(m["session"]["id"])
        for f in m["files"]:
            xnat = sb.study.file(session.id, f["scan_id"] or None, f["name"])
            assert (f["size"], f["md5"]) == (xnat.size, xnat.md5)
            assert f["url"].startswith(sb.url + f"/data/experiments/{session.id}/")
            assert f["recorded"]
    # the manifests are in git, not in the annex
    tracked = git(ds, "ls-files", ".datalad/fmrif/sessions").split()
    assert len(tracked) == len(docs)
    assert not (ds.pathobj / tracked[0]).is_symlink()


def test_git_annex_fsck_passes(tmp_path, sb, ds):
    csv, _ = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv)
    proc = subprocess.run(["git", "annex", "fsck"], cwd=ds.path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "ok" in proc.stdout


def test_metadata_finds_files_by_subject_session_and_scan_type(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb)
    download(ds, sb, csv, no_content=True)
    by_subject = git(ds, "annex", "find", "--metadata", "xnat_subject=P02").split()
    assert by_subject and all(p.startswith("sub-P02/") for p in by_subject)
    by_session = git(ds, "annex", "find", "--metadata", "xnat_subject=P01",
                     "--metadata", "xnat_session=01").split()
    assert by_session and all(p.startswith("sub-P01/ses-01/") for p in by_session)
    t1 = git(ds, "annex", "find", "--metadata", "xnat_scan_type=T1w_MPRAGE").split()
    docs = manifests(ds)
    want = sorted(f["path"] for m in docs.values() for f in m["files"]
                  if f["scan_type"] == "T1w_MPRAGE")
    assert sorted(t1) == want and want
    one = json.loads(git(ds, "annex", "metadata", "--json", want[0]))
    fields = one["fields"]
    assert fields["xnat_project"] == ["17-M-0181"]
    assert fields["xnat_session_id"][0].startswith("FMRIF_E")


def test_rerun_of_a_download_commit_fetches_only_what_is_new(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv)
    first = git(ds, "rev-parse", "HEAD").strip()
    _, record = get_run_info(ds, git(ds, "log", "-1", "--format=%B"))
    assert record["fmrif"]["sessions"]
    assert record["outputs"] == []  # rerun must not unlock thousands of files

    added = sb.study.add_session(subs[0].id)
    sb.clear_requests()
    res = ds.rerun(first, result_renderer="disabled", return_type="list",
                   on_failure="ignore")
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    # nothing was unlocked: the record commit holds only the manifests
    assert not [r for r in res if r["action"] == "unlock" and r["status"] == "ok"]
    assert git(ds, "status", "--porcelain") == ""
    kinds = git(ds, "ls-files", "-s", "sub-P01").split("\n")
    assert all(line.startswith("120000") for line in kinds if line)  # symlinks
    assert added.id in manifests(ds)
    gets = content_gets(sb)
    assert gets and all(f"/experiments/{added.id}/" in r.path for r in gets)
    # the repeated run made its own record (rerun adds a merge commit on top)
    records = [get_run_info(ds, git(ds, "log", "-1", "--format=%B", rev))[1]
               for rev in git(ds, "rev-list", "-3", "HEAD").split()]
    assert any(added.id in r.get("fmrif", {}).get("sessions", []) for r in records)


def test_rerun_record_holds_no_label(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb)
    download(ds, sb, csv, message="first pull")
    text = git(ds, "log", "-1", "--format=%B")
    assert text.startswith("[DATALAD RUNCMD] first pull")
    for s in subs:
        assert s.label not in text
    record = json.loads(text.split("=== Do not change lines below ===")[1]
                        .split("^^^ Do not change lines above ^^^")[0])
    # read from /xapi/siteConfig/buildInfo, as xnatpy reads it
    assert record["fmrif"]["xnat_version"] == "1.8.10"


def test_fmrif_status_reports_changed_deleted_and_new(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv, no_content=True)
    head = git(ds, "rev-parse", "HEAD")
    quiet = ds.fmrif_status(result_renderer="disabled", return_type="list")
    assert {r.get("state") for r in quiet if r["type"] == "session"} == {"clean"}

    session = sb.study.sessions(subs[0].id)[0]
    doc = manifests(ds)[session.id]
    scans = sorted({f["scan_id"] for f in doc["files"]}, key=int)
    changed = next(f for f in doc["files"] if f["scan_id"] == scans[0])
    sb.study.change_file(session.id, changed["scan_id"], changed["name"])
    sb.study.delete_scan(session.id, scans[-1])
    added = sb.study.add_session(subs[0].id)

    sb.clear_requests()
    res = ds.fmrif_status(result_renderer="disabled", return_type="list")
    states = {}
    for r in res:
        states.setdefault(r.get("state"), []).append(r)
    assert [r["path"] for r in states["modified"] if r["type"] == "file"] == [
        str(ds.pathobj / changed["path"])]
    deleted = {r["path"] for r in states["deleted"] if r["type"] == "file"}
    assert deleted == {str(ds.pathobj / f["path"]) for f in doc["files"]
                       if f["scan_id"] == scans[-1]}
    assert [r["xnat_session_id"] for r in states["untracked"]
            if r["type"] == "session"] == [added.id]
    # same budget as a download, nothing per file
    assert not content_gets(sb)
    assert git(ds, "rev-parse", "HEAD") == head
    assert git(ds, "status", "--porcelain") == ""


def test_rerun_manifest_diff_shows_exactly_the_server_change(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv)
    session = sb.study.sessions(subs[0].id)[0]
    doc = manifests(ds)[session.id]
    scan = sorted({f["scan_id"] for f in doc["files"]}, key=int)[-1]
    sb.study.delete_scan(session.id, scan)
    download(ds, sb, csv)
    diff = git(ds, "diff", "HEAD~1", "--", ".datalad/fmrif/sessions").splitlines()
    added = [line for line in diff if line.startswith("+") and not line.startswith("+++")]
    gone = {f["path"] for f in doc["files"] if f["scan_id"] == scan}
    assert added and all("missing_on_server" in line for line in added)
    assert len(added) == len(gone)


def test_status_with_nothing_downloaded(ds):
    res = dl.fmrif_status(dataset=ds.path, result_renderer="disabled",
                          return_type="list", on_failure="ignore")
    assert [r["status"] for r in res] == ["notneeded"]
    assert by_status(res)
