"""``datalad fmrif-status``: is the dataset still what XNAT holds?"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from datalad_next.commands import (
    EnsureCommandParameterization,
    Parameter,
    ValidatedInterface,
    build_doc,
    datasetmethod,
    eval_results,
)
from datalad_next.constraints import EnsureListOf, EnsureStr

from .. import failures
from ..credentials import CredentialError
from ..plan import PlanError, name_sessions, plan_session, sanitize_label, session_folder
from ..provenance import (
    common_dir,
    compare_session,
    load_manifests,
    options_from_record,
)
from ..report import status_line, status_summary
from ..xnat.catalog import session_catalog, subject_sessions
from ..xnat.errors import AccessDenied, NotFound, XnatError
from ..xnat.records import Session, Subject
from ._common import (
    CREDENTIAL,
    SERVER,
    NotInDataset,
    credential_param,
    dataset_constraint,
    dataset_here,
    dataset_param,
    not_in_dataset,
    result_record,
    server_param,
    xnat_session,
)

lgr = logging.getLogger("datalad.fmrif.commands.status")

ACTION = "fmrif-status"


@build_doc
class FmrifStatus(ValidatedInterface):
    """Compare what the dataset recorded with what XNAT lists now

    Reads the session manifests the downloads wrote
    (.datalad/fmrif/sessions/) and asks XNAT for the same listings a
    download makes: one experiment listing per subject, and per session its
    scan listing and one file listing. Reports files whose MD5 changed on
    the server (state 'modified'), files and sessions XNAT no longer lists
    ('deleted'), and files and sessions on XNAT that the dataset does not
    have ('untracked'). Changes nothing; run fmrif-download to take what is
    new.

    Like 'datalad status', it writes one line per difference, the state
    first ('untracked: sub-P01/ses-03 (session)'), says nothing about
    sessions that are as recorded (state 'clean'; '-f json' shows them
    too), ends with a count of the sessions checked, and exits 0 whatever
    it found: differences are news, not failures. Scripts read the 'state'
    field of '-f json'. A non-zero exit means the check itself failed (no
    credential, XNAT unreachable).
    """

    _validator_ = EnsureCommandParameterization(dict(
        dataset=dataset_constraint("check against XNAT"),
        server=SERVER,
        credential=CREDENTIAL,
        path=EnsureListOf(EnsureStr(min_len=1)),
    ))

    _params_ = dict(
        dataset=dataset_param(
            "dataset to check. Default: the dataset of the current directory."),
        server=server_param(
            """XNAT server; default: the one the manifests name."""),
        credential=credential_param(
            """credential stored by 'datalad fmrif-login'; default:
            git config datalad.fmrif.credential, else the one the dataset's
            fmrif remote records, else derived from the server."""),
        path=Parameter(
            args=("path",),
            nargs="*",
            metavar="PATH",
            doc="""only sessions under these paths (a subject's or a
            session's folder, or a file of the session)."""),
    )

    _examples_ = [
        {"text": "Is every downloaded session still what XNAT lists?",
         "code_cmd": "datalad fmrif-status"},
        {"text": "Only the sessions of one subject",
         "code_cmd": "datalad fmrif-status sub-P01"},
        {"text": "Every session and file as a JSON record, with its 'state', "
                 "for a script",
         "code_cmd": "datalad -f json fmrif-status"},
    ]

    # the state first, like 'datalad status': see custom_result_renderer()
    result_renderer = "tailored"

    @staticmethod
    @datasetmethod(name="fmrif_status")
    @eval_results
    def __call__(path=None, *, dataset=None, server=None, credential=None):
        try:
            ds = dataset.ds if dataset else dataset_here("check against XNAT")
        except NotInDataset as e:
            yield not_in_dataset(ACTION, e)
            return
        root = Path(ds.path)

        def result(status, message, *, where=None, type="session", **fields):
            return result_record(ACTION, status, message,
                                 path=str(root / where) if where else str(root),
                                 type=type, refds=str(root), **fields)

        wanted = None
        if path:
            wanted = [str((Path.cwd() / p).resolve().relative_to(root.resolve()))
                      .rstrip("/") for p in path]
        # one dataset, or (--subdatasets) every installed subject's subdataset
        parts = []  # (dataset root, manifests of the paths, all manifests, paths)
        for where in _datasets(ds):
            inner = where.relative_to(root).as_posix() if where != root else ""
            try:
                every = manifests = load_manifests(where)
            except ValueError as e:
                yield result("error", str(e), type="dataset", exception=e)
                return
            prefixes = _inside(wanted, inner)
            if prefixes == []:
                continue
            if prefixes is not None:
                # a session by its files, or by its folder (it may have none)
                manifests = {sid: m for sid, m in manifests.items()
                             if _under(_folder(m), prefixes)
                             or any(_under(f["path"], prefixes) for f in m["files"])}
            if manifests:
                parts.append((where, manifests, every, prefixes))
        if not parts:
            yield result("notneeded", "no downloaded sessions to check",
                         type="dataset")
            return
        servers = {m["server"] for _, ms, _, _ in parts for m in ms.values()}
        if server is None and len(servers) > 1:
            yield result("impossible", "the manifests name several servers; "
                         "give --server", type="dataset")
            return
        try:
            xnat = xnat_session(ds.config, server or servers.pop(), credential,
                                dataset=ds.path)
        except CredentialError as e:
            yield result("impossible", str(e), type="dataset", exception=e)
            return

        def result_in(sub: Path):
            """Results of a subdataset: its paths, the top dataset's refds."""
            def res(status, message, *, where=None, **fields):
                return result(status, message,
                              where=str(sub / where) if where else str(sub), **fields)
            return res

        try:
            with xnat:
                for where, manifests, every, prefixes in parts:
                    yield from _check(xnat, manifests, every, prefixes,
                                      result if where == root else result_in(where),
                                      failures.load(where), where)
        except XnatError as e:
            yield result("error", str(e), type="dataset", exception=e)

    @staticmethod
    def custom_result_renderer(res, **kwargs):
        """``  untracked: sub-P01/ses-03 (session) [...]``; clean is silent."""
        from datalad.interface.utils import generic_result_renderer
        from datalad.ui import ui

        if res.get("action") == ACTION and res.get("status") == "notneeded":
            ui.message(res.get("message", ""))  # e.g. nothing to check
            return
        if (res.get("action") != ACTION or res.get("status") != "ok"
                or "state" not in res):
            generic_result_renderer(res)
            return
        if res["state"] == "clean":
            return
        path = res.get("path", "")
        if res.get("refds"):
            path = os.path.relpath(path, res["refds"])
        ui.message(status_line(res["state"], path, res.get("type", ""),
                               res.get("message", "")))

    @staticmethod
    def custom_result_summary_renderer(results):
        from datalad.ui import ui

        states: dict[str, int] = {}
        for r in results:
            if (r.get("action") == ACTION and r.get("type") == "session"
                    and r.get("state")):
                states[r["state"]] = states.get(r["state"], 0) + 1
        if states:
            ui.message(status_summary(states))


