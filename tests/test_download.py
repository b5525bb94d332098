"""fmrif-download end to end: sandbox XNAT, real DataLad, git-annex, keyring."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datalad.api as dl

from datalad_fmrif.credentials import default_credential_name
from datalad_fmrif.report import plural, size_text
from datalad_fmrif.sandbox import Fault, StudySpec
from helpers import (
    PROJECT,
    ZIP_PATH,
    annexed_files,
    assert_fsck,
    by_status,
    content_gets,
    default_sigint,
    download,
    expected_files,
    file_gets,
    git,
    keyring_sandbox,
    main_subjects,
    manifests,
    pseudonymous_list,
    subjects_csv,
    zip_gets,
)


# -- the main story -----------------------------------------------------------------


def test_download_with_pseudonyms(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb)
    sb.clear_requests()
    res = download(ds, sb, csv)
    sessions = by_status(res, "session")
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    n_sessions = sum(len(sb.study.sessions(s.id)) for s in subs)
    assert len(sessions["ok"]) == n_sessions

    # every expected file is there, with content equal to XNAT's
    want = expected_files(sb, subs)
    docs = manifests(ds)
    got = {(m["session"]["id"], f["scan_id"], f["name"]): f["path"]
           for m in docs.values() for f in m["files"]}
    assert set(got) == want
    for (eid, scan, name), path in got.items():
        content = (ds.pathobj / path).read_bytes()
        assert hashlib.md5(content).hexdigest() == sb.study.file(eid, scan, name).true_md5
    assert annexed_files(ds) == sorted(got.values())
    assert all(p.startswith(("sub-P01/ses-", "sub-P02/ses-")) for p in got.values())
    assert not any("REQUISITION" in p or "SAVE" in p for p in got.values())

    # sessions are numbered in acquisition order
    first = sb.study.sessions(subs[0].id)
    names = {m["session"]["id"]: m["session"]["name"] for m in docs.values()}
    assert [names[e.id] for e in first] == [f"{i:02d}" for i in range(1, len(first) + 1)]

    # clean, committed, with a run record that DataLad can parse
    assert git(ds, "status", "--porcelain") == ""
    from datalad.local.rerun import get_run_info

    msg = git(ds, "log", "-1", "--format=%B")
    _, record = get_run_info(ds, msg)
    assert record["fmrif"]["server"] == sb.url
    assert record["fmrif"]["counts"]["new"] == len(want)
    # identifies the list by what the dataset shows (pseudonyms), never by
    # a plain hash of the labels in it
    assert "subject_list_sha256" not in record["fmrif"]
    shown = sorted(f"{PROJECT}\tP{i:02d}\t0" for i in range(1, len(subs) + 1))
    assert record["fmrif"]["subjects_sha256"] == hashlib.sha256(
        "\n".join(shown).encode()).hexdigest()
    assert hashlib.sha256(csv.read_bytes()).hexdigest() not in msg
    assert "fmrif-download" in record["cmd"]

    # the requests: a bounded number of listings, nothing per file but content
    catalog = [r for r in sb.requests
               if r.path.startswith(("/data/projects", "/data/experiments"))
               and r not in content_gets(sb)]
    # one subject listing for the project, one per subject, two per session
    assert len(catalog) == 1 + len(subs) + 2 * n_sessions
    logins = [r for r in sb.requests if r.path == "/data/services/auth"]
    assert 1 <= len(logins) <= 1 + 4  # this process + at most -J remote processes
    assert not [r for r in sb.requests if r.method == "HEAD"]
    # content: one zip per scan (each holds many files), none one by one
    assert file_gets(sb) == []
    zips = sorted(r.path for r in zip_gets(sb))
    assert len(zips) == len(set(zips)) == len({os.path.dirname(p) for p in got.values()})

    # whereis shows the XNAT URL; metadata finds files by scan type
    some = sorted(got.values())[0]
    assert sb.url + "/data/experiments/" in git(ds, "annex", "whereis", some)
    found = git(ds, "annex", "find", "--metadata", "xnat_scan_type=T1w_MPRAGE")
    assert found and all("T1w_MPRAGE" in line for line in found.splitlines())


def test_a_session_is_reported_when_its_content_is_in(tmp_path, sb, ds):
    """A session's result comes as soon as its content is in the annex,
    while another session's zips are still on their way (issue 20): the
    slow zips of the last session have not been answered when the first
    session's result arrives, and all of them have by the last one's."""
    import re

    from datalad_fmrif.sandbox import Fault

    csv, subs = pseudonymous_list(tmp_path, sb)
    last = sb.study.sessions(subs[-1].id)[-1].id
    slow = rf"/experiments/{re.escape(last)}/.*/resources/[^/]+/files$"
    sb.add_fault(Fault("slow", path=slow, delay=3.0, times=None))

    def slow_zips_answered() -> int:
        return sum(1 for r in zip_gets(sb) if re.search(slow, r.path))

    seen = []  # (session ID, how many slow zips XNAT had answered by then)
    for r in dl.fmrif_download(
            str(csv), dataset=ds.path, server=sb.url, result_renderer="disabled",
            on_failure="ignore", return_type="generator"):
        assert r["status"] not in ("error", "impossible"), r
        if r.get("type") == "session" and r.get("xnat_session_id"):
            seen.append((r["xnat_session_id"], slow_zips_answered()))
    n_sessions = sum(len(sb.study.sessions(s.id)) for s in subs)
    assert len(seen) == n_sessions
    assert seen[0][0] != last and seen[0][1] == 0, seen
    assert seen[-1][0] == last and seen[-1][1] > 0, seen
    assert_fsck(ds)


def test_no_label_enters_the_dataset_under_pseudonyms(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb)
    download(ds, sb, csv)
    secrets = {s.label for s in subs}
    for s in subs:
        for e in sb.study.sessions(s.id):
            secrets |= {e.label, e.date}
    history = git(ds, "log", "-p", "--all", "--format=%B%n%H")
    annex_branch = git(ds, "log", "-p", "git-annex")
    tree = "\n".join(str(p) for p in ds.pathobj.rglob("*") if ".git" not in p.parts)
    for text in (history, annex_branch, tree):
        for secret in secrets:
            assert secret not in text


def test_rerun_fetches_nothing_and_new_session_is_picked_up(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb)
    download(ds, sb, csv)
    before = manifests(ds)
    head = git(ds, "rev-parse", "HEAD")

    sb.clear_requests()
    res = download(ds, sb, csv)
    assert {r["status"] for r in res if r.get("type") == "session"} == {"notneeded"}
    assert content_gets(sb) == []
    assert git(ds, "rev-parse", "HEAD") == head  # nothing new: no commit

    added = sb.study.add_session(subs[0].id)
    sb.clear_requests()
    res = download(ds, sb, csv)
    ok = by_status(res, "session")["ok"]
    assert [r["xnat_session_id"] for r in ok] == [added.id]
    after = manifests(ds)
    for sid, doc in before.items():  # earlier names never change
        assert after[sid]["session"]["name"] == doc["session"]["name"]
        assert after[sid] == doc
    n = len(sb.study.sessions(subs[0].id))
    assert after[added.id]["session"]["name"] == f"{n:02d}"
    # only the new session's content, one zip per scan
    new_files = [f for f in after[added.id]["files"]]
    assert len(new_files) == len(expected_files(sb, subs)) - sum(
        len(d["files"]) for d in before.values())
    assert file_gets(sb) == []
    assert len(zip_gets(sb)) == len({os.path.dirname(f["path"]) for f in new_files})
    assert all(f"/experiments/{added.id}/" in r.path for r in zip_gets(sb))


def test_a_dropped_session_comes_back_by_zip_and_is_reported(tmp_path, sb, ds):
    """A re-run restores dropped content (one zip per scan, as a first
    download) and says so, instead of "nothing new"."""
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv)
    first = manifests(ds)
    sid, doc = sorted(first.items())[0]
    session_dir = os.path.dirname(os.path.dirname(doc["files"][0]["path"]))
    ds.drop(session_dir, result_renderer="disabled")
    head = git(ds, "rev-parse", "HEAD")

    sb.clear_requests()
    res = download(ds, sb, csv)
    mine = [r for r in res if r.get("type") == "session" and r["xnat_session_id"] == sid]
    assert [r["status"] for r in mine] == ["ok"]
    n = len(doc["files"])
    assert mine[0]["files_refetched"] == n and mine[0]["files_new"] == 0
    assert f"{n} already present ({n} of them fetched again" in mine[0]["message"]
    others = [r for r in res if r.get("type") == "session" and r["xnat_session_id"] != sid]
    assert all(r["status"] == "notneeded" and r["files_refetched"] == 0 for r in others)
    assert file_gets(sb) == []
    assert len(zip_gets(sb)) == len({os.path.dirname(f["path"]) for f in doc["files"]})
    assert_fsck(ds)
    assert git(ds, "rev-parse", "HEAD") == head  # content only: nothing to commit


def test_changed_digest_is_reported_not_replaced(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv)
    session = sb.study.sessions(subs[0].id)[0]
    doc = manifests(ds)[session.id]
    entry = next(f for f in doc["files"] if f["scan_id"])
    key_before = os.readlink(ds.pathobj / entry["path"])
    changed = sb.study.change_file(session.id, entry["scan_id"], entry["name"])

    res = download(ds, sb, csv)
    bad = [r for r in res if r["status"] == "impossible"]
    assert len(bad) == 1 and bad[0]["path"].endswith(entry["path"])
    assert "changed on XNAT" in bad[0]["message"]
    assert os.readlink(ds.pathobj / entry["path"]) == key_before
    new_doc = manifests(ds)[session.id]
    new_entry = next(f for f in new_doc["files"] if f["path"] == entry["path"])
    assert new_entry["md5"] == entry["md5"]
    assert new_entry["server_md5"] == changed.md5


def test_no_content_then_get_and_drop(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    sb.clear_requests()
    res = download(ds, sb, csv, no_content=True)
    assert by_status(res, "session").keys() == {"ok"}
    # says what it did: nothing was downloaded
    assert all(": registered " in r["message"] for r in res if r["type"] == "session")
    assert content_gets(sb) == []
    files = annexed_files(ds)
    assert files
    assert git(ds, "annex", "find", "--in", "here") == ""
    got = ds.get(files[0], result_renderer="disabled", return_type="list")
    assert got[0]["status"] == "ok"
    assert (ds.pathobj / files[0]).read_bytes()
    dropped = ds.drop(files[0], result_renderer="disabled", return_type="list")
    assert dropped[0]["status"] == "ok"
    # a default run afterwards fetches all missing content
    download(ds, sb, csv)
    assert sorted(git(ds, "annex", "find", "--in", "here").split()) == files


def test_content_a_killed_run_moved_in_is_recorded_by_the_next(tmp_path, sb, ds):
    """A run killed after verified content went into the annex and before it
    recorded that: the next run records it (git annex fsck finds nothing)."""
    from datalad_fmrif.annex import Annex

    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv, no_content=True)
    entries = [(f["path"], m["session"]["id"], f["scan_id"], f["name"])
               for m in manifests(ds).values() for f in m["files"]][:3]
    annex = Annex(ds.path)
    keys = annex.lookupkey([path for path, *_ in entries])
    ingest = annex.ingest(keys)
    for (path, eid, scan, name), key in zip(entries, keys):
        data = sb.study.file(eid, scan, name).content()
        (tmp_path / key).write_bytes(data)
        ingest.add(key, tmp_path / key, size=len(data), md5=hashlib.md5(data).hexdigest())
    # killed here: no ingest.close(), so the location log does not know
    where = json.loads(git(ds, "annex", "whereis", "--json", "--key", keys[0]))
    assert annex.uuid() not in [w["uuid"] for w in where["whereis"]]

    res = download(ds, sb, csv)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    where = json.loads(git(ds, "annex", "whereis", "--json", "--key", keys[0]))
    assert annex.uuid() in [w["uuid"] for w in where["whereis"]]
    assert_fsck(ds, "--json")
    assert sorted(git(ds, "annex", "find", "--in", "here").split()) == annexed_files(ds)
    assert git(ds, "for-each-ref", "refs/fmrif/") == ""


def test_clone_gets_with_env_credentials(tmp_path, sb, ds):
    csv, _ = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv, no_content=True)
    clone = tmp_path / "clone"
    dl.clone(ds.path, clone, result_renderer="disabled")
    user_var, secret_var = (f"DATALAD_CREDENTIAL_{default_credential_name(sb.url).upper().replace('-', '__')}_{k}"
                            for k in ("USER", "SECRET"))
    env = dict(os.environ, **{user_var: sb.user, secret_var: sb.password},
               PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    target = annexed_files(ds)[:3]
    proc = subprocess.run(["datalad", "get", *target], cwd=clone, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path in target:
        key = os.path.basename(os.readlink(clone / path))
        md5 = key.split("--")[1].split(".")[0]
        assert hashlib.md5((clone / path).read_bytes()).hexdigest() == md5


def test_clone_gets_with_keyring_credential(tmp_path, sb, ds):
    csv, _ = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv, no_content=True)
    clone = dl.clone(ds.path, tmp_path / "clone", result_renderer="disabled")
    target = annexed_files(ds)[0]
    res = clone.get(target, result_renderer="disabled", return_type="list")
    assert res[0]["status"] == "ok"
    assert (clone.pathobj / target).stat().st_size > 0


# -- choices and filters ---------------------------------------------------------------


def test_labels_need_consent_and_nothing_happens(tmp_path, sb, ds):
    subs = main_subjects(sb)
    csv = subjects_csv(tmp_path, [(PROJECT, s.label) for s in subs],
                       header=("Project", "Subject"))
    head = git(ds, "rev-parse", "HEAD")
    sb.clear_requests()
    res = download(ds, sb, csv)
    assert [r["status"] for r in res] == ["impossible"]
    assert "--keep-labels" in res[0]["message"]
    assert sb.requests == []
    assert git(ds, "rev-parse", "HEAD") == head


def test_keep_labels_uses_sanitised_labels(tmp_path, sb, ds):
    jane = next(s for s in sb.study.subjects(PROJECT) if s.label == "DOE^JANE")
    csv = subjects_csv(tmp_path, [(jane.label,)], header=("Subject",))
    res = download(ds, sb, csv, project=PROJECT, keep_labels=True)
    assert "ok" in by_status(res, "session")
    session = sb.study.sessions(jane.id)[0]
    assert (ds.pathobj / "sub-DOEJANE").is_dir()
    doc = manifests(ds)[session.id]
    assert doc["subject"]["label"] == "DOE^JANE"
    assert doc["session"]["label"] == session.label


def test_missing_subject_and_forbidden_project_among_good_ones(tmp_path, sb, ds):
    good = main_subjects(sb, 1)[0]
    other = sb.study.subjects("01-M-0192")[0]
    csv = subjects_csv(tmp_path, [
        (PROJECT, good.label, "P01"),
        (PROJECT, "49999999", "P02"),
        ("01-M-0192", other.label, "P03"),
        ("99-M-9999", "40000001", "P04"),
        ("99-M-9999", "40000002", "P05"),
    ])
    res = download(ds, sb, csv)
    impossible = by_status(res)["impossible"]
    assert len(impossible) == 3
    # a project that does not exist: one line for it, not one per subject
    assert [r["message"] for r in impossible if "99-M-9999" in r["message"]] == [
        f"2 subjects (lines 5, 6 of the list): there is no project 99-M-9999 on {sb.url}"]
    assert any("line 3" in r["message"] and "not a subject" in r["message"]
               for r in impossible)
    assert any("line 4" in r["message"] and "may not read" in r["message"]
               for r in impossible)
    assert not any("49999999" in r["message"] or other.label in r["message"]
                   for r in res)
    assert by_status(res, "session")["ok"]


def test_cli_exit_status_and_bad_list(tmp_path, sb, ds):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x00\x01binary\x00")
    sb.clear_requests()
    proc = subprocess.run(
        ["datalad", "fmrif-download", "-d", ds.path, "--server", sb.url,
         "--keep-labels", "--project", PROJECT, str(bad)],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert "text file" in proc.stdout + proc.stderr
    assert sb.requests == []


def test_dry_run_changes_nothing(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    head = git(ds, "rev-parse", "HEAD")
    sb.clear_requests()
    res = download(ds, sb, csv, dry_run=True)
    ok = by_status(res, "session")["ok"]
    assert sum(r["files_new"] for r in ok) == len(expected_files(sb, subs))
    assert all("would download" in r["message"] for r in ok)
    assert content_gets(sb) == []
    assert git(ds, "rev-parse", "HEAD") == head
    assert git(ds, "status", "--porcelain") == ""


def test_cli_dry_run_shows_bytes_and_names_excluded_series(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    proc = subprocess.run(
        ["datalad", "fmrif-download", "-d", ds.path, "--server", sb.url,
         "--dry-run", str(csv)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sessions = sb.study.sessions(subs[0].id)
    want = expected_files(sb, subs)
    size = sum(f.size for e in sessions for f in sb.study.files(e.id)
               if (e.id, f.scan_id, f.name) in want)
    assert (f"Dry run, nothing changed. {plural(len(sessions), 'session')}: "
            f"{plural(len(want), 'new file')} ({size_text(size)}) to download"
            in proc.stdout)
    for e in sessions:
        line = next(line for line in proc.stdout.splitlines() if e.id in line)
        assert "would download" in line and "B), 0 already present" in line
        for scan in sb.study.scans(e.id):
            if scan.type in ("REQUISITION", "SCREEN-SAVE", "SAVE"):
                assert f"(series {scan.series_description or scan.type}" in line


def test_sessions_without_a_match_are_named_by_their_folder(tmp_path, sb, ds):
    """Dry run, download and fmrif-status name a session the series filter
    leaves empty by its folder, never by where the manifests are."""
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    n = len(sb.study.sessions(subs[0].id))
    want = [str(ds.pathobj / f"sub-P01/ses-{i:02d}") for i in range(1, n + 1)]

    def folders(res):
        return sorted(r["path"] for r in res if r["type"] == "session")

    planned = download(ds, sb, csv, include_series="no-such-series", dry_run=True)
    assert folders(planned) == want
    assert by_status(planned, "session").keys() == {"notneeded"}
    done = download(ds, sb, csv, include_series="no-such-series", no_content=True)
    assert folders(done) == want
    checked = ds.fmrif_status(result_renderer="disabled", return_type="list")
    assert folders(checked) == want

    # on the command line it reads like datalad status: the state first,
    # nothing for sessions as recorded, exit 0 (news, not a failure)
    added = sb.study.add_session(subs[0].id)
    proc = subprocess.run(["datalad", "fmrif-status"], cwd=ds.path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"untracked: sub-P01/ses-{n + 1:02d} (session) [session {added.id} is on "
        "XNAT, not in the dataset; fmrif-download takes it]",
        f"{n + 1} sessions checked against XNAT: {n} as recorded, 1 untracked"]


def test_outside_a_dataset_the_hint_says_how_to_make_one(tmp_path):
    for command in (["fmrif-download", "--keep-labels", "list.txt"], ["fmrif-status"]):
        proc = subprocess.run(["datalad", *command], cwd=tmp_path,
                              capture_output=True, text=True)
        assert proc.returncode == 1
        assert "datalad create study" in proc.stdout and "-d PATH" in proc.stdout
        assert "NoDatasetFound" not in proc.stdout + proc.stderr


def test_supplementary_and_series_filters(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv, resource=["DICOM", "supplementary"],
             include_series="T1w|rsfMRI")
    paths = [f["path"] for m in manifests(ds).values() for f in m["files"]]
    assert any(p.endswith(".1D") for p in paths)
    dicoms = [p for p in paths if p.endswith(".dcm")]
    assert dicoms and all("T1w" in p or "rsfMRI" in p for p in dicoms)


def test_collision_is_an_error_before_writing(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    first, *others = sb.study.sessions(subs[0].id)
    scans = [s for s in sb.study.scans(first.id) if s.type == "rsfMRI (AP) 2.5mm"]
    a, b = (sb.study.scan_files(first.id, s.id)[0] for s in scans[:2])
    sb.study.rename_file(first.id, b.scan_id, b.name, a.name)
    head = git(ds, "rev-parse", "HEAD")
    # both scans have the same series description: one folder, one name
    res = download(ds, sb, csv, path="sub-{subject}/ses-{session}/{series_description}/{file}")
    bad = [r for r in res if r.get("xnat_session_id") == first.id]
    assert [r["status"] for r in bad] == ["error"]
    assert "planned to" in bad[0]["message"]
    assert not (ds.pathobj / "sub-P01" / "ses-01").exists()
    # the other sessions of the subject went on
    done = by_status(res, "session").get("ok", [])
    assert sorted(r["xnat_session_id"] for r in done) == sorted(s.id for s in others)
    assert git(ds, "rev-parse", "HEAD") != head or not others


def test_digest_mismatch_is_caught_and_nothing_bad_committed(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    session = sb.study.sessions(subs[0].id)[0]
    victim = next(f for f in sb.study.files(session.id)
                  if f.scan_id and sb.study.scan(session.id, f.scan_id).type == "T1w_MPRAGE")
    sb.study.set_digest(session.id, victim.scan_id, victim.name, "0" * 32)
    res = download(ds, sb, csv)
    errors = [r for r in res if r["status"] == "error" and r.get("type") == "file"]
    assert len(errors) == 1
    # each file counted once: the failed one is not also new
    counts = next(r for r in res if r.get("xnat_session_id") == session.id
                  and r.get("type") == "session")
    assert counts["files_failed"] == 1
    assert counts["files_new"] == len([f for f in expected_files(sb, subs)
                                       if f[0] == session.id]) - 1
    assert f"{counts['files_new']} new" in counts["message"]
    assert "1 failed" in counts["message"]
    path = errors[0]["path"]
    assert not os.path.lexists(path)  # not added: its content never verified
    assert victim.name not in json.dumps(manifests(ds))
    assert len(annexed_files(ds)) == len(expected_files(sb, subs)) - 1
    assert_fsck(ds, "--fast")
    assert git(ds, "status", "--porcelain") == ""


def test_interrupted_run_is_repaired(tmp_path, secret_service, state_dir):
    spec = StudySpec(seed=2, subjects=2, files_per_scan=8, file_size=4096)
    # slow streams: each zip takes over a second, so there is a run to kill
    # while zips stream and verified files go into the annex
    with keyring_sandbox(spec, latency=0.01, bandwidth=20_000) as sb:
        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        csv, subs = pseudonymous_list(tmp_path, sb, n=2)
        datalad = str(Path(sys.executable).with_name("datalad"))
        argv = [datalad, "fmrif-download", "-d", ds.path,
                "--server", sb.url, "-J", "2", str(csv)]
        for sig in (signal.SIGINT, signal.SIGKILL):
            sb.clear_requests()
            # XNAT keeps one zip unanswered while the other job's zips
            # stream and their files go into the annex: the signal lands
            # mid-content, however loaded the machine (the sandbox logs a
            # request only when it is answered, too late to time a kill)
            held = sb.add_fault(Fault("hold", path=ZIP_PATH))
            log = tmp_path / f"run-{sig.name}.log"
            with open(log, "wb") as err:
                proc = subprocess.Popen(argv, stdout=err, stderr=err,
                                        start_new_session=True, preexec_fn=default_sigint)
                try:
                    assert held.wait_held(120), "no zip was asked for: " + (
                        log.read_text()[-2000:])
                    assert proc.poll() is None
                    os.killpg(proc.pid, sig)
                finally:
                    # answered now: a request XNAT never answers would keep
                    # an interrupted run waiting for its read timeout
                    sb.clear_faults()
                assert proc.wait(timeout=60) != 0, log.read_text()[-2000:]
        sb.bandwidth = None
        res = download(ds, sb, csv)
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        want = expected_files(sb, subs)
        assert len(annexed_files(ds)) == len(want)
        assert sorted(git(ds, "annex", "find", "--in", "here").split()) == annexed_files(ds)
        assert_fsck(ds)
        assert git(ds, "status", "--porcelain") == ""
        # the killed runs' temporary files are gone
        tmp = ds.pathobj / ".git" / "fmrif" / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []


def test_pseudonym_file_session_column_and_stdin(tmp_path, sb, ds):
    subs = main_subjects(sb, 2)
    sessions = sb.study.sessions(subs[0].id)
    wanted = sessions[-1]
    mapping = tmp_path / "pseudonyms.csv"
    mapping.write_text("Subject,Pseudonym\n" + "".join(
        f"{s.label},S{i}\n" for i, s in enumerate(subs, 1)))
    listing = f"Subject;Session\r\n{subs[0].label};{wanted.label}\r\n{subs[1].label};\r\n"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("datalad")), "-f", "json",
         "fmrif-download", "-d", ds.path, "--server", sb.url, "--project", PROJECT,
         "--pseudonyms", str(mapping), "-"],
        input=listing.encode(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    docs = manifests(ds)
    # only the named session of the first subject, all of the second
    firsts = [m for m in docs.values() if m["subject"]["id"] == subs[0].id]
    assert [m["session"]["id"] for m in firsts] == [wanted.id]
    # its name is its number in acquisition order among ALL the subject's sessions
    assert firsts[0]["session"]["name"] == f"{len(sessions):02d}"
    seconds = {m["session"]["id"] for m in docs.values() if m["subject"]["id"] == subs[1].id}
    assert seconds == {s.id for s in sb.study.sessions(subs[1].id)}
    assert {m["subject"]["name"] for m in docs.values()} == {"S1", "S2"}
    records = [json.loads(line) for line in proc.stdout.decode().splitlines() if line]
    assert {r["status"] for r in records} == {"ok"}


def test_download_into_an_adjusted_branch(tmp_path, sb, ds):
    """A dataset on an adjusted branch (unlocked files, as on a crippled file
    system): git-annex's own commands instead of the direct ways, and
    DataLad's save, which carries the commits over to the branch itself."""
    git(ds, "annex", "adjust", "--unlock")
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    res = download(ds, sb, csv)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    want = expected_files(sb, subs)
    docs = manifests(ds)
    paths = sorted(f["path"] for m in docs.values() for f in m["files"])
    assert len(paths) == len(want)
    assert not (ds.pathobj / paths[0]).is_symlink()  # unlocked
    for m in docs.values():
        f = m["files"][0]
        data = (ds.pathobj / f["path"]).read_bytes()
        assert hashlib.md5(data).hexdigest() == f["md5"]
    assert set(paths) <= set(git(ds, "ls-tree", "-r", "--name-only", "main").split())
    assert_fsck(ds, "--json")


