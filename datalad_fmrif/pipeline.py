"""The download: subject list -> XNAT catalog -> plan -> annex -> commit.

(The library side of ``datalad fmrif-download``; :mod:`.commands.download`
only translates between DataLad and this module.)

Everything that talks to XNAT goes through one logged-in ``XnatSession``;
everything that touches the dataset goes through batched git-annex calls.
The order of the steps is what makes an interrupted run harmless:

1. list and plan every session (no change to the dataset);
2. register the new files with their XNAT keys, URLs and metadata
   (content-less);
3. fetch content: one zip stream per scan resource that lacks it (every
   entry checked against XNAT's size and MD5, :mod:`.content.bulk`), then whatever
   a zip did not deliver, and single files, through the ``fmrif`` special
   remote (``git annex get -J``, verified by git-annex, retried, resumed);
   each session's result is yielded as soon as its content is all in (or
   failed), while the other sessions' fetches go on;
4. write the session manifests and commit (files, then the run record).

A run killed anywhere leaves at most registered, uncommitted files whose
keys are XNAT's digests; the next run recognises them and completes the job.
What else a killed run can leave is repaired first, before planning (see
:meth:`Download.run`): a remote set up halfway, records not yet merged into
the git-annex branch, content not yet recorded, half-written manifests, and
the run record of a run killed between its two commits. Each step is
announced at debug level (``fmrif-download phase: NAME``), so that the tests
can interrupt a run at every step.

The steps hand values on, never shared state: ``_plan`` returns the
planned sessions (:class:`_Session`, frozen), ``_classify`` returns them
with their files split into new, present, changed and removed,
``_register`` and ``_fetch`` return the files they failed (path -> why),
which each session takes in with :meth:`_Session.failing`; ``_record``
and ``_commit`` take the settled sessions. :meth:`Download.run` reads as
that data flow, in the order that makes an interruption harmless.

Why one module of ~900 lines: each step's promise depends on the order of
the others and on the repair of what a killed run left (a pending run
record, records not yet merged, unrecorded content), so they are read
together, top to bottom, in the order they run.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generator, Iterable, Iterator, Mapping

from . import __version__, failures
from .content import bulk
from .annex import Annex, AnnexError
from .annex.keys import key_facts
from .plan import (
    PlanError,
    PlanOptions,
    SessionPlan,
    name_sessions,
    plan_session,
    sanitize_label,
)
from .provenance import (
    MANIFEST_DIR,
    assigned_names,
    common_dir,
    load_manifests,
    options_record,
    remove_unfinished_manifests,
    run_record,
    run_record_message,
    session_manifest,
    subjects_digest,
    write_manifest,
)
from .remote_setup import ensure_remote
from .report import excluded_series, session_message
from .subjects import SubjectList, SubjectRequest
from .xnat.catalog import project_subjects, session_catalog, subject_sessions
from .xnat.errors import AccessDenied, BadResponse, NotFound, TransientError
from .xnat.records import Session, Subject
from .xnat.session import XnatSession

lgr = logging.getLogger("datalad.fmrif.download")

ACTION = "fmrif-download"


@dataclass(frozen=True)
class DownloadOptions:
    server: str
    plan: PlanOptions
    keep_labels: bool
    no_content: bool = False
    jobs: int = 4
    dry_run: bool = False
    message: str | None = None
    credential: str | None = None  # explicit --credential, recorded in the remote
    command: str = ""  # the command line, for the run record
    #: the superdataset whose run this download is part of (its dataset ID):
    #: a subject's subdataset filled by ``--subdatasets`` or a Slurm task
    #: records the superdataset's command under the superdataset's ID, as
    #: ``datalad run`` does in the subdatasets it saves, so that ``datalad
    #: rerun`` in the subdataset does not run it there
    superdataset_id: str | None = None


@dataclass(frozen=True)
class _Session:
    """One planned session and what this run does with it: the value each
    step of :meth:`Download.run` hands on to the next, never changed in
    place (a step returns a new one, :func:`dataclasses.replace`).

    ``_plan`` fills in the plan (its path conflicts as failures),
    ``_classify`` splits the files into new, present, changed and removed,
    ``_register`` and ``_fetch`` return the files they failed, which
    :meth:`failing` adds; ``missing`` (files XNAT no longer lists) comes
    last, with the session's result.
    """

    plan: SessionPlan
    subject: Subject
    project: str
    new: tuple = ()  # PlannedFile
    present: tuple = ()
    changed: Mapping[str, str] = field(default_factory=dict)  # path -> server md5
    failed: Mapping[str, str] = field(default_factory=dict)  # path -> message
    removed: tuple = ()  # PlannedFile the user took out
    missing: Mapping[str, str] = field(default_factory=dict)  # path -> since when
    #: present files whose content was not here and that this run fetched
    #: again (dropped, or a fresh clone): work done, so reported
    refetched: tuple = ()  # path

    @property
    def session(self) -> Session:
        return self.plan.catalog.session

    def failing(self, failed: Mapping[str, str]) -> _Session:
        """This session with those of ``failed`` that are its files failed too."""
        paths = {pf.path for pf in self.plan.files}
        mine = {p: why for p, why in failed.items() if p in paths}
        return replace(self, failed={**self.failed, **mine}) if mine else self


@dataclass
class _Listing:
    """What XNAT lists for one subject (:meth:`Download._list_subject`)."""

    sessions: list  # Session: every session of the subject
    catalogs: dict = field(default_factory=dict)  # session ID -> catalog or its error
    error: Exception | None = None  # the subject's sessions could not be listed


def _wanted_sessions(req: SubjectRequest, every: list) -> list:
    """The sessions of the subject that the list names (all, if it names none)."""
    if not req.sessions:
        return every
    wanted = set(req.sessions)
    return [s for s in every if s.label in wanted or s.id in wanted]


def list_projects(xnat: XnatSession, projects: Iterable[str]
                  ) -> dict[str, dict[str, Subject] | AccessDenied | NotFound]:
    """Each project's subjects by label, or why XNAT would not list them
    (it refuses the project, or has none of that name: that project's
    subjects' failure); an unreachable server, a TLS or login problem is
    raised. One request per project, however many subjects the list has."""
    listed: dict = {}
    for project in dict.fromkeys(projects):
        try:
            listed[project] = project_subjects(xnat, project)
        except (AccessDenied, NotFound) as e:
            listed[project] = e
    return listed


def commits_plainly(ds, annex: Annex) -> bool:
    """May a commit of the dataset be made with git itself, not ``datalad
    save``? Where annexed files are plain symlinks (no adjusted branch to
    carry commits over from) and DataLad's fake dates are not asked for."""
    return annex.plain_links() and not ds.config.getbool("datalad", "fake-dates",
                                                         default=False)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Download:
    """One run of ``fmrif-download``; ``run()`` yields DataLad result records."""

    def __init__(self, dataset, subjects: SubjectList, options: DownloadOptions,
                 xnat: XnatSession, projects: Mapping | None = None):
        """``projects``: the list's projects as :func:`list_projects` gave
        them, when the caller runs one Download per subject and lists each
        project once for all of them (``--subdatasets``, a Slurm task);
        None: this run lists them itself."""
        self.ds = dataset
        self.root = Path(dataset.path)
        self.subjects = subjects
        self.options = options
        self.xnat = xnat
        self.projects = projects
        self.manifests = load_manifests(self.root)
        self.assigned = assigned_names(self.manifests)
        self.time = now_iso()
        self.remote: str | None = None  # the fmrif special remote's name

    # -- results ------------------------------------------------------------

    def _result(self, status: str, message: str, *, path: str | None = None,
                type: str = "session", **fields) -> dict:
        res = {
            "action": ACTION,
            "status": status,
            "message": message,
            "path": str(self.root / path) if path else str(self.root),
            "type": type,
            "refds": str(self.root),
        }
        res.update(fields)
        return res

    def _line(self, req: SubjectRequest) -> str:
        # messages name the line of the list, never the label (an identifier)
        return f"subject on line {req.line} of the list"

    # -- 1. list and plan -----------------------------------------------------

    def _plan(self) -> Generator[dict, None, list[_Session]]:
        """Yields the results of subjects and sessions that cannot be
        planned; returns the planned sessions, in the list's order."""
        planned: list[_Session] = []
        by_project: dict[str, list[SubjectRequest]] = {}
        for req in self.subjects.requests:
            by_project.setdefault(req.project, []).append(req)
        names_in_use: dict[str, str] = {}  # dataset subject name -> subject ID
        listed = (self.projects if self.projects is not None
                  else list_projects(self.xnat, by_project))
        for project, requests in by_project.items():
            subjects = listed[project]
            if isinstance(subjects, (AccessDenied, NotFound)):
                # one line for the project, however many subjects it has
                why = ("you may not read project" if isinstance(subjects, AccessDenied)
                       else "there is no project")
                who = (self._line(requests[0]) if len(requests) == 1
                       else _subjects_on_lines(requests))
                yield self._result(
                    "impossible", f"{who}: {why} {project} on "
                    f"{self.options.server}", type="project", project=project)
                continue
            found = []
            for req in requests:
                subject = subjects.get(req.label)
                if subject is None:
                    yield self._result(
                        "impossible", f"{self._line(req)} is not a subject of "
                        f"project {project}", type="subject")
                    continue
                found.append((req, subject))
            # the listings of -J subjects at a time (each is a few requests
            # that wait on XNAT), planned one by one in the list's order
            pool = ThreadPoolExecutor(max(1, self.options.jobs),
                                      thread_name_prefix="fmrif-list")
            try:
                listings = [pool.submit(self._list_subject, req, subject)
                            for req, subject in found]
                for (req, subject), listing in zip(found, listings):
                    for out in self._plan_subject(req, subject, project, names_in_use,
                                                  listing.result()):
                        if isinstance(out, _Session):
                            planned.append(out)
                        else:
                            yield out
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return planned

    def _list_subject(self, req: SubjectRequest, subject: Subject) -> _Listing:
        """The subject's sessions and the file listing of each one wanted.

        A subject or session that XNAT refuses, lacks or fails on is that
        subject's or session's failure (kept for :meth:`_plan_subject` to
        report); an unreachable server, a TLS or login problem is raised.
        """
        try:
            every = subject_sessions(self.xnat, subject)
        except (AccessDenied, NotFound, TransientError, BadResponse) as e:
            return _Listing(sessions=[], error=e)
        resources = [r for r in self.options.plan.resources if r != "DICOM"]
        catalogs: dict = {}
        for session in _wanted_sessions(req, every):
            try:
                catalogs[session.id] = session_catalog(self.xnat, session, resources)
            except (AccessDenied, NotFound, TransientError, BadResponse) as e:
                catalogs[session.id] = e
        return _Listing(sessions=every, catalogs=catalogs)

    def _plan_subject(self, req: SubjectRequest, subject: Subject, project: str,
                      names_in_use: dict, listing: _Listing) -> Iterator[dict | _Session]:
        """The subject's result records and its planned sessions."""
        try:
            name = req.pseudonym if req.pseudonym else sanitize_label(req.label)
        except PlanError as e:  # a label of XNAT's without a letter or digit
            yield self._result("error", f"{self._line(req)}: {e}", type="subject")
            return
        if names_in_use.setdefault(name, subject.id) != subject.id:
            yield self._result(
                "error", f"{self._line(req)} would get the dataset name "
                f"sub-{name}, which another subject of this run has", type="subject")
            return
        e = listing.error
        if isinstance(e, (AccessDenied, NotFound)):
            yield self._result("impossible", f"{self._line(req)}: {e}", type="subject")
            return
        if e is not None:
            # this subject's failure; the others go on (an unreachable
            # server, a TLS or login problem still ends the run)
            yield self._result("error", f"{self._line(req)}: {e}", type="subject")
            return
        every = listing.sessions
        # names given on earlier runs never change
        earlier = {s.id: self.assigned[s.id] for s in every if s.id in self.assigned}
        for sid, (subj, _) in earlier.items():
            if subj != name:
                yield self._result(
                    "error", f"{self._line(req)}: session {sid} is already in the "
                    f"dataset as sub-{subj}, not sub-{name}; check the pseudonyms",
                    type="session")
                return
        try:
            if self.options.keep_labels:
                session_names = {s.id: earlier.get(s.id, (name, sanitize_label(s.label)))[1]
                                 for s in every}
            else:
                # numbered in acquisition order among ALL sessions of the subject
                session_names = name_sessions(
                    every, {sid: ses for sid, (_, ses) in earlier.items()})
        except PlanError as e:  # e.g. a session label of XNAT's that names nothing
            yield self._result("error", f"{self._line(req)}: {e}", type="subject")
            return
        if len(set(session_names.values())) != len(session_names):
            yield self._result("error", f"{self._line(req)}: two sessions get the "
                               "same name in the dataset", type="subject")
            return
        sessions = _wanted_sessions(req, every)
        if req.sessions:
            found = {s.label for s in sessions} | {s.id for s in sessions}
            missing = set(req.sessions) - found
            if missing:
                yield self._result(
                    "impossible", f"{self._line(req)}: {len(missing)} of its "
                    "listed sessions are not in XNAT", type="session")
        if not sessions:
            yield self._result("notneeded", f"{self._line(req)} has no image "
                               "sessions to download", type="subject")
            return
        for session in sessions:
            catalog = listing.catalogs[session.id]
            if isinstance(catalog, Exception):
                status = ("impossible" if isinstance(catalog, (AccessDenied, NotFound))
                          else "error")
                yield self._result(status, str(catalog), type="session",
                                   xnat_session_id=session.id)
                continue
            plan = plan_session(catalog, subject=name, session=session_names[session.id],
                                project=project, options=self.options.plan)
            for why in catalog.rejected:
                lgr.warning("XNAT listing of session %s: %s", session.id, why)
            for why in dict.fromkeys(why for _, why in plan.excluded):
                lgr.debug("session %s: left out %s", session.id, why)
            if plan.problems:
                yield self._result(
                    "error", f"session {session.id} not downloaded: "
                    + "; ".join(plan.problems), type="session",
                    xnat_session_id=session.id)
                continue
            # conflicts are those files' problem, not the session's
            yield _Session(plan=plan, subject=subject, project=project,
                           failed=dict(plan.conflicts))

    # -- compare with what the dataset has ------------------------------------

    def _classify(self, annex: Annex, planned: list[_Session]) -> list[_Session]:
        """Split each session's planned files into new, present, changed on
        the server, and removed by the user."""
        split = []
        lookups = []  # (index in split, PlannedFile)
        for s in planned:
            new, present, removed, changed = [], [], [], {}
            known = {f["path"]: f for f in
                     self.manifests.get(s.session.id, {}).get("files", [])}
            for pf in s.plan.files:
                before = known.get(pf.path)
                if before and not os.path.lexists(self.root / pf.path) and (
                        before.get("md5") == pf.md5 or before.get("removed")):
                    # recorded, then taken out of the dataset (git rm): the
                    # user's decision, not a file to download again
                    removed.append(pf)
                elif before and before.get("md5") == pf.md5 and pf.md5:
                    present.append(pf)
                elif before and before.get("md5") and before["md5"] != pf.md5:
                    changed[pf.path] = pf.md5 or "(no digest)"
                elif os.path.lexists(self.root / pf.path):
                    lookups.append((len(split), pf))
                else:
                    new.append(pf)
            split.append((s, new, present, removed, changed, {}))
        if lookups:
            # a path already there: left by an interrupted run (same key), or not ours
            keys = annex.lookupkey([pf.path for _, pf in lookups])
            for (i, pf), key in zip(lookups, keys):
                _, _, present, _, _, failed = split[i]
                if key and pf.key and key_facts(key) == key_facts(pf.key) != (None, None):
                    # the same content: a key of an earlier version (its MD5E
                    # extension rule differed for rare names) is as good
                    present.append(pf)
                elif key and not pf.key:
                    present.append(pf)  # registered by content earlier
                else:
                    failed[pf.path] = ("the dataset already has a different file "
                                       "at this path; not replaced")
        return [replace(s, new=tuple(new), present=tuple(present), removed=tuple(removed),
                        changed=changed).failing(failed)
                for s, new, present, removed, changed, failed in split]

    # -- 2. and 3. register and fetch -------------------------------------------

    def _register(self, annex: Annex, sessions: list[_Session]) -> dict[str, str]:
        """Make the new files, with their URLs and metadata (content-less);
        returns those that failed: path -> why."""
        failed: dict[str, str] = {}
        known = [(w, pf) for w in sessions for pf in w.new if pf.key]
        unknown = [(w, pf) for w in sessions for pf in w.new if not pf.key]
        server = self.options.server
        registered = annex.register(
            [(pf.key, pf.path, server + pf.url_path, pf.metadata(w.project))
             for w, pf in known], remote=self.remote)
        for (w, pf), res in zip(known, registered):
            if not res["success"]:
                failed[pf.path] = _errors(res)
            elif res["metadata-error-messages"]:
                lgr.warning("could not set metadata of %s: %s", res["file"],
                            "; ".join(res["metadata-error-messages"]))
        if not unknown:
            return failed
        # no digest from XNAT: the content must be fetched to make a key
        for (w, pf), res in zip(unknown, annex.addurls_unknown(
                [(server + pf.url_path, pf.path) for _, pf in unknown])):
            if not res.get("success", True):
                failed[pf.path] = _errors(res)
        items = [(pf.path, pf.metadata(w.project)) for w, pf in unknown
                 if pf.path not in w.failed and pf.path not in failed]
        if items:
            for res in annex.set_metadata(items):
                if not res.get("success", True):
                    lgr.warning("could not set metadata of %s: %s",
                                res.get("file"), _errors(res))
        return failed

    def _fetch(self, annex: Annex, sessions: list[_Session]
               ) -> Generator[_Session, None, dict[str, str]]:
        """Content for every planned file that lacks it: zips, then per file.

        The rule (measured in ``benchmarks/``): a scan resource of which at
        least half the planned files, and at least two, lack content comes
        as one zip stream, every entry verified (:mod:`.bulk`); everything
        else, and whatever a zip did not deliver intact, comes per file
        through the ``fmrif`` special remote, which retries and resumes.

        Yields each session, with the files this step failed, as soon as
        every file of it that lacked content has it, verified, or has
        failed, while the other sessions' fetches go on (so that its result
        can be reported then); returns every file it failed: path -> why.
        """
        from datalad.log import log_progress

        failed: dict[str, str] = {}
        todo = [(i, pf) for i, w in enumerate(sessions) for pf in w.new + w.present
                if pf.path not in w.failed]
        have = annex.find_present([pf.path for _, pf in todo])
        missing = [(i, pf) for i, pf in todo if pf.path not in have]
        owner = {pf.path: i for i, pf in missing}  # path -> its session's index
        # session index -> its paths still to fetch (or to fail)
        waiting: dict[int, set[str]] = {i: set() for i in range(len(sessions))}
        for i, pf in missing:
            waiting[i].add(pf.path)

        def settled(paths) -> Iterator[_Session]:
            for path in paths:
                waiting.get(owner[path], set()).discard(path)
            for i, w in enumerate(sessions):
                if waiting.get(i) == set():
                    del waiting[i]
                    w = w.failing(failed)
                    yield replace(w, refetched=tuple(
                        pf.path for pf in w.present
                        if pf.path in owner and pf.path not in w.failed))

        yield from settled([])  # sessions with nothing to fetch
        if not missing:
            return failed
        zipped = _bulk_share([pf for w in sessions for pf in w.plan.files],
                             {pf.path for _, pf in missing})
        total = sum(pf.size for _, pf in missing)
        pid = f"fmrif-download-{id(self)}"
        log_progress(lgr.info, pid, "Fetching content from %s", self.options.server,
                     total=total, label="Downloading", unit=" Bytes")
        lock = threading.Lock()

        def advance(step: int, what: str):
            if step > 0:
                with lock:  # zips stream in threads of their own
                    log_progress(lgr.info, pid, "%s", what, update=step,
                                 increment=True, noninteractive_level=logging.DEBUG)

        done: dict[str, int] = {}

        def progress(record):
            key = record.get("action", {}).get("file") or record.get("file")
            if not key:
                return
            now = int(record.get("byte-progress", 0) or 0)
            step, done[key] = now - done.get(key, 0), now
            advance(step, key)

        try:
            fetched: set[str] = set()
            if zipped:
                steps = bulk.fetch_stepwise(self.xnat, annex, zipped, jobs=self.options.jobs,
                                            progress=lambda n: advance(n, "zip"))
                while True:
                    try:
                        arrived = next(steps)
                    except StopIteration as end:
                        result = end.value
                        break
                    yield from settled(arrived)
                fetched.update(result.done)
                for path, why in result.failed.items():
                    if result.stopped:  # per file would meet the same pages
                        failed[path] = why
                    lgr.debug("%s: per file, because %s", path, why)
                # in the annex, or failed for good (not to be fetched per file)
                yield from settled(result.done + [p for p in result.failed if p in failed])
            rest = [pf.path for _, pf in missing
                    if pf.path not in fetched and pf.path not in failed]
            for res in annex.get(rest, jobs=self.options.jobs, progress=progress):
                path = res.get("file")
                if path in owner and not res.get("success", False):
                    failed[path] = _errors(res) or "transfer failed"
                if path in owner:
                    yield from settled([path])
        finally:
            log_progress(lgr.info, pid, "Finished fetching content")
        return failed

    # -- 4. record and commit ---------------------------------------------------

    def _record(self, sessions: list[_Session]) -> list[str]:
        """Write the manifests that change; returns their paths."""
        written = []
        for w in sessions:
            previous = self.manifests.get(w.session.id)
            manifest = session_manifest(
                w.plan, server=self.options.server, project=w.project,
                time=self.time,
                subject_label=w.subject.label if self.options.keep_labels else None,
                previous=previous, changed=w.changed,
                left_out={pf.path for pf in w.new if pf.path in w.failed},
                removed={pf.path for pf in w.removed},
                options=self.options.plan)
            if manifest != previous:
                written.append(write_manifest(self.root, manifest))
        return written

    def _commit(self, sessions: list[_Session], files: list[str], records: list[str],
                summary: dict) -> dict | None:
        """Two commits: the files, then the manifests with the run record.

        ``datalad rerun`` unlocks every file the commit it repeats added or
        changed, which for annexed files means copying their content. With
        the files in their own commit, the run record commit changes only
        the manifests, and a rerun costs nothing but the new downloads.
        """
        if not records:
            # nothing new to record means no new file either (a new file
            # changes its session's manifest)
            return (self._save(files, self._files_message(sessions, summary))
                    if files else None)
        record = self._run_record_message(sessions, summary)
        pending = _PendingRecord(self.root)
        if files:
            # the run record must not be lost if the run dies between the
            # two commits: the next run commits it (_finish_pending_record)
            pending.write(self._files_message(sessions, summary), record, records)
            _phase("commit-files")
            failure = self._save(files, self._files_message(sessions, summary))
            if failure:
                pending.remove()
                return failure
        _phase("commit-record")
        failure = self._save(records, record)
        pending.remove()
        return failure

    def _files_message(self, sessions: list[_Session], summary: dict) -> str:
        n = summary["counts"]["new"]
        return (f"Add {n} files of {len(sessions)} XNAT sessions from "
                f"{self.options.server}\n\nMade by datalad fmrif-download; its "
                "record is in the next commit.")

    def _run_record_message(self, sessions: list[_Session], summary: dict) -> str:
        server = self.options.server
        extra = {
            "server": server,
            "xnat_version": self.xnat.xnat_version,
            "datalad_fmrif_version": __version__,
            "subjects_sha256": subjects_digest(self.subjects.requests,
                                               keep_labels=self.options.keep_labels),
            "options": dict(options_record(self.options.plan),
                            keep_labels=self.options.keep_labels,
                            no_content=self.options.no_content),
            "sessions": sorted(w.session.id for w in sessions),
            "counts": summary["counts"],
            "bytes": summary["bytes"],
            "time": self.time,
        }
        n = summary["counts"]
        message = self.options.message or (
            f"Download {n.get('new', 0)} new files of {len(sessions)} sessions "
            f"from {server}")
        dsid = self.ds.id or ""
        if self.options.superdataset_id:
            dsid = extra["superdataset"] = self.options.superdataset_id
            message += (f"\n\nPart of a download into the superdataset {dsid}, "
                        "whose command this is: run 'datalad rerun' there, not "
                        "here.\n")
        record = run_record(self.options.command, dsid, extra)
        return run_record_message(message, record)

    def _finish_pending_record(self) -> dict | None:
        """Commit the run record of a run that died right after committing
        its files (see :class:`_PendingRecord`); forget one whose files
        commit was never made (this run records those files itself)."""
        pending = _PendingRecord(self.root)
        doc = pending.read()
        if doc is None:
            return None
        failure = None
        if pending.files_committed(doc):
            paths = [p for p in doc["paths"] if os.path.lexists(self.root / p)]
            lgr.info("committing the run record of an interrupted fmrif-download")
            failure = self._save(paths, doc["message"])
        if failure is None:
            pending.remove()
        return failure

    def _save(self, paths: list[str], message: str) -> dict | None:
        """Commit exactly ``paths``: with git itself where annexed files are
        plain symlinks (``datalad save`` spends seconds per thousand files
        finding out what ``git commit`` already knows), else with ``datalad
        save``, which also carries commits over from an adjusted branch (and
        keeps DataLad's fake dates, where a test set-up asks for them)."""
        annex = Annex(self.root)
        if commits_plainly(self.ds, annex):
            try:
                annex.commit(paths, message)
            except AnnexError as e:
                return self._result("error", f"saving the dataset failed: {e}",
                                    type="dataset")
            return None
        res = self.ds.save(path=paths, message=message, result_renderer="disabled",
                           return_type="list", on_failure="ignore")
        bad = [r for r in res if r.get("status") not in ("ok", "notneeded")]
        if bad:
            return self._result("error", "saving the dataset failed: "
                                + "; ".join(str(r.get("message")) for r in bad),
                                type="dataset")
        return None

    # -- the run ------------------------------------------------------------------

    def run(self) -> Iterator[dict]:
        """The steps of the module docstring, each announced by
        :func:`_phase`; a run interrupted anywhere is completed by the next.

        Call it holding :func:`.runguard.dataset_lock` (the command does).
        """
        annex = Annex(self.root)
        if not self.options.dry_run:
            _phase("repair")
            # what a killed run left: records it wrote but git-annex did not
            # merge, content it moved in but did not record, a run record
            # it did not commit after committing its files
            annex.merge_leftover_logs()
            annex.record_unrecorded()
            remove_unfinished_manifests(self.root)
            failure = self._finish_pending_record()
            if failure:
                yield failure
                return
        _phase("plan")
        sessions = yield from self._plan()
        sessions = self._classify(annex, sessions)
        if self.options.dry_run:
            yield from self._session_results(map(self._settled, sessions), planned=True)
            return
        # what an interrupted run registered but did not commit is finished
        # (or, without its content, taken out again) like a new file, and
        # registered again: that run may have died, or met a full disk,
        # before git-annex recorded its URLs and metadata
        unsaved = _unsaved(self.root)
        sessions = [replace(w, new=w.new + tuple(pf for pf in w.present if pf.path in unsaved),
                            present=tuple(pf for pf in w.present if pf.path not in unsaved))
                    for w in sessions]
        if sessions:
            # always, not only when something looks new: files registered
            # by an interrupted run must be registered on this remote again
            # (never on git-annex's web remote), and a remote whose set-up
            # was interrupted is set up again here
            _phase("remote")
            self.remote = ensure_remote(annex, self.options.server, self.options.credential)
        _phase("register")
        failed = self._register(annex, sessions)
        sessions = [w.failing(failed) for w in sessions]
        reported: set[str] = set()  # IDs of the sessions whose result is out
        if not self.options.no_content:
            _phase("fetch")
            bulk.remove_stale(self.root)  # left by a run that was killed
            fetching = self._fetch(annex, sessions)
            while True:
                try:
                    complete = next(fetching)
                except StopIteration as end:
                    failed = end.value
                    break
                # all its content is in the annex, verified (or failed):
                # its result need not wait for the other sessions (and says
                # nothing of the commit, which comes after all of them)
                reported.add(complete.session.id)
                yield from self._session_results([self._settled(complete)], planned=False)
            sessions = [w.failing(failed) for w in sessions]
        sessions = [self._settled(w) for w in sessions]
        # a file enters the dataset only with verified content (or, with
        # --no-content, a registration that worked): take out the rest
        _phase("discard")
        annex.discard([path for w in sessions for pf in w.new
                       if (path := pf.path) in w.failed])
        results = list(self._session_results(
            [w for w in sessions if w.session.id not in reported], planned=False))
        failures.record(self.root, {p: why for w in sessions for p, why in w.failed.items()},
                        [pf.path for w in sessions for pf in w.plan.files])
        summary = _summary(sessions)
        _phase("record")
        records = self._record(sessions)
        records += sorted(p for p in unsaved
                          if p.startswith(MANIFEST_DIR + "/") and p.endswith(".json")
                          and p not in records)
        if records:
            records.append(".datalad/fmrif/.gitattributes")
        files = [pf.path for w in sessions for pf in w.new if pf.path not in w.failed]
        failure = self._commit(sessions, files, records, summary)
        _phase("done")
        yield from results
        if failure:
            yield failure

    def _settled(self, w: _Session) -> _Session:
        """The session with the files XNAT no longer lists (its last step)."""
        return replace(w, missing=self._missing_on_server(w))

    def _missing_on_server(self, w: _Session) -> dict[str, str]:
        """Files of the session's manifest that XNAT no longer lists and the
        dataset still has: path -> since when (reported on every run until
        the user takes the file out, or it comes back on XNAT)."""
        listed = {pf.path for pf in w.plan.files}
        entries = self.manifests.get(w.session.id, {}).get("files", [])
        return {e["path"]: e.get("missing_on_server", self.time) for e in entries
                if e["path"] not in listed and not e.get("removed")
                and os.path.lexists(self.root / e["path"])}

    def _session_results(self, sessions: Iterable[_Session],
                         planned: bool) -> Iterator[dict]:
        """The results of settled sessions (:meth:`_settled`)."""
        for w in sessions:
            s = w.session
            where = w.plan.folder or common_dir([pf.path for pf in w.plan.files])
            n = _counts(w)
            fields = dict(
                type="session", xnat_session_id=s.id, xnat_subject_id=s.subject_id,
                xnat_project=w.project, subject=w.plan.subject, session=w.plan.session,
                files_new=n["new"], files_present=n["present"],
                files_changed=n["changed"], files_failed=n["failed"],
                files_excluded=n["excluded"], files_removed=n["removed"],
                files_missing_on_server=n["missing_on_server"],
                files_refetched=n["refetched"],
                bytes=sum(pf.size for pf in w.plan.files),
                bytes_new=sum(pf.size for pf in w.new if pf.path not in w.failed),
                dry_run=planned, no_content=self.options.no_content,
            )
            for path, why in sorted(w.failed.items()):
                yield self._result("error", why, path=path, type="file",
                                   xnat_session_id=s.id)
            for path, md5 in sorted(w.changed.items()):
                yield self._result(
                    "impossible", f"changed on XNAT (now MD5 {md5}); the dataset "
                    "keeps its version, see the session manifest", path=path,
                    type="file", xnat_session_id=s.id)
            for path, since in sorted(w.missing.items()):
                yield self._result(
                    "ok", f"no longer listed by XNAT (since {since}); the dataset "
                    "keeps its copy ('git rm' it to let it go)", path=path,
                    type="file", state="deleted", xnat_session_id=s.id)
            known = self.manifests.get(s.id, {}).get("files", [])
            noticed = {e["path"] for e in known if e.get("removed")}
            for pf in w.removed:
                if pf.path not in noticed:  # once: the manifest remembers it
                    yield self._result(
                        "ok", "removed from the dataset, so not downloaded "
                        "again (restore the file from git to have it back)",
                        path=pf.path, type="file", state="removed",
                        xnat_session_id=s.id)
            if w.failed and not planned:
                status = "error"
            elif n["new"] or n["refetched"] or w.failed:
                status = "ok"
            else:  # nothing to do, in a dry run as in a download
                status = "notneeded"
            yield self._result(status, session_message(
                s.id, new=n["new"], new_bytes=fields["bytes_new"],
                present=n["present"], excluded=n["excluded"], refetched=n["refetched"],
                excluded_series=excluded_series(w.plan), dry_run=planned,
                no_content=self.options.no_content,
                others={label: n[what] for what, label in (
                    ("failed", "failed"), ("changed", "changed on XNAT"),
                    ("removed", "removed from the dataset"),
                    ("missing_on_server", "no longer on XNAT"))}),
                path=where, **fields)


def _subjects_on_lines(requests: list[SubjectRequest]) -> str:
    """Several subjects of the list, by line: never by label (an identifier)."""
    lines = ", ".join(str(r.line) for r in requests)
    return f"{len(requests)} subjects (lines {lines} of the list)"


def _phase(name: str) -> None:
    """Announce a step of the run (at debug level). A boundary between two
    steps is where an interrupt is most likely to leave something behind;
    the reliability tests wait for these lines to interrupt a run there."""
    lgr.debug("fmrif-download phase: %s", name)


class _PendingRecord:
    """The run record of a run between its files commit and its record commit.

    Written to ``.git/fmrif/pending-run-record.json`` just before the files
    commit, with the commit that was HEAD then; removed after the record
    commit. A run that finds it (the previous one was killed in between)
    commits the record if HEAD is exactly that files commit on top of the
    remembered one, and forgets it otherwise.
    """

    NAME = "pending-run-record.json"

    def __init__(self, root: Path):
        self.root = root
        self.path = Annex(root)._own_dir() / self.NAME

    def write(self, files_message: str, message: str, paths: list[str]) -> None:
        head = _git_out(self.root, "rev-parse", "--verify", "-q", "HEAD")
        doc = {"head": head, "files_subject": files_message.splitlines()[0],
               "message": message, "paths": paths}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, self.path)

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:  # not ours, or damaged: nothing to finish
            self.remove()
            return None

    def files_committed(self, doc: dict) -> bool:
        parent = _git_out(self.root, "rev-parse", "--verify", "-q", "HEAD^")
        subject = _git_out(self.root, "log", "-1", "--format=%s", "HEAD")
        return bool(doc.get("head")) and parent == doc["head"] \
            and subject == doc.get("files_subject")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _git_out(root: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          encoding="utf-8", errors="surrogateescape").stdout.strip()


