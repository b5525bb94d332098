"""A whole protocol on a Slurm cluster: a job array fills the subdatasets.

(About 580 lines, kept in one file: submission on the login node, the task
on a compute node and the state files both read are one protocol.)

``fmrif-download --slurm`` (on the login node) splits the subject list into
tasks of K subjects, writes them, a job script and a Biowulf swarm file
into ``.git/fmrif-slurm/`` of the superdataset (outside its history: the
task lists hold XNAT labels), and submits ``sbatch --array=0-N%M``; ``%M``
caps how many tasks download from XNAT at once.

Each task (``python -m datalad_fmrif.slurm STATE INDEX`` on a compute node)
takes its subjects one by one: the subject's subdataset ``sub-NAME/`` at
the superdataset's location is created if it is new, cloned to node-local
scratch, filled there by a plain :class:`.pipeline.Download`, and pushed
back (``datalad push``: content, then the branch, which the subdataset
accepts into its checked-out worktree). A subject belongs to exactly one
task, a lock per subject guards against a resubmitted task meeting its
killed predecessor, and no task ever writes the superdataset: two tasks
never write the same repository at once. ``fmrif-finish`` then registers
every delivered subdataset in the superdataset in ONE commit whose run
record names the job array, reports failed tasks, and resubmits only those
with ``--resubmit``.

No password reaches a compute node. The tasks log in with an XNAT alias
token issued on the login node (``datalad fmrif-login --token``), whose
expiry is checked before anything is submitted; it travels in a file only
the user can read (mode 0600, next to the task lists), never in argv, the
job script or Slurm's copy of the submit environment. A task puts it in
its own environment (DataLad's ``DATALAD_CREDENTIAL_<NAME>_*``) for the
``fmrif`` special remote it starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .credentials import (
    Credential,
    CredentialError,
    CredentialStore,
    env_names,
    resolve_credential_name,
)
from .pipeline import ACTION, DownloadOptions, list_projects, now_iso
from .provenance import options_from_record, options_record, subjects_digest
from .report import plural
from .subdatasets import (
    fill_subject,
    has_sessions,
    head,
    record_layout,
    registered_subdatasets,
    save_superdataset,
    subject_dataset,
    subject_path,
)
from .subjects import SubjectList, SubjectRequest

lgr = logging.getLogger("datalad.fmrif.slurm")

STATE_DIR = ".git/fmrif-slurm"
FINISH = "fmrif-finish"
#: a token must stay valid at least this long after submission (seconds):
#: tasks wait in the queue, and a download of a few subjects takes a while
MIN_TOKEN_VALIDITY = 3600
DEFAULT_MAX_RUNNING = 4
DEFAULT_SUBJECTS_PER_TASK = 10


class ScheduleError(ValueError):
    """Something to fix before a job array can be submitted or finished."""


# -- pure parts ------------------------------------------------------------------


def split_tasks(requests, per_task: int) -> list[list]:
    """The subject list in tasks of ``per_task`` subjects, in its order."""
    return [list(requests[i:i + per_task]) for i in range(0, len(requests), per_task)]


def array_spec(indices: list[int], max_running: int) -> str:
    """``--array`` for these task indices: ``0-6%4``, or ``1,4%4``."""
    indices = sorted(indices)
    if indices == list(range(indices[0], indices[-1] + 1)) and len(indices) > 1:
        spec = f"{indices[0]}-{indices[-1]}"
    else:
        spec = ",".join(str(i) for i in indices)
    return f"{spec}%{max_running}"


def task_command(state: Path, index: str) -> str:
    """The command of one task: no secret, only where its state is."""
    return shlex.join([sys.executable, "-m", "datalad_fmrif.slurm", str(state)]) \
        + " " + index


def job_script(state: Path, sbatch_options: list[str]) -> str:
    lines = ["#!/bin/sh",
             "#SBATCH --job-name=fmrif-download",
             f"#SBATCH --output={state}/logs/task-%a-job-%A.log"]
    lines += [f"#SBATCH {opt}" for opt in sbatch_options]
    lines += [
        "# One task of 'datalad fmrif-download --slurm': the subjects of",
        f"# {state}/tasks/<task>.json into their subdatasets. Submitted with",
        "# sbatch --array; 'datalad fmrif-finish' registers what was delivered.",
        "# The XNAT alias token is read from a file only you can read.",
        "exec " + task_command(state, '"$SLURM_ARRAY_TASK_ID"'),
        "",
    ]
    return "\n".join(lines)


def swarm_file(state: Path, n: int) -> str:
    """The same tasks for Biowulf's ``swarm -f`` (one line per task)."""
    return "".join(task_command(state, str(i)) + "\n" for i in range(n))