def test_counts_and_files_that_leave_xnat_or_the_dataset(tmp_path, sb, ds):
    """Files XNAT stops listing are reported on every run (and by
    fmrif-status) until they come back or the user removes them; a file
    the user removed is reported once and never fetched again; counts
    count every file once."""
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv)
    session = sb.study.sessions(subs[0].id)[0]
    entries = [f for f in manifests(ds)[session.id]["files"] if f["scan_id"]]
    gone, kept = entries[0], entries[1]
    sb.study.rename_file(session.id, gone["scan_id"], gone["name"], "renamed.dcm")

    def session_result(res):
        return next(r for r in res if r.get("type") == "session"
                    and r.get("xnat_session_id") == session.id)

    for _ in range(2):  # on every run
        res = download(ds, sb, csv)
        assert not [r for r in res if r["status"] in ("error", "impossible")], res
        said = [r for r in res if r.get("state") == "deleted"]
        assert [r["path"] for r in said] == [str(ds.pathobj / gone["path"])]
        assert "no longer listed by XNAT" in said[0]["message"]
        counts = session_result(res)
        assert counts["files_missing_on_server"] == 1
    assert counts["files_new"] == 0
    status = dl.fmrif_status(dataset=ds.path, result_renderer="disabled",
                             return_type="list", on_failure="ignore")
    assert [r["path"] for r in status if r.get("state") == "deleted"] == \
        [str(ds.pathobj / gone["path"])]

    # back on XNAT: no longer reported, the mark is gone, nothing untracked
    sb.study.rename_file(session.id, gone["scan_id"], "renamed.dcm", gone["name"])
    res = download(ds, sb, csv)
    assert not [r for r in res if r.get("path", "").endswith(gone["path"])
                and r.get("type") == "file"]
    entry = next(f for f in manifests(ds)[session.id]["files"]
                 if f["path"] == gone["path"])
    assert "missing_on_server" not in entry
    status = dl.fmrif_status(dataset=ds.path, result_renderer="disabled",
                             return_type="list", on_failure="ignore")
    assert not [r for r in status if r.get("path", "").endswith(gone["path"])]
    # the renamed copy left XNAT in turn; the user lets it go
    renamed = next(f["path"] for f in manifests(ds)[session.id]["files"]
                   if f["name"] == "renamed.dcm")

    # removed by the user: reported once, not a failure, not present
    git(ds, "rm", "-q", kept["path"], renamed)
    git(ds, "commit", "-q", "-m", "not wanted")
    sb.clear_requests()
    res = download(ds, sb, csv)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    removed = [r for r in res if r.get("state") == "removed"]
    assert [r["path"] for r in removed] == [str(ds.pathobj / kept["path"])]
    counts = session_result(res)
    assert counts["files_removed"] == 1 and counts["files_missing_on_server"] == 0
    assert counts["files_present"] == len(entries) - 1
    assert not os.path.lexists(ds.pathobj / kept["path"])
    assert content_gets(sb) == []
    res = download(ds, sb, csv)
    assert not [r for r in res if r.get("state") in ("removed", "deleted")], res
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    assert git(ds, "status", "--porcelain") == ""


