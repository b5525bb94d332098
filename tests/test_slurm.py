"""fmrif-download --slurm and fmrif-finish on a real one-node Slurm cluster.

The sandbox XNAT, real DataLad and git-annex, the real Secret Service on the
"login node" (this process), and Slurm's slurmctld/slurmd/munged running the
tasks as they would on Biowulf. A whole protocol of 20 subjects in tasks of
3, at most 2 at once; one task is killed mid-way (scancel: the sandbox holds
its second subject's files until then) and resubmitted.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import datalad.api as dl
import pytest

from datalad_fmrif.sandbox import Fault, StudySpec
from datalad_fmrif.slurm import array_spec, job_script, split_tasks, swarm_file
from datalad_fmrif.subdatasets import has_sessions
from helpers import PROJECT, assert_fsck, git, keyring_sandbox, subjects_csv


def test_tasks_and_array_spec():
    assert split_tasks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert array_spec([0, 1, 2, 3], 4) == "0-3%4"
    assert array_spec([1, 4], 2) == "1,4%2"
    assert array_spec([5], 2) == "5%2"
    script = job_script(Path("/d/.git/fmrif-slurm"), ["--time=8:00:00"])
    assert "#SBATCH --time=8:00:00" in script
    assert '"$SLURM_ARRAY_TASK_ID"' in script
    assert swarm_file(Path("/d"), 3).count("\n") == 3


def _task_processes(job: str, seen: dict) -> None:
    """Command line and environment of every process of the job array now."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            if f"SLURM_ARRAY_JOB_ID={job}".encode() not in environ:
                continue
            seen[proc.name] = (proc / "cmdline").read_bytes() + b"\0" + environ
        except OSError:
            continue


def _wait(job_ids, job_for_procs, seen, timeout=600, until=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _task_processes(job_for_procs, seen)
        if until is not None and until():
            return
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids)],
                             capture_output=True, text=True).stdout
        if not out.strip():
            if until is None:
                return
            raise AssertionError("the job array ended before what the test waits for")
        time.sleep(0.2)
    raise AssertionError("the job array did not end in time")


def _files_with(root: Path, needle: bytes) -> list[str]:
    found = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                found.append(str(p))
        except OSError:
            continue
    return found