def write_private(path: Path, text: str) -> None:
    """Write a file only the user can read (0600), whatever the umask."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _request_record(req: SubjectRequest) -> dict:
    return {"project": req.project, "label": req.label, "pseudonym": req.pseudonym,
            "sessions": list(req.sessions), "line": req.line}


def _request(record: dict) -> SubjectRequest:
    return SubjectRequest(project=record["project"], label=record["label"],
                          pseudonym=record["pseudonym"],
                          sessions=tuple(record["sessions"]), line=record["line"])


# -- the state of a schedule ----------------------------------------------------------


@dataclass
class Schedule:
    """What ``.git/fmrif-slurm/schedule.json`` holds (no label, no secret)."""

    superdataset: str
    server: str
    token: str  # name of the alias token credential
    options: dict  # the plan options (options_record), keep_labels, ...
    subjects_sha256: str  # provenance.subjects_digest: what the dataset shows
    command: str
    tasks: list  # per task: the subjects' names in the dataset
    max_running: int
    jobs: list = field(default_factory=list)  # {"id": ..., "tasks": [...]}

    @classmethod
    def load(cls, state: Path) -> "Schedule":
        try:
            return cls(**json.loads((state / "schedule.json").read_text()))
        except FileNotFoundError:
            raise ScheduleError(
                f"no job array was submitted from this dataset ({state} is "
                "missing): run 'datalad fmrif-download --slurm SUBJECTS' first"
            ) from None

    def save(self, state: Path) -> None:
        write_private(state / "schedule.json",
                      json.dumps(self.__dict__, indent=1, sort_keys=True))

    def download_options(self) -> DownloadOptions:
        """The options of each subject's download; its run record is the
        superdataset's (see :attr:`.DownloadOptions.superdataset_id`)."""
        from datalad.distribution.dataset import Dataset

        o = self.options
        return DownloadOptions(
            server=self.server, plan=options_from_record(o["plan"]),
            keep_labels=o["keep_labels"], no_content=o["no_content"],
            jobs=o["jobs"], command=self.command,
            superdataset_id=Dataset(self.superdataset).id)


def state_dir(ds) -> Path:
    return Path(ds.path) / STATE_DIR


# -- on the login node: the token, sbatch, squeue --------------------------------------


def token_for_jobs(cfg, server: str, credential: str | None,
                   now: float | None = None) -> Credential:
    """The alias token the tasks use, valid long enough; else ScheduleError."""
    cfg.reload()  # fmrif-login --token may have stored it since it was read
    name = resolve_credential_name(credential, server, cfg)
    if not name.endswith("-token"):
        name += "-token"
    try:
        token = CredentialStore(cfg).get(name)
    except CredentialError as e:
        raise ScheduleError(str(e)) from None
    if token is None:
        raise ScheduleError(
            f"no XNAT alias token {name!r} for the Slurm tasks: issue one on this "
            "machine with 'datalad fmrif-login --token' (the password never "
            "goes to a compute node)")
    now = time.time() if now is None else now
    if not token.expires:
        raise ScheduleError(
            f"the alias token {name!r} has no recorded expiry; issue a new one "
            "with 'datalad fmrif-login --token'")
    if token.expired(now + MIN_TOKEN_VALIDITY):
        raise ScheduleError(
            f"the alias token {name!r} expires {token.expires}, too soon for "
            "tasks that may wait in the queue; issue a new one with 'datalad "
            "fmrif-login --token' and submit again")
    return token


def write_token(state: Path, token: Credential) -> None:
    write_private(state / "credential.json", json.dumps(
        {"name": token.name, "user": token.user, "secret": token.secret,
         "expires": token.expires}))


def _slurm(*argv: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True)
    except FileNotFoundError:
        raise ScheduleError(
            f"{argv[0]} was not found: run this on a Slurm login node (on "
            "Biowulf: biowulf.nih.gov, not helix)") from None


