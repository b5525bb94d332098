"""``datalad fmrif-list``: a project's subjects or sessions, as the CSV that
``fmrif-download`` reads.

The output has the form of XNAT's Processing Dashboard export (every field
double-quoted, CRLF between lines, no final line end), so that what one
command writes the other reads unchanged, and a spreadsheet opens it like
the file people already know. Labels in it (MRNs, names, accession numbers)
identify study participants: a file written with ``-o`` is readable by its
owner only, and existing files are never overwritten.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from datalad_next.commands import (
    EnsureCommandParameterization,
    Parameter,
    ParameterConstraintContext,
    ValidatedInterface,
    build_doc,
    datasetmethod,
    eval_results,
    get_status_dict,
)
from datalad_next.constraints import (
    Constraint,
    EnsureBool,
    EnsureDataset,
    EnsureStr,
    WithDescription,
)

from ..credentials import (
    CredentialError,
)
from ..inputs import CommittableInput, refuse_if_committable
from ..xnat.catalog import project_sessions, project_subjects, session_files
from ..xnat.errors import AccessDenied, NotFound, XnatError
from ..xnat.session import XnatSession
from ._common import command_config, xnat_session

lgr = logging.getLogger("datalad.fmrif.commands.list")

ACTION = "fmrif-list"

#: CSV header -> result record field, per kind of row. "Accession ID", not
#: "Session ID": fmrif-download reads a column named "Session ID" as the
#: session filter, and the listing already has one (the label).
COLUMNS = {
    "subject": (("Project", "project"), ("Subject", "subject")),
    "session": (("Project", "project"), ("Subject", "subject"),
                ("Session", "session"), ("Accession ID", "session_id"),
                ("Date", "date"), ("Scans", "scans"), ("Files", "files"),
                ("Size", "size")),
}
#: file listings in flight at once: fast enough, and polite to the server
LISTING_WORKERS = 4
PROJECT_ID = r"[A-Za-z0-9_-]+\Z"  # EnsureStr matches a prefix only
ISO_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
IDENTIFIERS = ("it holds identifiers of study participants (subject labels "
               "are MRNs or names)")


# -- the CSV -----------------------------------------------------------------------


def csv_line(values) -> str:
    """One line as XNAT exports it: every field double-quoted."""
    return ",".join('"' + str(v).replace('"', '""') + '"' for v in values)


def csv_text(kind: str, rows: list[dict]) -> str:
    """Header and rows, separated by CRLF, without a final line end."""
    columns = COLUMNS[kind]
    lines = [csv_line(header for header, _ in columns)]
    lines += [csv_line(row[field] for _, field in columns) for row in rows]
    return "\r\n".join(lines)


def csv_row_text(columns, res: dict, *, terminal: bool) -> str:
    """A row result as standard output gets it, the header before the first.

    To a file or pipe: the export format (CRLF between lines, none after the
    last), so that ``> FILE`` is byte for byte what ``-o FILE`` writes. To a
    terminal: lines that end with a newline, so the prompt starts on a line
    of its own.
    """
    line = csv_line(res.get(field, "") for _, field in columns)
    if terminal:
        head = csv_line(h for h, _ in columns) + "\n" if res["row"] == 1 else ""
        return head + line + "\n"
    if res["row"] == 1:
        return csv_line(h for h, _ in columns) + "\r\n" + line
    return "\r\n" + line


# -- what XNAT holds -------------------------------------------------------------------


def _session_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _in_range(session, since: date | None, until: date | None) -> bool:
    if since is None and until is None:
        return True
    day = _session_date(session.date)
    if day is None:
        return False  # no date: cannot be said to be in any range
    return (since is None or day >= since) and (until is None or day <= until)


def list_subjects(xnat: XnatSession, project: str, since: date | None,
                  until: date | None) -> list[dict]:
    """One row per subject, by label; with a date range, only subjects with a
    session in it. One request either way: the subject listing, or with
    dates the experiment listing (it carries the subject labels too)."""
    if since is None and until is None:
        subjects = list(project_subjects(xnat, project).values())
    else:
        subjects = list({subject.id: subject
                         for subject, session in project_sessions(xnat, project)
                         if _in_range(session, since, until)}.values())
    subjects.sort(key=lambda s: s.label)
    return [{"project": project, "subject": s.label, "subject_id": s.id}
            for s in subjects]


def list_sessions(xnat: XnatSession, project: str, since: date | None,
                  until: date | None) -> list[dict]:
    """One row per session, with counts from its file listing: one request
    for the project's sessions, then one per session in range."""
    pairs = [(subject, session) for subject, session in project_sessions(xnat, project)
             if _in_range(session, since, until)]
    pairs.sort(key=lambda p: (p[0].label, p[1].date or "9999", p[1].id))

    def count(pair):
        subject, session = pair
        files, rejected = session_files(xnat, session)
        if rejected:
            lgr.warning("session %s: %d file rows of XNAT's listing were not "
                        "counted (%s)", session.id, len(rejected), rejected[0])
        return {
            "project": project, "subject": subject.label,
            "subject_id": subject.id, "session": session.label,
            "session_id": session.id, "date": session.date,
            "scans": len({f.scan_id for f in files}), "files": len(files),
            "size": sum(f.size for f in files),
        }

    with ThreadPoolExecutor(LISTING_WORKERS) as pool:
        return list(pool.map(count, pairs))