def test_same_name_in_two_resources_of_a_scan_fails_only_that_file(tmp_path, sb, ds):
    """XNAT lists a second DICOM resource of a scan with a file of the same
    name: that path is an error naming both resources; the rest of the
    session, and the other sessions, are downloaded."""
    import re

    from datalad_fmrif.sandbox import Fault

    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    session = sb.study.sessions(subs[0].id)[0]
    types = {sc.id: sc.type for sc in sb.study.scans(session.id)}
    victim = next(f for f in sb.study.files(session.id)
                  if f.scan_id and types[f.scan_id] == "T1w_MPRAGE")

    def with_a_second_resource(body: bytes) -> bytes:
        doc = json.loads(body)
        rows = doc["ResultSet"]["Result"]
        row = next(r for r in rows if r["Name"] == victim.name
                   and f"/scans/{victim.scan_id}/" in r["URI"])
        rows.append(dict(row, cat_ID="999999", URI=row["URI"].replace(
            f"/resources/{victim.resource_id}/", "/resources/999999/")))
        doc["ResultSet"]["totalRecords"] = str(len(rows))
        return json.dumps(doc).encode()

    sb.add_fault(Fault("body", path=re.escape(
        f"/data/experiments/{session.id}/scans/ALL/files") + "$",
        body=with_a_second_resource, times=None))
    res = download(ds, sb, csv)
    errors = [r for r in res if r["status"] in ("error", "impossible")]
    assert [r["type"] for r in errors] == ["file", "session"], errors
    assert f"(ID {victim.resource_id})" in errors[0]["message"]
    assert "(ID 999999)" in errors[0]["message"]
    assert not os.path.lexists(errors[0]["path"])
    assert len(annexed_files(ds)) == len(expected_files(sb, subs)) - 1
    assert git(ds, "status", "--porcelain") == ""