def _datasets(ds) -> list[Path]:
    """The dataset itself, or, in the layout of ``fmrif-download
    --subdatasets``, every installed subdataset of a subject."""
    from ..subdatasets import is_subdatasets_layout

    root = Path(ds.path)
    if not is_subdatasets_layout(ds):
        return [root]
    subs = ds.subdatasets(state="present", result_renderer="disabled",
                          return_type="list", on_failure="ignore")
    return sorted(Path(r["path"]) for r in subs if r.get("status") == "ok")


def _inside(wanted: list[str] | None, inner: str) -> list[str] | None:
    """The paths (relative to the top dataset) that concern the dataset at
    ``inner``, relative to it: None means all of it, [] none of it."""
    if wanted is None or not inner:
        return wanted
    out = []
    for p in wanted:
        if p in (".", inner) or inner.startswith(p + "/"):
            return None
        if p.startswith(inner + "/"):
            out.append(p[len(inner) + 1:])
    return out


def _folder(manifest: dict, session_name: str | None = None,
            session_id: str | None = None) -> str:
    """Where a session's files are (or would go) in the dataset: the folder
    its recorded path template gives it, as fmrif-download reports it."""
    values = {"subject": manifest["subject"]["name"],
              "session": session_name or manifest["session"]["name"],
              "subject_id": manifest["subject"]["id"],
              "session_id": session_id or manifest["session"]["id"],
              "project": manifest["project"]}
    folder = session_folder(options_from_record(manifest["options"]).template, values)
    if folder or session_name:
        return folder
    return common_dir([f["path"] for f in manifest["files"]])


