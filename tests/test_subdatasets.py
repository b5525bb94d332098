"""fmrif-download --subdatasets: one subdataset per subject, one commit of
the superdataset; real DataLad, git-annex, keyring and the sandbox XNAT."""

from __future__ import annotations

import subprocess

import datalad.api as dl

from helpers import (
    annexed_files,
    assert_fsck,
    by_status,
    content_gets,
    download,
    git,
    pseudonymous_list,
)


def _commits(ds) -> int:
    return int(git(ds, "rev-list", "--count", "HEAD"))


def _problems(res):
    return [r for r in res if r["status"] in ("error", "impossible")]


def test_subdatasets_download_rerun_clone(tmp_path, sb, ds):
    csv, subs = pseudonymous_list(tmp_path, sb, n=2)
    before = _commits(ds)
    res = download(ds, sb, csv, subdatasets=True)
    assert not _problems(res), _problems(res)

    # each subject is a registered subdataset with its files, manifests, remote
    subds = {r["path"] for r in ds.subdatasets(result_renderer="disabled",
                                               return_type="list")}
    assert subds == {str(ds.pathobj / "sub-P01"), str(ds.pathobj / "sub-P02")}
    for name in ("sub-P01", "sub-P02"):
        sub = dl.Dataset(ds.pathobj / name)
        files = annexed_files(sub)
        assert files and all(f.startswith("ses-") for f in files)
        assert list((sub.pathobj / ".datalad/fmrif/sessions").glob("*.json"))
        assert_fsck(sub)
        assert git(sub, "status", "--porcelain") == ""
    # the superdataset: no file of XNAT's, ONE commit naming the subjects
    assert _commits(ds) == before + 1
    assert git(ds, "status", "--porcelain") == ""
    msg = git(ds, "log", "-1", "--format=%B")
    assert "sub-P01" in msg and "sub-P02" in msg
    from datalad.local.rerun import get_run_info

    _, record = get_run_info(ds, msg)
    assert record["fmrif"]["subjects"] == ["P01", "P02"]
    # the list by what the dataset shows, never a plain hash of its labels
    assert "subject_list_sha256" not in record["fmrif"]
    assert record["fmrif"]["subjects_sha256"]
    assert "--subdatasets" in record["cmd"]
    # privacy: no label anywhere in the history of the super- or subdatasets
    for where in (ds, dl.Dataset(ds.pathobj / "sub-P01")):
        history = git(where, "log", "-p", "--all")
        for s in subs:
            assert s.label not in history

    # a second run changes nothing and makes no commit
    sb.clear_requests()
    again = download(ds, sb, csv, subdatasets=True)
    assert not _problems(again)
    assert not content_gets(sb)
    assert _commits(ds) == before + 1
    assert set(by_status(again, "session")) == {"notneeded"}

    # a clone gets one subject, through the fmrif remote of its subdataset
    clone = dl.clone(ds.path, tmp_path / "clone", result_renderer="disabled")
    clone.get("sub-P01", result_renderer="disabled")
    sub = dl.Dataset(clone.pathobj / "sub-P01")
    assert_fsck(sub)
    assert not dl.Dataset(clone.pathobj / "sub-P02").is_installed()
    # and everything with get -r, after dropping a file in the original
    first = annexed_files(dl.Dataset(ds.pathobj / "sub-P02"))[0]
    dl.Dataset(ds.pathobj / "sub-P02").drop(first, reckless="availability",
                                           result_renderer="disabled")
    sb.clear_requests()
    clone.get(".", recursive=True, result_renderer="disabled")
    assert_fsck(dl.Dataset(clone.pathobj / "sub-P02"))
    assert content_gets(sb)

    # fmrif-status looks into every subdataset
    status = dl.fmrif_status(dataset=ds.path, result_renderer="disabled",
                             return_type="list", on_failure="ignore")
    sessions = [r for r in status if r.get("type") == "session"]
    assert sessions and {r["state"] for r in sessions} == {"clean"}
    assert {r["path"].split("/")[-2] for r in sessions} == {"sub-P01", "sub-P02"}
    # ... and only into those under the paths given
    one = dl.fmrif_status(path=[str(ds.pathobj / "sub-P02")], dataset=ds.path,
                          result_renderer="disabled", return_type="list",
                          on_failure="ignore")
    assert {r["path"].split("/")[-2] for r in one if r.get("type") == "session"} \
        == {"sub-P02"}