def test_identifier_files_inside_the_dataset_are_refused_unless_ignored(tmp_path, sb, ds):
    """A subject list, a pseudonym file or fmrif-list output inside the
    dataset would be committed by the next 'datalad save': refused before
    any request, unless git ignores the file."""
    csv, subs = pseudonymous_list(tmp_path, sb, n=1)
    inside = ds.pathobj / "processing_data.csv"
    inside.write_bytes(csv.read_bytes())
    head = git(ds, "rev-parse", "HEAD")
    sb.clear_requests()
    res = download(ds, sb, inside)
    assert [r["status"] for r in res] == ["impossible"], res
    assert "git does not ignore it" in res[0]["message"]
    mapping = ds.pathobj / "pseudonyms.csv"
    mapping.write_text(f"{subs[0].label},P01\n")
    plain = tmp_path / "labels.txt"
    plain.write_text(f"{subs[0].label}\n")
    res = download(ds, sb, plain, project=PROJECT, pseudonyms=str(mapping))
    assert [r["status"] for r in res] == ["impossible"], res
    assert "the pseudonym file" in res[0]["message"]
    listed = dl.fmrif_list(PROJECT, server=sb.url, output=str(ds.pathobj / "list.csv"),
                           result_renderer="disabled", on_failure="ignore",
                           return_type="list")
    assert [r["status"] for r in listed] == ["impossible"], listed
    assert not (ds.pathobj / "list.csv").exists()
    assert sb.requests == []  # refused before anything reached XNAT
    assert git(ds, "rev-parse", "HEAD") == head

    # ignored by git: taken
    (ds.pathobj / ".git" / "info" / "exclude").write_text("*.csv\n")
    res = download(ds, sb, inside)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    assert "processing_data.csv" not in git(ds, "ls-files")


