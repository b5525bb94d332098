"""``datalad fmrif-list``: a project's subjects or sessions, as the CSV that
``fmrif-download`` reads.

The command translates between DataLad and the library: the listing queries
are in :mod:`datalad_fmrif.xnat.listing`, the CSV (the form of XNAT's
Processing Dashboard export) is written by :mod:`datalad_fmrif.subjects`,
next to its reader. Labels in it (MRNs, names, accession numbers) identify
study participants: a file written with ``-o`` is readable by its owner
only, and existing files are never overwritten.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import date

from datalad_next.commands import (
    EnsureCommandParameterization,
    Parameter,
    ParameterConstraintContext,
    ValidatedInterface,
    build_doc,
    datasetmethod,
    eval_results,
)
from datalad_next.constraints import (
    Constraint,
    EnsureBool,
    EnsureStr,
    WithDescription,
)

from ..credentials import CredentialError
from ..inputs import CommittableInput, refuse_if_committable
from ..subjects import COLUMNS, csv_row_text, csv_text
from ..xnat.errors import AccessDenied, NotFound, XnatError
from ..xnat.listing import list_sessions, list_subjects
from ._common import (
    CONFIG_DATASET_DOC,
    CREDENTIAL,
    SERVER,
    command_config,
    credential_param,
    dataset_constraint,
    dataset_param,
    result_record,
    server_param,
    xnat_session,
)


ACTION = "fmrif-list"

PROJECT_ID = r"[A-Za-z0-9_-]+\Z"  # EnsureStr matches a prefix only
ISO_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
IDENTIFIERS = ("it holds identifiers of study participants (subject labels "
               "are MRNs or names)")


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
                dataset=dataset_constraint("read its XNAT configuration"),
                server=SERVER,
                credential=CREDENTIAL,
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
        dataset=dataset_param(CONFIG_DATASET_DOC + " Nothing is written to it."),
        server=server_param(),
        credential=credential_param(),
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
            return result_record(ACTION, status, f"cannot list project {project}: {msg}",
                                 type="project", project=project, **kw)

        if output is not None:
            # before any request: the answer does not depend on XNAT
            output = os.path.abspath(os.path.expanduser(output))
            if os.path.lexists(output):
                yield result_record(
                    ACTION, "impossible",
                    f"{output} exists; it is not overwritten (a subject "
                    "list is never replaced by accident). Remove it or choose "
                    "another file", type="file", path=output)
                return
            try:
                refuse_if_committable(output, "the output file")
            except CommittableInput as e:
                yield failed(str(e), path=output)
                return
        try:
            xnat = xnat_session(command_config(dataset), server, credential)
        except CredentialError as e:
            yield failed(str(e), exception=e)
            return
        server_url = xnat.server

        listing = list_sessions if sessions else list_subjects
        try:
            with xnat:
                rows = listing(xnat, project, since, until)
        except NotFound as e:
            yield failed(f"XNAT at {server_url} has no project {project} (404), "
                         "or hides it from this account; check the project ID "
                         "(the FMRIF protocol number, like 17-M-0181)",
                         server=server_url, exception=e)
            return
        except AccessDenied as e:
            yield failed(f"XNAT at {server_url} denies this account access to "
                         f"project {project} (403); ask the project owner for "
                         "access on the XNAT web page", server=server_url,
                         exception=e)
            return
        except XnatError as e:  # a rejected credential, an unreachable server...
            yield failed(str(e), status="error", server=server_url, exception=e)
            return

        if not rows:
            what = "sessions" if sessions else "subjects"
            if since is not None or until is not None:
                what += " acquired" if sessions else " with a session acquired"
                if since is not None:
                    what += f" from {since.isoformat()}"
                if until is not None:
                    what += f" until {until.isoformat()}"
            yield result_record(
                ACTION, "notneeded",
                f"project {project} on {server_url} has no {what}; nothing written",
                type="project", project=project, server=server_url)
            return
        if output is None:
            for n, row in enumerate(rows, 1):
                yield result_record(ACTION, "ok", None, type=kind, row=n, **row)
            return
        try:
            _write_new(output, csv_text(COLUMNS[kind], rows).encode("utf-8"))
        except OSError as e:
            yield failed(f"cannot write {output}: {e.strerror}", status="error",
                         path=output, exception=e)
            return
        yield result_record(
            ACTION, "ok",
            f"wrote {len(rows)} rows to {output} (mode 600); "
            f"{IDENTIFIERS}: keep it out of any dataset",
            type="file", path=output, project=project, server=server_url,
            rows=len(rows))

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