def test_a_subject_that_fails_gets_no_subdataset(tmp_path, sb, ds):
    from helpers import PROJECT, main_subjects, subjects_csv

    (sub,) = main_subjects(sb, 1)
    csv = subjects_csv(tmp_path, [(PROJECT, sub.label, "P01"),
                                  (PROJECT, "NO-SUCH-SUBJECT", "P02")])
    res = download(ds, sb, csv, subdatasets=True)
    assert [r["type"] for r in _problems(res)] == ["subject"]
    subds = ds.subdatasets(result_renderer="disabled", return_type="list")
    assert [r["path"] for r in subds] == [str(ds.pathobj / "sub-P01")]
    assert not (ds.pathobj / "sub-P02").exists()
    assert git(ds, "status", "--porcelain") == ""


def test_each_project_is_listed_once_for_all_subjects(tmp_path, sb, ds):
    """Every subject's download plans against ONE listing of its project's
    subjects per run: listed again per subject, it would cost a request
    each and grow with the protocol (quadratic over thousands of subjects).
    A project XNAT does not have is listed once too, and still fails each
    of its subjects, with no subdataset for them."""
    from helpers import PROJECT, main_subjects, subjects_csv

    subs = main_subjects(sb, 3)
    rows = [(PROJECT, s.label, f"P{i:02d}") for i, s in enumerate(subs, 1)]
    rows += [("NO-SUCH-PROJECT", f"S{i}", f"X{i}") for i in (1, 2)]
    csv = subjects_csv(tmp_path, rows)
    sb.clear_requests()
    res = download(ds, sb, csv, subdatasets=True, no_content=True)
    assert [r["type"] for r in _problems(res)] == ["project", "project"]
    subds = ds.subdatasets(result_renderer="disabled", return_type="list")
    assert sorted(r["path"] for r in subds) == [
        str(ds.pathobj / f"sub-P{i:02d}") for i in (1, 2, 3)]

    def listings(project):
        return [r for r in sb.requests if r.method == "GET"
                and r.path == f"/data/projects/{project}/subjects"]

    assert len(listings(PROJECT)) == 1
    assert len(listings("NO-SUCH-PROJECT")) == 1

    # subdatasets filled but not registered (as a run killed before the
    # superdataset's commit leaves them) are registered by the next run
    git(ds, "reset", "-q", "--hard", "HEAD~1")
    assert "160000" not in git(ds, "ls-files", "--stage")
    again = download(ds, sb, csv, subdatasets=True, no_content=True)
    assert set(by_status(again, "session")) == {"notneeded"}
    assert git(ds, "ls-files", "--stage").count("160000 ") == 3
    assert git(ds, "status", "--porcelain") == ""


def test_subdatasets_no_content_and_layout_switch(tmp_path, sb, ds):
    csv, _ = pseudonymous_list(tmp_path, sb, n=1)
    res = download(ds, sb, csv, subdatasets=True, no_content=True)
    assert not _problems(res), _problems(res)
    sub = dl.Dataset(ds.pathobj / "sub-P01")
    assert annexed_files(sub)
    assert not git(sub, "annex", "find")  # registered, no content
    sub.get(".", result_renderer="disabled")
    assert_fsck(sub)

    # switching layouts is refused, either way
    res = download(ds, sb, csv)
    assert res[0]["status"] == "impossible"
    assert "--subdatasets" in res[0]["message"]
    single = dl.create(tmp_path / "single", result_renderer="disabled")
    assert not _problems(download(single, sb, csv))
    res = download(single, sb, csv, subdatasets=True)
    assert res[0]["status"] == "impossible"
    assert "mix both layouts" in res[0]["message"]
    # a template that does not start with the subject's folder
    res = download(ds, sb, csv, subdatasets=True, path="{session}/{file}")
    assert res[0]["status"] == "impossible"
    assert "sub-{subject}/" in res[0]["message"]
    subprocess.run(["git", "diff", "--exit-code"], cwd=ds.path, check=True)