# -- parameters ------------------------------------------------------------------------


class EnsureIsoDate(Constraint):
    """A calendar date written YYYY-MM-DD."""

    def __call__(self, value) -> date:
        if isinstance(value, date):
            return value
        text = str(value).strip()
        try:
            if not re.fullmatch(ISO_DATE, text):
                raise ValueError
            return date.fromisoformat(text)
        except ValueError:
            self.raise_for(value, "not a date like 2024-01-31 (YYYY-MM-DD)")

    def short_description(self) -> str:
        return "YYYY-MM-DD"


class ListParamValidator(EnsureCommandParameterization):
    def __init__(self):
        super().__init__(
            param_constraints=dict(
                project=WithDescription(
                    EnsureStr(min_len=1, match=PROJECT_ID),
                    error_message="an XNAT project ID (FMRIF protocol "
                    "number, like 17-M-0181) has only letters, digits, '_' "
                    "and '-'"),
                dataset=EnsureDataset(installed=True,
                                      purpose="read its XNAT configuration"),
                server=EnsureStr(min_len=1),
                credential=EnsureStr(min_len=1),
                sessions=EnsureBool(),
                since=EnsureIsoDate(),
                until=EnsureIsoDate(),
                output=EnsureStr(min_len=1),
            ),
            joint_constraints={
                ParameterConstraintContext(("since", "until"), "date range"):
                    self._range,
            },
        )

    def _range(self, since, until):
        if since is not None and until is not None and since > until:
            self.raise_for(dict(since=since, until=until),
                           "--since is later than --until")
        return dict(since=since, until=until)


