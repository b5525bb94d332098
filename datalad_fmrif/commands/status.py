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
from datalad_next.constraints import EnsureDataset, EnsureListOf, EnsureStr

from ..credentials import CredentialError
from ..plan import plan_session
from ..provenance import (
    common_dir,
    compare_session,
    load_manifests,
    options_from_record,
)
from ..xnat.catalog import session_catalog, subject_sessions
from ..xnat.errors import AccessDenied, NotFound, XnatError
from ..xnat.records import Session, Subject
from ._common import xnat_session

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
    """

    _validator_ = EnsureCommandParameterization(dict(
        dataset=EnsureDataset(installed=True, purpose="check against XNAT"),
        server=EnsureStr(min_len=1),
        credential=EnsureStr(min_len=1),
        path=EnsureListOf(EnsureStr(min_len=1)),
    ))

    _params_ = dict(
        dataset=Parameter(
            args=("-d", "--dataset"),
            doc="dataset to check. Default: the dataset of the current directory."),
        server=Parameter(
            args=("--server",),
            metavar="URL",
            doc="""XNAT server; default: the one the manifests name."""),
        credential=Parameter(
            args=("--credential",),
            metavar="NAME",
            doc="""credential stored by 'datalad fmrif-login'; default:
            git config datalad.fmrif.credential, else derived from the server."""),
        path=Parameter(
            args=("path",),
            nargs="*",
            metavar="PATH",
            doc="""only sessions with files under these paths."""),
    )

    @staticmethod
    @datasetmethod(name="fmrif_status")
    @eval_results
    def __call__(path=None, *, dataset=None, server=None, credential=None):
        from datalad.distribution.dataset import require_dataset

        ds = dataset.ds if dataset else require_dataset(
            None, check_installed=True, purpose="check against XNAT")
        root = Path(ds.path)

        def result(status, message, *, where=None, type="session", **fields):
            return dict(action=ACTION, status=status, message=message,
                        path=str(root / where) if where else str(root),
                        type=type, refds=str(root), **fields)

        try:
            manifests = load_manifests(root)
        except ValueError as e:
            yield result("error", str(e), type="dataset")
            return
        if path:
            prefixes = [str((Path.cwd() / p).resolve().relative_to(root.resolve()))
                        .rstrip("/") for p in path]
            manifests = {
                sid: m for sid, m in manifests.items()
                if any(f["path"] == p or f["path"].startswith(p + "/") or p == "."
                       for f in m["files"] for p in prefixes)}
        if not manifests:
            yield result("notneeded", "no downloaded sessions to check",
                         type="dataset")
            return
        servers = {m["server"] for m in manifests.values()}
        if server is None and len(servers) > 1:
            yield result("impossible", "the manifests name several servers; "
                         "give --server", type="dataset")
            return
        try:
            xnat = xnat_session(ds.config, server or servers.pop(), credential)
        except CredentialError as e:
            yield result("impossible", str(e), type="dataset")
            return
        try:
            with xnat:
                yield from _check(xnat, manifests, result, root)
        except XnatError as e:
            yield result("error", str(e), type="dataset")


def _check(xnat, manifests: dict, result, root: Path):
    subjects = {}
    for m in manifests.values():
        subjects.setdefault((m["project"], m["subject"]["id"]), m["subject"]["name"])
    for (project, subject_id), name in sorted(subjects.items()):
        try:
            sessions = subject_sessions(
                xnat, Subject(project=project, id=subject_id, label=""))
        except (NotFound, AccessDenied) as e:
            yield result("ok", f"subject {subject_id}: {e}", type="subject",
                         state="deleted", xnat_subject_id=subject_id)
            continue
        listed = {s.id: s for s in sessions}
        for s in sessions:
            if s.id not in manifests:
                yield result("ok", f"session {s.id} of sub-{name} is on XNAT, not "
                             "in the dataset", state="untracked",
                             xnat_session_id=s.id)
        for sid, m in sorted(manifests.items()):
            if m["subject"]["id"] != subject_id or m["project"] != project:
                continue
            if sid not in listed:
                yield result("ok", f"session {sid} is no longer listed by XNAT",
                             state="deleted", xnat_session_id=sid)
                continue
            yield from _check_session(xnat, m, listed[sid], result, root)


def _check_session(xnat, manifest: dict, session: Session, result, root: Path):
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
        yield result("ok", detail, where=path, type="file", state=state,
                     xnat_session_id=session.id)
    counts = {}
    for _, state, _ in differences:
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    yield result("ok", f"session {session.id}: " + (summary or "as recorded"),
                 where=common_dir([f["path"] for f in manifest["files"]]),
                 state="modified" if differences else "clean",
                 xnat_session_id=session.id)