def test_rerun_belongs_to_the_superdataset(tmp_path, sb, ds):
    """A subject's subdataset records the superdataset's command under the
    superdataset's ID, as ``datalad run`` does in the subdatasets it saves:
    ``datalad rerun`` in the subdataset refuses it (the command, paths and
    --subdatasets are the superdataset's) and runs nothing; in the
    superdataset (with --assume-ready outputs) it repeats the download of
    every subject, taking only what is new."""
    from datalad.local.rerun import get_run_info

    csv, subs = pseudonymous_list(tmp_path, sb, n=2)
    assert not _problems(download(ds, sb, csv, subdatasets=True))
    sub = dl.Dataset(ds.pathobj / "sub-P01")
    _, record = get_run_info(sub, git(sub, "log", "-1", "--format=%B"))
    assert record["dsid"] == ds.id != sub.id
    assert record["fmrif"]["superdataset"] == ds.id
    assert "--subdatasets" in record["cmd"]
    assert "run 'datalad rerun' there" in git(sub, "log", "-1", "--format=%B")

    head = git(sub, "rev-parse", "HEAD")
    sb.clear_requests()
    res = sub.rerun(result_renderer="disabled", return_type="list",
                    on_failure="ignore")
    assert [r["status"] for r in res] == ["notneeded", "impossible"], res
    assert "different dataset" in str(res[0]["message"])
    assert "could be re-executed" in str(res[1]["message"])
    assert not sb.requests  # nothing was run
    assert git(sub, "rev-parse", "HEAD") == head

    # in the superdataset: the download again, taking only what is new
    # (--assume-ready outputs: without it, rerun would first unlock, i.e.
    # copy, every file the commit brought into the subdatasets)
    added = sb.study.add_session(subs[0].id)
    res = ds.rerun(assume_ready="outputs", result_renderer="disabled",
                   return_type="list", on_failure="ignore")
    assert not _problems(res), _problems(res)
    gets = content_gets(sb)
    assert gets and all(f"/experiments/{added.id}/" in r.path for r in gets)
    assert git(ds, "status", "--porcelain", "--ignore-submodules=none") == ""
    assert (sub.pathobj / ".datalad/fmrif/sessions" / f"{added.id}.json").exists()