def test_whole_protocol_on_slurm(tmp_path, secret_service, state_dir, slurm,
                                 monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    spec = StudySpec(seed=17, subjects=20, sessions_per_subject=(1, 1),
                     scans_per_session=2, files_per_scan=2, file_size=4096,
                     physio=False)
    with keyring_sandbox(spec) as sb:
        ds = dl.create(tmp_path / "protocol", result_renderer="disabled")
        subs = list(sb.study.subjects(PROJECT))[:20]
        assert len(subs) == 20
        csv = subjects_csv(tmp_path, [(PROJECT, s.label, f"P{i:02d}")
                                      for i, s in enumerate(subs, 1)])
        (tok,) = dl.fmrif_login(server=sb.url, token=True, on_failure="ignore",
                                result_renderer="disabled", return_type="list")
        assert tok["status"] == "ok", tok
        before = int(git(ds, "rev-list", "--count", "HEAD"))
        sessions = "|".join(re.escape(e.id) for e in sb.study.sessions(subs[4].id))
        held = sb.add_fault(Fault("hold", times=None,
                                  path=rf"/experiments/(?:{sessions})/scans/[^/]+/resources/"))

        (res,) = dl.fmrif_download(
            str(csv), dataset=ds.path, server=sb.url, slurm=True,
            subjects_per_task=3, max_running=2, on_failure="ignore",
            result_renderer="disabled", return_type="list")
        assert res["status"] == "ok", res
        job, state = res["job"], ds.pathobj / ".git" / "fmrif-slurm"
        assert res["tasks"] == 7
        token_file = state / "credential.json"
        assert token_file.stat().st_mode & 0o077 == 0

        # kill task 1 (sub-P04..P06) mid-way: XNAT holds the files of its
        # second subject, so the task is provably still at work on it when
        # scancel reaches it, whenever that is
        seen: dict = {}
        _wait([job], job, seen, until=lambda: held.wait_held(0))
        progress = state / "tasks" / "1.progress"
        assert progress.read_text().strip() == "sub-P05"
        subprocess.run(["scancel", f"{job}_1"], check=True)
        _wait([job], job, seen)  # squeue lists nothing of the array any more
        held.release()
        assert not (state / "tasks" / "1.done").exists()
        # what it delivered before stays; nothing of the subject it was
        # killed on reached the dataset, nor did the one after it
        delivered = {p.name for p in (state / "delivered").iterdir()}
        assert "sub-P04" in delivered
        assert not delivered & {"sub-P05", "sub-P06"}
        assert not has_sessions(ds.pathobj / "sub-P05")

        (resub,) = dl.fmrif_finish(dataset=ds.path, resubmit=True, on_failure="ignore",
                                   result_renderer="disabled", return_type="list")
        assert resub["status"] == "ok", resub
        assert resub["tasks"] == [1]
        _wait([job, resub["job"]], resub["job"], seen)

        results = dl.fmrif_finish(dataset=ds.path, on_failure="ignore",
                                  result_renderer="disabled", return_type="list")
        assert [r["status"] for r in results] == ["ok"], results
        # all 20 subdatasets, registered in ONE commit naming the job arrays
        subds = ds.subdatasets(result_renderer="disabled", return_type="list")
        assert sorted(Path(r["path"]).name for r in subds) == \
            [f"sub-P{i:02d}" for i in range(1, 21)]
        assert int(git(ds, "rev-list", "--count", "HEAD")) == before + 1
        assert git(ds, "status", "--porcelain", "--ignore-submodules=none") == ""
        from datalad.local.rerun import get_run_info

        _, record = get_run_info(ds, git(ds, "log", "-1", "--format=%B"))
        assert record["fmrif"]["slurm_jobs"] == [job, resub["job"]]
        assert len(record["fmrif"]["subjects"]) == 20
        assert "subject_list_sha256" not in record["fmrif"]
        assert record["fmrif"]["subjects_sha256"]
        # a subject's run record, written by a task, is the superdataset's
        sub = dl.Dataset(ds.pathobj / "sub-P05")
        _, record = get_run_info(sub, git(sub, "log", "-1", "--format=%B"))
        assert record["dsid"] == ds.id != sub.id
        assert record["fmrif"]["superdataset"] == ds.id
        # every file verified against its XNAT digest, in every subdataset
        for r in subds:
            sub = dl.Dataset(r["path"])
            assert git(sub, "annex", "find", "--not", "--in", "here") == ""
            assert_fsck(sub)
        # finishing again changes nothing
        (again,) = dl.fmrif_finish(dataset=ds.path, on_failure="ignore",
                                   result_renderer="disabled", return_type="list")
        assert again["status"] == "notneeded"
        assert not token_file.exists()  # the tasks have ended: the token goes
        assert int(git(ds, "rev-list", "--count", "HEAD")) == before + 1

        # the password: on no task's command line or environment, in no file
        assert seen, "no process of the job array was seen"
        password = sb.password.encode()
        assert not [pid for pid, data in seen.items() if password in data]
        for root in (ds.pathobj, slurm, tmp_path / "scratch", state_dir):
            assert _files_with(root, password) == [], root
        # nor a subject label in the superdataset's history
        history = git(ds, "log", "-p", "--all")
        assert not [s.label for s in subs if s.label in history]
        logs = "".join(p.read_text() for p in (state / "logs").iterdir())
        assert not [s.label for s in subs if s.label in logs]


def test_schedule_refuses_without_token(tmp_path, sb, ds):
    from helpers import pseudonymous_list

    csv, _ = pseudonymous_list(tmp_path, sb, n=2)
    (res,) = dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, slurm=True,
                               on_failure="ignore", result_renderer="disabled",
                               return_type="list")
    assert res["status"] == "impossible"
    assert "fmrif-login --token" in res["message"]
    (res,) = dl.fmrif_finish(dataset=ds.path, on_failure="ignore",
                             result_renderer="disabled", return_type="list")
    assert res["status"] == "impossible"
    assert "--slurm" in res["message"]