def _counts(w: _Session) -> dict[str, int]:
    """Each planned file counted once: new (added by this run), present
    (in the dataset, whole), failed, changed on XNAT, removed by the user;
    and the files the plan excluded and those XNAT no longer lists."""
    return {
        "new": sum(pf.path not in w.failed for pf in w.new),
        "present": sum(pf.path not in w.failed for pf in w.present),
        "changed": len(w.changed),
        "failed": len(w.failed),
        "excluded": len(w.plan.excluded),
        "removed": len(w.removed),
        "missing_on_server": len(w.missing),
        "refetched": len(w.refetched),
    }


def _summary(work: list[_Session]) -> dict:
    counts: dict[str, int] = {}
    sizes = {"new": 0, "present": 0}
    for w in work:
        for k, v in _counts(w).items():
            counts[k] = counts.get(k, 0) + v
        sizes["new"] += sum(pf.size for pf in w.new if pf.path not in w.failed)
        sizes["present"] += sum(pf.size for pf in w.present if pf.path not in w.failed)
    return {"counts": counts, "bytes": sizes}


def _bulk_share(planned: list, missing: set[str]) -> list:
    """The planned files to fetch in zips: those lacking content in resources
    of which at least half the planned files, and at least two, lack it (a
    zip carries the whole resource, so a few missing files of a large one
    are cheaper one by one). Files without an XNAT digest never go in bulk."""
    by_folder: dict[str, list] = {}
    for pf in planned:
        by_folder.setdefault(pf.url_path.partition("/files/")[0], []).append(pf)
    share = []
    for files in by_folder.values():
        lacking = [pf for pf in files if pf.path in missing and pf.key and pf.md5]
        if len(lacking) >= 2 and 2 * len(lacking) >= len(files):
            share += lacking
    return share


def _unsaved(root: Path) -> set[str]:
    """Paths that differ from HEAD: staged, changed or untracked."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames"],
        cwd=root, capture_output=True, text=True, encoding="utf-8",
        errors="surrogateescape", check=True).stdout
    return {entry[3:] for entry in out.split("\0") if entry}


def _errors(res: dict) -> str:
    msgs = res.get("error-messages") or []
    return "; ".join(m.strip() for m in msgs if m.strip())


def command_line(argv: list[str]) -> str:
    return shlex.join(argv)