@build_doc
class FmrifList(ValidatedInterface):
    """List the subjects or sessions of an XNAT project as a CSV subject list

    Writes the CSV that 'datalad fmrif-download' reads, to standard output or
    with -o to a FILE: by default one row per subject with the columns of
    XNAT's Processing Dashboard export ("Project","Subject"; every field
    double-quoted, CRLF line ends; to a terminal, ordinary line ends), so
    that nobody needs to click through the web page for it. With --sessions, one row per image session: Project,
    Subject, Session (label), Accession ID, Date, Scans (scans with files),
    Files and Size (bytes) of all scan resources as XNAT lists them
    (session-level resources such as physio are not counted); nothing is
    downloaded. The Session column is a session filter for fmrif-download:
    it fetches exactly the sessions listed, and a session added on XNAT later
    only after listing again.

    --since and --until (inclusive) keep the sessions acquired in that range
    (a session without a date is left out); in subject mode they keep the
    subjects with at least one such session, and fmrif-download then takes
    ALL sessions of those subjects: use --sessions to download only the
    sessions in range.

    Subject labels are MRNs or names, session labels accession numbers: the
    output identifies study participants. A FILE is created readable by its
    owner only (mode 600) and an existing one is never overwritten; keep it
    out of any dataset (a FILE inside a dataset that git does not ignore
    is refused), and take care where standard
    output goes. With '-f json' every row is a result record (type 'subject'
    or 'session') with these fields and the XNAT accession IDs.
    """

    _params_ = dict(
        project=Parameter(
            args=("project",),
            metavar="PROJECT",
            doc="""XNAT project ID (the FMRIF protocol number, e.g.
            17-M-0181)."""),
        dataset=Parameter(
            args=("-d", "--dataset"),
            doc="""dataset whose configuration (`datalad.fmrif.server`,
            `datalad.fmrif.credential`, `datalad.fmrif.ca-bundle`) to
            use. Default: the dataset at the current directory, if any, else
            the user's configuration. Nothing is written to it."""),
        server=Parameter(
            args=("--server",),
            metavar="URL",
            doc="""XNAT server. Default: git config datalad.fmrif.server, else
            https://fmrif-xnat.nimh.nih.gov"""),
        credential=Parameter(
            args=("--credential",),
            metavar="NAME",
            doc="""name of the credential stored by 'datalad fmrif-login'.
            Default: git config datalad.fmrif.credential, else derived from
            the server (fmrif-xnat)."""),
        sessions=Parameter(
            args=("--sessions",),
            action="store_true",
            doc="""one row per session, with its label, accession ID, date,
            and the number of scans, files and bytes XNAT lists for it."""),
        since=Parameter(
            args=("--since",),
            metavar="DATE",
            doc="""only sessions acquired on or after DATE (YYYY-MM-DD)."""),
        until=Parameter(
            args=("--until",),
            metavar="DATE",
            doc="""only sessions acquired on or before DATE (YYYY-MM-DD)."""),
        output=Parameter(
            args=("-o", "--output"),
            metavar="FILE",
            doc="""write the CSV to FILE (relative to the current directory;
            created with mode 600; an existing FILE is an error) instead of
            standard output."""),
    )

    _examples_ = [
        {"text": "The subject list of a project, ready for fmrif-download",
         "code_cmd": "datalad fmrif-list 17-M-0181 -o ~/secure/subjects.csv"},
        {"text": "Sessions acquired in 2024, with their size",
         "code_cmd": "datalad fmrif-list --sessions --since 2024-01-01 "
                     "--until 2024-12-31 17-M-0181"},
        {"text": "Every session as a JSON record, for a script",
         "code_cmd": "datalad -f json fmrif-list --sessions 17-M-0181"},
    ]

    _validator_ = ListParamValidator()

    # standard output carries the CSV, see custom_result_renderer()
    result_renderer = "tailored"

    @staticmethod
    @datasetmethod(name="fmrif_list")
    @eval_results
    def __call__(project, *, dataset=None, server=None, credential=None,
                 sessions=False, since=None, until=None, output=None):
        kind = "session" if sessions else "subject"

        def failed(msg, status="impossible", **kw):
            return get_status_dict(action=ACTION, status=status, type="project",
                                   project=project,
                                   message=f"cannot list project {project}: {msg}",
                                   **kw)

        if output is not None:
            # before any request: the answer does not depend on XNAT
            output = os.path.abspath(os.path.expanduser(output))
            if os.path.lexists(output):
                yield get_status_dict(
                    action=ACTION, status="impossible", type="file", path=output,
                    message=f"{output} exists; it is not overwritten (a subject "
                    "list is never replaced by accident). Remove it or choose "
                    "another file")
                return
            try:
                refuse_if_committable(output, "the output file")
            except CommittableInput as e:
                yield failed(str(e), path=output)
                return
        try:
            xnat = xnat_session(command_config(dataset), server, credential)
        except CredentialError as e:
            yield failed(str(e))
            return
        server_url = xnat.server

        listing = list_sessions if sessions else list_subjects
        try:
            with xnat:
                rows = listing(xnat, project, since, until)
        except NotFound:
            yield failed(f"XNAT at {server_url} has no project {project} (404), "
                         "or hides it from this account; check the project ID "
                         "(the FMRIF protocol number, like 17-M-0181)",
                         server=server_url)
            return
        except AccessDenied:
            yield failed(f"XNAT at {server_url} denies this account access to "
                         f"project {project} (403); ask the project owner for "
                         "access on the XNAT web page", server=server_url)
            return
        except XnatError as e:  # a rejected credential, an unreachable server...
            yield failed(str(e), status="error", server=server_url)
            return

        if not rows:
            what = "sessions" if sessions else "subjects"
            if since is not None or until is not None:
                what += " acquired" if sessions else " with a session acquired"
                if since is not None:
                    what += f" from {since.isoformat()}"
                if until is not None:
                    what += f" until {until.isoformat()}"
            yield get_status_dict(
                action=ACTION, status="notneeded", type="project",
                project=project, server=server_url,
                message=f"project {project} on {server_url} has no {what}; "
                        "nothing written")
            return
        if output is None:
            for n, row in enumerate(rows, 1):
                yield get_status_dict(action=ACTION, status="ok", type=kind,
                                      row=n, **row)
            return
        try:
            _write_new(output, csv_text(kind, rows).encode("utf-8"))
        except OSError as e:
            yield failed(f"cannot write {output}: {e.strerror}", status="error",
                         path=output)
            return
        yield get_status_dict(
            action=ACTION, status="ok", type="file", path=output,
            project=project, server=server_url, rows=len(rows),
            message=f"wrote {len(rows)} rows to {output} (mode 600); "
                    f"{IDENTIFIERS}: keep it out of any dataset")

    @staticmethod
    def custom_result_renderer(res, **kwargs):
        """Rows go to standard output as CSV, exactly; everything else
        (messages, failures) to standard error, so ``> FILE`` gets pure CSV."""
        columns = COLUMNS.get(res.get("type"))
        if (res.get("action") == ACTION and res.get("status") == "ok"
                and columns and "row" in res):
            _write_stdout(csv_row_text(columns, res, terminal=sys.stdout.isatty()))
            return
        msg = res.get("message") or ""
        if isinstance(msg, tuple):
            msg = msg[0] % msg[1:]
        sys.stderr.write(f"{res.get('action', ACTION)}({res.get('status')}): "
                         f"{msg}\n")
        sys.stderr.flush()


def _write_stdout(text: str) -> None:
    """Bytes as they are: no newline translation, whatever the platform."""
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write(text.encode("utf-8"))
    sys.stdout.flush()
    if out is not None:
        out.flush()


def _write_new(path: str, data: bytes) -> None:
    """Create *path* readable by its owner only; never replace a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError:
        os.unlink(path)
        raise