@pytest.mark.parametrize("hours", [0.5])
def test_schedule_refuses_a_token_about_to_expire(tmp_path, sb, ds, hours):
    from helpers import pseudonymous_list

    from datalad_fmrif.credentials import default_credential_name

    csv, _ = pseudonymous_list(tmp_path, sb, n=2)
    (tok,) = dl.fmrif_login(server=sb.url, token=True, on_failure="ignore",
                            result_renderer="disabled", return_type="list")
    assert tok["status"] == "ok"
    soon = time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                         time.gmtime(time.time() + hours * 3600))
    name = default_credential_name(sb.url) + "-token"
    subprocess.run(["git", "config", "--global", f"datalad.credential.{name}.expires",
                    soon], check=True)
    ds.config.reload(force=True)
    (res,) = dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, slurm=True,
                               dry_run=True, on_failure="ignore",
                               result_renderer="disabled", return_type="list")
    assert res["status"] == "impossible"
    assert "too soon" in res["message"]
    assert not (ds.pathobj / ".git" / "fmrif-slurm" / "credential.json").exists()


def test_failed_tasks_are_reported_and_a_swarm_line_runs_a_task(tmp_path, sb, ds,
                                                                 monkeypatch):
    """Without a cluster: --dry-run writes the tasks (as for Biowulf's swarm),
    fmrif-finish reports every task that did not deliver and commits nothing;
    a line of the swarm file, run as it is, delivers its subjects, and the
    next fmrif-finish registers them."""
    import shlex

    from helpers import pseudonymous_list

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    csv, subs = pseudonymous_list(tmp_path, sb, n=3)
    (tok,) = dl.fmrif_login(server=sb.url, token=True, on_failure="ignore",
                            result_renderer="disabled", return_type="list")
    assert tok["status"] == "ok"
    (res,) = dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, slurm=True,
                               subjects_per_task=2, dry_run=True, on_failure="ignore",
                               result_renderer="disabled", return_type="list")
    assert res["status"] == "ok" and res["tasks"] == 2, res
    state = ds.pathobj / ".git" / "fmrif-slurm"
    head = git(ds, "rev-parse", "HEAD")

    results = dl.fmrif_finish(dataset=ds.path, on_failure="ignore",
                              result_renderer="disabled", return_type="list")
    failed = [r for r in results if r["status"] == "error"]
    assert [r["task"] for r in failed] == [0, 1]
    assert all("--resubmit" in r["message"] for r in failed)
    assert git(ds, "rev-parse", "HEAD") == head  # nothing delivered: no commit

    lines = (state / "tasks.swarm").read_text().splitlines()
    assert len(lines) == 2
    subprocess.run(shlex.split(lines[1]), check=True, capture_output=True)
    results = dl.fmrif_finish(dataset=ds.path, on_failure="ignore",
                              result_renderer="disabled", return_type="list")
    assert [r.get("task") for r in results if r["status"] == "error"] == [0]
    assert [r["status"] for r in results if r.get("task") is None] == ["ok"]
    subds = ds.subdatasets(result_renderer="disabled", return_type="list")
    assert [Path(r["path"]).name for r in subds] == ["sub-P03"]
    assert_fsck(dl.Dataset(ds.pathobj / "sub-P03"))
    assert ds.config.get("datalad.fmrif.layout") == "subdatasets"
    history = git(ds, "log", "-p", "--all")
    assert not [s.label for s in subs if s.label in history]

    # the same task again delivers again: its clone of sub-P03 has the
    # autoenabled fmrif remote, which git-annex (10.20261026) must be told
    # is safe before it lets the clone push ("Push prevented due to an
    # unverified special remote")
    done = state / "tasks" / "1.done"
    done.unlink()
    subprocess.run(shlex.split(lines[1]), check=True, capture_output=True)
    assert json.loads(done.read_text())["status"] == "ok", done.read_text()