def test_a_remote_whose_set_up_was_interrupted_is_set_up_again(ds):
    """Ctrl-C during 'git annex initremote' can leave the remote in git
    config but not in git-annex's remote.log; the next set-up makes it
    properly under the same name, not a second remote beside it."""
    from datalad_fmrif.annex import Annex
    from datalad_fmrif.remote_setup import ensure_remote, fmrif_remotes

    git(ds, "config", "remote.fmrif.annex-externaltype", "fmrif")
    git(ds, "config", "remote.fmrif.annex-uuid", "5f1c2b4e-0000-4000-8000-000000000000")
    assert fmrif_remotes(ds.path) == {}
    name = ensure_remote(Annex(ds.path), "https://xnat.example.invalid")
    assert name == "fmrif"
    assert fmrif_remotes(ds.path) == {"https://xnat.example.invalid": "fmrif"}
    kinds = git(ds, "config", "--get-regexp", r"^remote\..*\.annex-externaltype$")
    assert kinds.split() == ["remote.fmrif.annex-externaltype", "fmrif"]
    assert git(ds, "config", "remote.fmrif.annex-uuid").strip() != \
        "5f1c2b4e-0000-4000-8000-000000000000"


def test_a_file_under_an_earlier_key_of_its_content_is_present(tmp_path, sb, ds):
    """A path that holds the same content under another key (one an earlier
    version made: its MD5E extension rule differed for rare names) is the
    file, not a different one: keys are compared by what they promise."""
    csv, _subs = pseudonymous_list(tmp_path, sb, n=1)
    download(ds, sb, csv)
    path = annexed_files(ds)[0]
    key = git(ds, "annex", "lookupkey", path).strip()
    other = "MD5-" + key[len("MD5E-"):].split(".", 1)[0]  # same size and MD5
    copy = tmp_path / "content"
    copy.write_bytes((ds.pathobj / path).read_bytes())
    # the file now points at the other key, and no manifest names it
    git(ds, "rm", "-q", "-r", path, ".datalad/fmrif/sessions")
    git(ds, "annex", "fromkey", "--force", other, path)
    git(ds, "annex", "reinject", str(copy), path)
    git(ds, "commit", "-q", "-m", "the file under an earlier key")
    res = download(ds, sb, csv)
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    assert git(ds, "annex", "lookupkey", path).strip() == other
    assert_fsck(ds)