def _new_session_names(manifests: list[dict], sessions: list[Session]) -> dict:
    """The names fmrif-download would give a subject's sessions: the XNAT
    label under --keep-labels (the manifests then record labels), else the
    next numbers in acquisition order after those already given."""
    if any("label" in m["subject"] for m in manifests):
        try:
            return {s.id: sanitize_label(s.label) for s in sessions}
        except PlanError:
            return {}
    try:
        return name_sessions(sessions, {m["session"]["id"]: m["session"]["name"]
                                        for m in manifests})
    except PlanError:
        return {}


def _under(path: str, prefixes: list[str] | None) -> bool:
    """Is the dataset path one of the given ones or under them (no paths:
    everything is)?"""
    if prefixes is None:
        return True
    return any(path == p or path.startswith(p + "/") or p == "." for p in prefixes)


def _check(xnat, manifests: dict, every: dict, prefixes, result, failed: dict,
           root: Path):
    """Check the sessions of *manifests* (those the paths selected); sessions
    on XNAT that *every* manifest of the dataset lacks are untracked, and
    reported when their folder is under the paths (*prefixes*)."""
    subjects = {}
    for m in manifests.values():
        subjects.setdefault((m["project"], m["subject"]["id"]), [])
    for m in every.values():
        key = (m["project"], m["subject"]["id"])
        if key in subjects:
            subjects[key].append(m)
    for (project, subject_id), recorded in sorted(subjects.items()):
        try:
            sessions = subject_sessions(
                xnat, Subject(project=project, id=subject_id, label=""))
        except (NotFound, AccessDenied) as e:
            folders = [_folder(m) for m in recorded]
            yield result("ok", f"subject {subject_id}: {e}", type="subject",
                         where=os.path.commonpath(folders) if all(folders) else None,
                         state="deleted", xnat_subject_id=subject_id)
            continue
        listed = {s.id: s for s in sessions}
        names = _new_session_names(recorded, sessions)
        for s in sessions:
            if s.id in every:
                continue
            where = (_folder(recorded[0], names[s.id], s.id) if s.id in names
                     else "")
            if _under(where or ".", prefixes):
                yield result("ok", f"session {s.id} is on XNAT, not in the "
                             "dataset; fmrif-download takes it", where=where,
                             state="untracked", xnat_session_id=s.id)
        for sid, m in sorted(manifests.items()):
            if m["subject"]["id"] != subject_id or m["project"] != project:
                continue
            if sid not in listed:
                yield result("ok", f"session {sid} is no longer listed by XNAT",
                             where=_folder(m), state="deleted", xnat_session_id=sid)
                continue
            try:
                yield from _check_session(xnat, m, listed[sid], result, failed, root)
            except AccessDenied as e:  # e.g. a session no longer readable
                yield result("error", str(e), where=_folder(m), xnat_session_id=sid,
                             exception=e)


def _check_session(xnat, manifest: dict, session: Session, result, failed: dict,
                   root: Path):
    options = options_from_record(manifest["options"])
    resources = [r for r in options.resources if r != "DICOM"]
    catalog = session_catalog(xnat, session, resources)
    plan = plan_session(catalog, subject=manifest["subject"]["name"],
                        session=manifest["session"]["name"],
                        project=manifest["project"], options=options)
    # a file XNAT no longer lists is reported until the user takes it out
    # of the dataset (or it comes back)
    differences = [(path, state, detail) for path, state, detail
                   in compare_session(manifest, plan)
                   if state != "deleted" or os.path.lexists(root / path)]
    for path, state, detail in differences:
        if state == "untracked" and path in failed:
            # e.g. a stale catalog: the last download said why
            detail += f"; the last download failed: {failed[path]}"
        yield result("ok", detail, where=path, type="file", state=state,
                     xnat_session_id=session.id)
    counts = {}
    for _, state, _ in differences:
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    yield result("ok", f"session {session.id}: " + (summary or "as recorded"),
                 where=_folder(manifest),
                 state="modified" if differences else "clean",
                 xnat_session_id=session.id)