def submit(state: Path, indices: list[int], max_running: int) -> str:
    """``sbatch --array`` of these tasks; the job ID."""
    out = _slurm("sbatch", "--parsable", f"--array={array_spec(indices, max_running)}",
                 str(state / "job.sh"))
    if out.returncode != 0:
        raise ScheduleError(f"sbatch refused the job array: {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


def unfinished(job_ids: list[str]) -> list[str]:
    """Tasks of these jobs that Slurm still has queued or running."""
    if not job_ids:
        return []
    out = _slurm("squeue", "-h", "-r", "-o", "%i %t", "-j", ",".join(job_ids))
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:
            return []  # all of them ended long enough ago to be forgotten
        raise ScheduleError(f"squeue failed: {out.stderr.strip()}")
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _result(status: str, message: str, ds, action: str = ACTION, **fields) -> dict:
    return dict(action=action, status=status, message=message, path=ds.path,
                type="dataset", refds=ds.path, **fields)


def schedule(ds, subjects: SubjectList, options: DownloadOptions, *,
             credential: str | None, per_task: int, max_running: int,
             sbatch_options: list[str]):
    """Write the tasks, the job script and the swarm file; submit unless
    ``options.dry_run``. Yields DataLad results."""
    state = state_dir(ds)
    try:
        if (state / "schedule.json").exists():
            old = Schedule.load(state)
            busy = unfinished([j["id"] for j in old.jobs])
            if busy:
                raise ScheduleError(
                    f"{len(busy)} tasks of the job array submitted earlier are "
                    "still queued or running; wait for them (squeue --me), or "
                    "cancel them (scancel), before submitting again")
        token = token_for_jobs(ds.config, options.server, credential)
        names = [subject_path(r) for r in subjects.requests]
    except (ScheduleError, ValueError) as e:
        yield _result("impossible", str(e), ds=ds)
        return
    tasks = split_tasks(subjects.requests, per_task)
    (state / "tasks").mkdir(parents=True, exist_ok=True, mode=0o700)
    (state / "logs").mkdir(exist_ok=True, mode=0o700)
    (state / "delivered").mkdir(exist_ok=True, mode=0o700)
    (state / "locks").mkdir(exist_ok=True, mode=0o700)
    os.chmod(state, 0o700)
    # the tasks of an earlier schedule go; what it delivered stays listed
    # until fmrif-finish has registered it
    for old in (state / "tasks").iterdir():
        old.unlink()
    for i, task in enumerate(tasks):
        write_private(state / "tasks" / f"{i}.json",
                      json.dumps([_request_record(r) for r in task]))
    (state / "job.sh").write_text(job_script(state, sbatch_options))
    (state / "tasks.swarm").write_text(swarm_file(state, len(tasks)))
    write_token(state, token)
    sched = Schedule(
        superdataset=ds.path, server=options.server, token=token.name,
        options={"plan": options_record(options.plan),
                 "keep_labels": options.keep_labels,
                 "no_content": options.no_content, "jobs": options.jobs},
        subjects_sha256=subjects_digest(subjects.requests,
                                        keep_labels=options.keep_labels),
        command=options.command,
        tasks=[[subject_path(r) for r in t] for t in tasks],
        max_running=max_running)
    if options.dry_run:
        sched.save(state)
        yield _result("ok", f"wrote {len(tasks)} tasks of up to {per_task} "
                      f"subjects ({len(names)} in all), the job script "
                      f"{state / 'job.sh'} and the swarm file "
                      f"{state / 'tasks.swarm'}; submitted nothing (--dry-run)", ds=ds,
                      tasks=len(tasks))
        return
    try:
        job = submit(state, list(range(len(tasks))), max_running)
    except ScheduleError as e:
        yield _result("error", str(e), ds=ds)
        return
    sched.jobs.append({"id": job, "tasks": list(range(len(tasks)))})
    sched.save(state)
    yield _result("ok", f"submitted job array {job}: {len(tasks)} tasks of up to "
                  f"{per_task} subjects ({len(names)} in all), at most {max_running} "
                  f"at once; logs in {state / 'logs'}. When it has ended, run "
                  "'datalad fmrif-finish'", ds=ds, job=job, tasks=len(tasks))


# -- on the login node, afterwards: finish ---------------------------------------------------


def task_outcomes(state: Path, sched: Schedule) -> dict[int, dict]:
    """Per task: its record, or {"status": "missing"} (killed, or never ran)."""
    out = {}
    for i in range(len(sched.tasks)):
        try:
            out[i] = json.loads((state / "tasks" / f"{i}.done").read_text())
        except FileNotFoundError:
            out[i] = {"status": "missing"}
    return out


def finish(ds, *, resubmit: bool, command: str):
    """Register the delivered subdatasets in ONE commit, report failed tasks;
    or (``resubmit``) submit only the failed tasks again."""
    state = state_dir(ds)
    try:
        sched = Schedule.load(state)
        busy = unfinished([j["id"] for j in sched.jobs])
    except ScheduleError as e:
        yield _result("impossible", str(e), ds=ds, action=FINISH)
        return
    if busy:
        yield _result("impossible", f"{len(busy)} tasks are still queued or "
                      f"running ({', '.join(busy[:5])}); run fmrif-finish when the "
                      "job array has ended (squeue --me shows it)", ds=ds, action=FINISH)
        return
    outcomes = task_outcomes(state, sched)
    failed = [i for i, o in outcomes.items() if o["status"] != "ok"]
    jobs = [j["id"] for j in sched.jobs]
    if resubmit:
        if not failed:
            yield _result("notneeded", "no task failed; nothing to resubmit", ds=ds,
                          action=FINISH)
            return
        try:
            write_token(state, token_for_jobs(ds.config, sched.server, sched.token))
            job = submit(state, failed, sched.max_running)
        except ScheduleError as e:
            yield _result("impossible", str(e), ds=ds, action=FINISH)
            return
        sched.jobs.append({"id": job, "tasks": failed})
        sched.save(state)
        yield _result("ok", f"resubmitted {plural(len(failed), 'failed task')} "
                      f"({', '.join(map(str, failed))}) as job array {job}", ds=ds,
                      action=FINISH, job=job, tasks=failed)
        return
    for i in failed:
        why = outcomes[i].get("error") or (
            "it ended without a word (killed, out of time or memory?)")
        yield _result("error", f"task {i} of the job array failed: {why}; see "
                      f"{state / 'logs'}/task-{i}-job-*.log, and run 'datalad "
                      "fmrif-finish --resubmit' to run the failed tasks again", ds=ds,
                      action=FINISH, task=i)
    delivered = sorted(p.name for p in (state / "delivered").iterdir()) \
        if (state / "delivered").is_dir() else []
    root = Path(ds.path)
    registered = registered_subdatasets(root)
    # new to the superdataset, or at another commit
    changed = [p for p in delivered if registered.get(p) != head(root / p)]
    # the layout is recorded with the first subdatasets, not without any
    layout = bool(changed) and record_layout(ds)
    paths = changed + ([".datalad/config"] if layout else [])
    failure = save_superdataset(
        ds, paths, [p[len("sub-"):] for p in changed],
        {"server": sched.server, "time": now_iso(), "slurm_jobs": jobs,
         "tasks": len(sched.tasks), "failed_tasks": failed,
         "subjects_sha256": sched.subjects_sha256},
        command, f"Register {len(changed)} subjects downloaded by Slurm job array "
        + ", ".join(jobs) if changed else None)
    if failure:
        failure["action"] = FINISH
        yield failure
        return
    if not failed:  # every task delivered: the token has no more business on disk
        (state / "credential.json").unlink(missing_ok=True)
    if not paths:
        yield _result("notneeded", f"all {len(delivered)} delivered subdatasets "
                      "are registered already", ds=ds, action=FINISH)
        return
    yield _result("ok", f"registered {len(changed)} subdatasets delivered by job "
                  f"array {', '.join(jobs)} in one commit", ds=ds, action=FINISH,
                  subdatasets=len(changed))


# -- on a compute node: one task ------------------------------------------------------------


def _scratch() -> Path:
    """Node-local scratch: Biowulf's /lscratch/$SLURM_JOB_ID, else $TMPDIR."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and Path("/lscratch", job).is_dir():
        return Path("/lscratch", job)
    return Path(tempfile.gettempdir())


def _use_token(state: Path) -> str:
    """Put the alias token into this process's environment (and so the
    special remote's), from the file only the user can read."""
    path = state / "credential.json"
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ScheduleError(f"{path} is readable by others; the task does not use it")
    token = json.loads(path.read_text())
    user_var, secret_var = env_names(token["name"])
    os.environ[user_var] = token["user"]
    os.environ[secret_var] = token["secret"]
    os.environ["DATALAD_FMRIF_CREDENTIAL"] = token["name"]
    return token["name"]


def _locked(path: Path):
    import fcntl

    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _deliver_subject(sched: Schedule, subjects: SubjectList, req: SubjectRequest,
                     options: DownloadOptions, xnat, projects: Mapping,
                     scratch: Path) -> list[str]:
    """One subject: target created if new, cloned to scratch, filled there,
    pushed back. Returns the problems (empty: delivered)."""
    import datalad.api as dl
    from datalad.utils import rmtree

    from .annex import Annex
    from .remote_setup import ensure_remote

    path = subject_path(req)
    state = Path(sched.superdataset) / STATE_DIR
    target = Path(sched.superdataset) / path
    fd = _locked(state / "locks" / path)
    try:
        sub = subject_dataset(target)
        subprocess.run(["git", "config", "receive.denyCurrentBranch", "updateInstead"],
                       cwd=target, check=True)
        work = scratch / path
        if work.exists():
            rmtree(str(work))
        clone = dl.clone(str(target), str(work), result_renderer="disabled")
        _verify_remote(work, sched.server)
        problems = [f"{r.get('path', '')}: {r['message']}" for r in
                    fill_subject(clone, subjects, req, options, xnat, projects)
                    if r["status"] in ("error", "impossible")]
        pushed = clone.push(to="origin", result_renderer="disabled",
                            return_type="list", on_failure="ignore")
        problems += [f"push: {r.get('message')}" for r in pushed
                     if r.get("status") not in ("ok", "notneeded")]
        if not problems and has_sessions(target):
            ensure_remote(Annex(target), sched.server)
            (state / "delivered" / path).touch()
        rmtree(str(work))
        del sub
        return problems
    finally:
        os.close(fd)


def _verify_remote(repo: Path, server: str) -> None:
    """Confirm to git-annex the ``fmrif`` remote the clone autoenabled.

    Recent git-annex (10.20261026) blocks every push from a clone while a
    special remote it autoenabled is unverified ("Push prevented due to an
    unverified special remote", docs/troubleshooting.md): it guards against
    a remote set up by someone else to read from an unexpected place. The
    clone is of the user's own subdataset, and the remote is confirmed only
    when it points at the server of this schedule.
    """
    from .remote_setup import fmrif_remotes

    name = fmrif_remotes(repo).get(server)
    if not name:
        return  # a new subdataset: the download sets the remote up itself
    shown = subprocess.run(["git", "annex", "verifyremote", name], cwd=repo,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    safe = re.search(r"--safe (\S+)", shown.stdout + shown.stderr)
    if safe:  # older git-annex has no such command, and needs none
        subprocess.run(["git", "annex", "verifyremote", name, "--safe", safe.group(1)],
                       cwd=repo, capture_output=True, check=True)


def run_task(state: Path, index: int) -> int:
    """One task of the job array; writes ``tasks/INDEX.done``."""
    from .commands._common import xnat_session

    sched = Schedule.load(state)
    requests = [_request(r) for r in
                json.loads((state / "tasks" / f"{index}.json").read_text())]
    subjects = SubjectList(requests=tuple(requests), notes=(),
                           sha256=sched.subjects_sha256)
    done = state / "tasks" / f"{index}.done"
    done.unlink(missing_ok=True)
    token = _use_token(state)
    from datalad import cfg

    options = sched.download_options()
    scratch = Path(tempfile.mkdtemp(prefix=f"fmrif-task-{index}-", dir=_scratch()))
    failed: dict[str, list[str]] = {}
    try:
        with xnat_session(cfg, sched.server, token) as xnat:
            # each project listed once for the task's subjects
            projects = list_projects(xnat, (r.project for r in requests))
            for req in requests:
                name = subject_path(req)
                (state / "tasks" / f"{index}.progress").write_text(name + "\n")
                lgr.info("task %d: %s", index, name)
                problems = _deliver_subject(sched, subjects, req, options, xnat, projects,
                                            scratch)
                if problems:
                    failed[name] = problems
                    lgr.error("task %d could not deliver %s: %s", index, name, "; ".join(problems))
    except Exception as e:  # noqa: BLE001 - the task's failure, for fmrif-finish
        write_private(done, json.dumps({"status": "failed", "error": f"{type(e).__name__}: {e}"}))
        raise
    finally:
        from datalad.utils import rmtree

        rmtree(str(scratch), ignore_errors=True)
    status = "failed" if failed else "ok"
    record = {"status": status, "job": os.environ.get("SLURM_ARRAY_JOB_ID"),
              "subjects": [subject_path(r) for r in requests]}
    if failed:
        record["error"] = "; ".join(f"{n}: {', '.join(p)}" for n, p in failed.items())
    write_private(done, json.dumps(record))
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write("usage: python -m datalad_fmrif.slurm STATE_DIR TASK_INDEX\n")
        return 2
    # scancel sends SIGTERM: end like ^C, so that scratch is cleaned up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # the task's log says which subject it works on and what failed, not
    # every line of git's progress (DataLad's handler writes it)
    logging.getLogger("datalad").setLevel(logging.WARNING)
    lgr.setLevel(logging.INFO)
    return run_task(Path(argv[0]), int(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
