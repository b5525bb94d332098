"""What a project, subject and session hold, in a few listing requests.

Request budget (never one per file, never xnatpy's lazy object tree):

- one listing of a project's subjects (label -> accession ID);
- one listing of a subject's experiments;
- per session: one scan listing (types, series descriptions) and ONE file
  listing of every scan (``scans/ALL/files``, with size and MD5), plus one
  listing per selected session-level resource (``supplementary``).

Rows that are not what they claim (a URI on another host or another session,
a size that is not a number) are kept out and reported, never followed.
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, urlsplit

from .errors import (
    CredentialRejected,
    NotFound,
    NotXnat,
    ServerUnreachable,
    SessionUnreadable,
    TlsError,
    XnatError,
)
from .records import RemoteFile, Scan, Session, SessionCatalog, Subject
from .session import XnatSession

_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


def _q(value: str) -> str:
    return quote(value, safe="")


def _field(row: dict, name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value)


def project_subjects(xnat: XnatSession, project: str) -> dict[str, Subject]:
    """Subjects of a project by label (labels are unique per project)."""
    rows = xnat.result_set(f"/data/projects/{_q(project)}/subjects")
    subjects = {}
    for row in rows:
        sid, label = _field(row, "ID"), _field(row, "label")
        if sid and label:
            subjects[label] = Subject(project=project, id=sid, label=label)
    return subjects


def subject_sessions(xnat: XnatSession, subject: Subject) -> list[Session]:
    """The image sessions of a subject, oldest first."""
    rows = xnat.result_set(
        f"/data/projects/{_q(subject.project)}/subjects/{_q(subject.id)}/experiments"
    )
    sessions = []
    for row in rows:
        xsi = _field(row, "xsiType")
        eid = _field(row, "ID")
        if not eid or (xsi and not xsi.endswith("SessionData")):
            continue  # assessors and other non-image experiments
        sessions.append(Session(
            project=_field(row, "project") or subject.project,
            id=eid,
            label=_field(row, "label"),
            subject_id=subject.id,
            date=_field(row, "date"),
            xsi_type=xsi,
        ))
    sessions.sort(key=lambda s: (s.date or "9999", s.id))
    return sessions


def _scans(rows: Iterable[dict]) -> tuple[Scan, ...]:
    return tuple(
        Scan(
            id=_field(row, "ID"),
            type=_field(row, "type"),
            series_description=_field(row, "series_description"),
            quality=_field(row, "quality"),
            xsi_type=_field(row, "xsiType"),
        )
        for row in rows if _field(row, "ID")
    )


def _file_uri_pattern(server: str, session_id: str, scan_level: bool) -> re.Pattern:
    # XNAT may run below a context path (https://host/xnat/data/...)
    prefix = re.escape(urlsplit(server).path.rstrip("/"))
    eid = re.escape(_q(session_id)) + "|" + re.escape(session_id)
    scan = r"/scans/(?P<scan>[^/]+)" if scan_level else ""
    return re.compile(
        rf"^(?:{prefix})?/data/experiments/(?:{eid}){scan}"
        r"/resources/(?P<resource>[^/]+)/files/(?P<name>.+)$"
    )


def parse_file_rows(rows: Iterable[dict], *, server: str, session_id: str,
                    scan_level: bool) -> tuple[list[RemoteFile], list[str]]:
    """File rows of a listing -> records, and the reasons rows were refused.

    XNAT 1.8 lists a file's URI with its path inside the resource as
    stored, NOT URL-encoded (FileList.java): ``.../files/ECG #2.1D`` and
    ``.../files/50%41.txt`` are those names. So the URI is matched as text,
    never split at ``?`` or ``#`` and never unquoted; the one quoting
    happens when a download URL is built (:attr:`RemoteFile.path`).
    """
    pattern = _file_uri_pattern(server, session_id, scan_level)
    files, rejected = [], []
    for n, row in enumerate(rows, 1):
        uri = _field(row, "URI")
        match = None if "://" in uri.split("/files/", 1)[0] else pattern.match(uri)
        if match is None:
            rejected.append(f"row {n}: URI is not a file of session {session_id} "
                            "on this server; ignored")
            continue
        name = match["name"]
        try:
            size = int(_field(row, "Size"))
            if size < 0:
                raise ValueError
        except ValueError:
            rejected.append(f"row {n}: no valid Size; ignored")
            continue
        digest = _field(row, "digest").strip()
        files.append(RemoteFile(
            session_id=session_id,
            scan_id=match["scan"] if scan_level else None,
            resource=_field(row, "collection") or match["resource"],
            resource_id=_field(row, "cat_ID") or match["resource"],
            name=name,
            size=size,
            md5=digest.lower() if _MD5.match(digest) else "",
        ))
    return files, rejected


def session_catalog(xnat: XnatSession, session: Session,
                    session_resources: Iterable[str] = ()) -> SessionCatalog:
    """Scans and files of one session: two requests, plus one per
    session-level resource asked for.

    A session of which XNAT lists no files at all is not "nothing to do":
    XNAT 1.8 answers the file listing of a session the user cannot read, or
    whose data is gone, with 200 and an empty list, and its scan listing
    with a 500 (ScanList.java, FileList.java). Its scan listing is then
    asked for once, without retries, to tell which, and
    :class:`SessionUnreadable` says so. A session-level resource that does
    not exist lists no files (200), which is normal and silent.
    """
    base = f"/data/experiments/{_q(session.id)}"
    files, rejected = parse_file_rows(
        xnat.result_set(f"{base}/scans/ALL/files"),
        server=xnat.server, session_id=session.id, scan_level=True,
    )
    if files:
        scans = _scans(xnat.result_set(f"{base}/scans"))
    else:
        scans = _scans_of_empty_session(xnat, session)
    for label in session_resources:
        try:
            rows = xnat.result_set(f"{base}/resources/{_q(label)}/files")
        except NotFound:
            continue  # this session has no such resource
        more, why = parse_file_rows(rows, server=xnat.server,
                                    session_id=session.id, scan_level=False)
        files += more
        rejected += why
    known = {s.id for s in scans}
    orphans = [f for f in files if f.scan_id is not None and f.scan_id not in known]
    if orphans:
        # e.g. a scan added between the two listings; the next run takes it
        files = [f for f in files if f not in orphans]
        rejected += [f"{len(orphans)} file(s) of scans missing from the scan "
                     "listing; ignored"]
    return SessionCatalog(session=session, scans=scans, files=tuple(files),
                          rejected=tuple(rejected))


def _scans_of_empty_session(xnat: XnatSession, session: Session) -> tuple[Scan, ...]:
    """The scans of a session whose file listing is empty, or
    :class:`SessionUnreadable`: one request, no retries (the 500 of an
    unreadable session is XNAT's answer, not a passing fault)."""
    sid = session.id
    try:
        scans = _scans(xnat.result_set(f"/data/experiments/{_q(sid)}/scans",
                                       budget=xnat.budget(retries=0)))
    except XnatError as e:
        if isinstance(e, (CredentialRejected, ServerUnreachable, TlsError, NotXnat)):
            raise  # not this session's problem
        raise SessionUnreadable(
            f"session {sid} is listed for its subject, but XNAT lists no files "
            f"of it and cannot list its scans ({_short(e)}): you may not be "
            "allowed to read it, or its data is gone from the archive. Check "
            "whether you can open it on the XNAT web page; ask the project "
            "owner for access, or an XNAT admin where its data is") from None
    if scans:
        raise SessionUnreadable(
            f"session {sid} is listed for its subject with {len(scans)} scan(s), "
            "but XNAT lists no files of it: you may not be allowed to read its "
            "files, or they are gone from the archive. Check whether you can "
            "open it on the XNAT web page; ask the project owner for access, or "
            "an XNAT admin where its data is")
    raise SessionUnreadable(
        f"session {sid} is listed for its subject, but XNAT lists no scans and "
        "no files of it: the session is empty on XNAT")


def _short(error: Exception) -> str:
    text = str(error)
    return text.rsplit(": ", 1)[-1] if ": " in text else text


# -- a project at a glance (fmrif-list) -------------------------------------------

_SESSION_COLUMNS = "ID,label,date,xsiType,subject_ID,subject_label"


def project_sessions(xnat: XnatSession, project: str) -> list[tuple[Subject, Session]]:
    """Every image session of a project with its subject, in one request.

    XNAT's experiment listing takes ``columns=``, so the subject's label
    comes along with each session; only if the server leaves it out is the
    project's subject listing asked for too (one more request).
    """
    rows = xnat.result_set(f"/data/projects/{_q(project)}/experiments",
                           {"columns": _SESSION_COLUMNS})
    labels: dict[str, str] | None = None
    found = []
    for row in rows:
        xsi, eid = _field(row, "xsiType"), _field(row, "ID")
        subject_id = _field(row, "subject_ID")
        if not eid or not subject_id or (xsi and not xsi.endswith("SessionData")):
            continue  # assessors and other non-image experiments
        label = _field(row, "subject_label")
        if not label:
            if labels is None:
                labels = {s.id: s.label for s in project_subjects(xnat, project).values()}
            label = labels.get(subject_id, "")
            if not label:
                continue  # a subject that vanished between the two listings
        found.append((
            Subject(project=project, id=subject_id, label=label),
            Session(project=project, id=eid, label=_field(row, "label"),
                    subject_id=subject_id, date=_field(row, "date"), xsi_type=xsi),
        ))
    found.sort(key=lambda pair: (pair[1].date or "9999", pair[1].id))
    return found


def session_files(xnat: XnatSession, session: Session) -> tuple[list[RemoteFile], list[str]]:
    """Every file of every scan of a session, with size: ONE request.

    Lighter than :func:`session_catalog` (no scan listing) for callers that
    only count scans, files and bytes. Returns the files and the reasons rows
    were refused. A session without scans may answer 404: no files.
    """
    try:
        rows = xnat.result_set(f"/data/experiments/{_q(session.id)}/scans/ALL/files")
    except NotFound:
        return [], []
    return parse_file_rows(rows, server=xnat.server, session_id=session.id,
                           scan_level=True)