def test_a_subject_dataset_is_what_datalad_create_makes(tmp_path):
    """The subject's dataset is made without ``datalad create`` (its cost
    per subject dominated a protocol): it must be the same dataset, a
    DataLad dataset with its ID, git-annex initialised, the same files,
    attributes and commit, clean to ``datalad status``."""
    from datalad_fmrif.subdatasets import create_plainly

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert create_plainly(ours)
    dl.create(theirs, result_renderer="disabled")

    def shape(path):
        ds = dl.Dataset(path)
        config = dict(line.split("=", 1) for line in
                      git(ds, "config", "--local", "--list").splitlines())
        return {
            "tree": git(ds, "ls-tree", "-r", "HEAD", "--format=%(objectmode) %(path)"),
            "attributes": (ds.pathobj / ".gitattributes").read_text(),
            "datalad attributes": (ds.pathobj / ".datalad/.gitattributes").read_text(),
            "config keys": sorted(config),
            "annex version": config["annex.version"],
            "commits": git(ds, "log", "--format=%s", "HEAD"),
            "annex branch": git(ds, "ls-tree", "-r", "--name-only", "git-annex"),
            "checked attributes": git(ds, "check-attr", "-a", "--", "x.dcm",
                                      ".datalad/config", ".gitattributes"),
            "status": sorted(r["state"] for r in ds.status(result_renderer="disabled",
                                                           return_type="list")),
            "has id": bool(ds.id) and ds.id == ds.config.get("datalad.dataset.id"),
            "annex uuid": bool(config.get("annex.uuid")),
            "dirty": git(ds, "status", "--porcelain", "--ignored"),
        }

    assert shape(ours) == shape(theirs)
    assert dl.Dataset(ours).id != dl.Dataset(theirs).id
    # a file is annexed by DataLad's backend, as in a created dataset
    for path in (ours, theirs):
        (path / "a.dcm").write_bytes(b"DICM")
        dl.Dataset(path).save(result_renderer="disabled")
    assert git(dl.Dataset(ours), "annex", "find", "a.dcm").strip() == "a.dcm"
    assert (ours / "a.dcm").resolve().name == (theirs / "a.dcm").resolve().name
    # a directory that holds something is not made a dataset (datalad
    # create refuses it, and says why), and nothing of it is touched
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert not create_plainly(busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_a_subdataset_that_tracks_a_remote_is_left_to_datalad_save(tmp_path):
    """datalad save records the URL of the remote a subdataset's branch
    tracks; such a subdataset is not registered in bulk."""
    from datalad_fmrif.subdatasets import _registers_plainly, create_plainly

    assert create_plainly(tmp_path / "origin")
    dl.clone(str(tmp_path / "origin"), str(tmp_path / "clone"), result_renderer="disabled")
    assert not _registers_plainly(tmp_path / "clone")
    assert _registers_plainly(tmp_path / "origin")


def test_the_superdataset_commit_registers_as_datalad_save_does(tmp_path):
    """The superdataset's one commit registers its new subdatasets with git
    itself (``datalad save`` spends seconds per hundred of them): the same
    gitlinks, ``.gitmodules`` and ``.git/config`` sections as ``datalad
    save``, a clean dataset whose subdatasets DataLad knows by their IDs;
    a later commit of one that changed registers nothing twice."""
    import re

    from datalad_fmrif.subdatasets import create_plainly, save_superdataset

    from datalad_fmrif.subdatasets import _registers_plainly

    supers = {}
    for how in ("ours", "datalad"):
        ds = dl.create(tmp_path / how, result_renderer="disabled")
        for name in ("sub-A", "sub-B"):
            assert create_plainly(ds.pathobj / name)
            # a special remote, as every subject's fmrif remote: a
            # [remote "..."] section that tracks nothing
            store = tmp_path / f"store-{how}-{name}"
            store.mkdir()
            subprocess.run(["git", "annex", "initremote", "store", "type=directory",
                            f"directory={store}", "encryption=none"],
                           cwd=ds.pathobj / name, check=True, capture_output=True)
            assert _registers_plainly(ds.pathobj / name)
        if how == "ours":
            assert save_superdataset(ds, ["sub-A", "sub-B"], ["A", "B"], {}, "cmd",
                                     "register") is None
        else:
            ds.save(path=["sub-A", "sub-B"], message="register", result_renderer="disabled")
        supers[how] = ds

    def shape(ds):
        def ids_out(text):
            return re.sub(r"[0-9a-f-]{36}", "ID", text)

        subs = ds.subdatasets(result_renderer="disabled", return_type="list")
        return {
            "index": re.sub(r"[0-9a-f]{40}", "SHA", git(ds, "ls-files", "--stage")),
            "gitmodules": ids_out((ds.pathobj / ".gitmodules").read_text()),
            "config": git(ds, "config", "--local", "--get-regexp", "^submodule"),
            "status": git(ds, "status", "--porcelain"),
            "ids": sorted(r["gitmodule_datalad-id"] == dl.Dataset(r["path"]).id
                          for r in subs),
            "registered": [git(ds, "ls-files", "--stage", n).split()[1]
                           == git(dl.Dataset(ds.pathobj / n), "rev-parse", "HEAD").strip()
                           for n in ("sub-A", "sub-B")],
        }

    assert shape(supers["ours"]) == shape(supers["datalad"])
    ours = supers["ours"]
    assert git(ours, "log", "-1", "--format=%s").startswith("[DATALAD RUNCMD] register")
    # a subdataset that moved on: its new commit registered, nothing added twice
    sub = dl.Dataset(ours.pathobj / "sub-A")
    (sub.pathobj / "f.txt").write_text("x")
    sub.save(result_renderer="disabled")
    gitmodules = (ours.pathobj / ".gitmodules").read_text()
    assert save_superdataset(ours, ["sub-A"], ["A"], {}, "cmd", "again") is None
    assert (ours.pathobj / ".gitmodules").read_text() == gitmodules
    assert git(ours, "status", "--porcelain") == ""
    assert git(ours, "ls-files", "--stage", "sub-A").split()[1] \
        == git(sub, "rev-parse", "HEAD").strip()

