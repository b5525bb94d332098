"""Subject lists and pseudonym mappings: which XNAT subjects to download,
and what to call them in the dataset.

A list is rows of cells (see :mod:`.csvfile`) with an optional header
naming the columns: Subject (required), Project, Pseudonym, Session. A plain
list has one label per line. Rows naming the same subject are merged.
Errors name the line and the column, never the label.

Pure: bytes in, records out.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from .csvfile import rows as read_rows
from .errors import SubjectListError
from .values import check_label, check_project, check_pseudonym, check_session


@dataclass(frozen=True)
class SubjectRequest:
    """One subject to download, as the list asks for it."""

    project: str | None  # None: no Project column/cell and no default given
    label: str  # XNAT subject label (MRN or name): an identifier
    pseudonym: str | None  # name to use in the dataset instead of the label
    sessions: tuple[str, ...]  # session labels or accession IDs; () = all
    line: int  # 1-based line of the (first) row naming this subject


@dataclass(frozen=True)
class SubjectList:
    requests: tuple[SubjectRequest, ...]
    notes: tuple[str, ...]  # e.g. "line 7: duplicate of line 3 (ignored)"
    sha256: str  # of the raw input bytes; the content itself holds identifiers


# -- columns ------------------------------------------------------------------

# Header cells are compared after _normalize_header(): lower case, '_' and
# '-' as spaces, runs of white space as one space.
_ROLE_NAMES = {
    "subject": {"subject", "subject label", "subjects", "label"},
    "project": {"project", "project id", "projects"},
    "pseudonym": {"pseudonym"},
    "session": {"session", "session label", "session id", "sessions"},
}
# Names that mark a line as a header although they are not used. "Subject
# ID" and "MRN" are deliberately not taken as the subject column: in XNAT a
# subject ID is an accession ID (FMRIF_S...), not a label, so guessing could
# silently look up the wrong thing; the error message says how to rename.
_OTHER_HEADER_NAMES = {
    "status", "last modified", "modified", "date", "note", "notes",
    "comment", "comments", "subject id", "mrn", "name", "id",
    "accession", "accession number", "scan date", "session date",
}
_AMBIGUOUS_SUBJECT_NAMES = {"subject id", "mrn", "name", "id"}


def _normalize_header(cell: str) -> str:
    return " ".join(cell.replace("_", " ").replace("-", " ").lower().split())


def _role(cell: str) -> str | None:
    name = _normalize_header(cell)
    for role, names in _ROLE_NAMES.items():
        if name in names:
            return role
    return None


# A cell that reads like a column name and not like a label: labels are
# MRNs (digits) or names with '^' (DOE^JANE).
_HEADER_WORD_RE = re.compile(r"[A-Za-z][A-Za-z _()/#.:-]{0,39}")


def _looks_like_header(cells: list[str], *, loose: bool = True) -> bool:
    """A first line is a header when a cell is a known column name, or
    (*loose*) when it has several cells that all read like column names."""
    if any(
        _role(c) is not None or _normalize_header(c) in _OTHER_HEADER_NAMES
        for c in cells
    ):
        return True
    words = [c for c in cells if c]
    return loose and len(words) > 1 and all(_HEADER_WORD_RE.fullmatch(c) for c in words)


# -- header -------------------------------------------------------------------

@dataclass(frozen=True)
class _Columns:
    width: int | None  # cells in the header; None: no header
    subject: int
    subject_name: str
    project: int | None = None
    project_name: str = "Project"
    pseudonym: int | None = None
    pseudonym_name: str = "Pseudonym"
    session: int | None = None
    session_name: str = "Session"


def _columns(line: int, cells: list[str], *, what: str) -> _Columns:
    """Find the columns in a header line."""
    found: dict[str, tuple[int, str]] = {}
    for index, cell in enumerate(cells):
        role = _role(cell)
        if role is None:
            continue
        if role in found:
            raise SubjectListError(
                f"two {role.capitalize()} columns ({found[role][1]!r} and "
                f"{cell!r})",
                line,
            )
        found[role] = (index, cell)
    if "subject" not in found:
        names = ", ".join(repr(c) for c in cells if c)
        ambiguous = [c for c in cells if _normalize_header(c) in _AMBIGUOUS_SUBJECT_NAMES]
        hint = (
            f"; if {ambiguous[0]!r} holds XNAT subject labels, rename it to "
            "'Subject'"
            if ambiguous
            else "; name the column of XNAT subject labels 'Subject'"
        )
        raise SubjectListError(
            f"no Subject column in the {what}; found columns: {names}{hint}", line
        )
    kw: dict = {}
    for role in ("project", "pseudonym", "session"):
        if role in found:
            kw[role] = found[role][0]
            kw[f"{role}_name"] = found[role][1]
    return _Columns(
        width=len(cells),
        subject=found["subject"][0],
        subject_name=found["subject"][1],
        **kw,
    )


def _header(rows: list[tuple[int, list[str]]], *, what: str) -> tuple[_Columns, list]:
    """Split *rows* into columns and data rows."""
    line, cells = rows[0]
    if _looks_like_header(cells):
        columns = _columns(line, cells, what=what)
        data = rows[1:]
        if not data:
            raise SubjectListError(f"the {what} is empty (a header without rows)")
        return columns, data
    if sum(1 for c in cells if c) > 1:
        raise SubjectListError(
            f"the first line of the {what} has several cells but is not a "
            "header with a 'Subject' column; add a header line (Subject, "
            "Project, Pseudonym, Session)",
            line,
        )
    return _Columns(width=None, subject=0, subject_name="subject label"), rows


def _cell(cells: list[str], index: int | None) -> str:
    if index is None or index >= len(cells):
        return ""
    return cells[index]


def _check_width(line: int, cells: list[str], columns: _Columns) -> None:
    width = columns.width if columns.width is not None else 1
    extra = [c for c in cells[width:] if c]
    if extra:
        if columns.width is None:
            raise SubjectListError(
                f"{len(cells)} cells, but the list has no header line; add a "
                "header (Subject, Project, ...) to use several columns",
                line,
            )
        raise SubjectListError(
            f"more cells ({len(cells)}) than the header has columns "
            f"({columns.width})",
            line,
        )


# -- the lists -----------------------------------------------------------------

def parse_subject_list(data: bytes, *, project: str | None = None) -> SubjectList:
    """Read a subject list (see the module docstring for accepted forms).

    *project* (the ``--project`` option) fills in rows without a project and
    must agree with every Project cell there is. Rows naming the same subject
    (same project and label) are merged: their sessions are combined, a row
    without sessions means all of them, and a plain repetition is noted.
    """
    digest = hashlib.sha256(data).hexdigest()
    if project is not None:
        project = project.strip() or None
    if project is not None:
        project = check_project(project, None, "the project option")
    columns, data_rows = _header(read_rows(data), what="subject list")

    merged: dict[tuple[str | None, str], dict] = {}
    notes: list[str] = []
    for line, cells in data_rows:
        _check_width(line, cells, columns)
        label = _cell(cells, columns.subject)
        if not label:
            raise SubjectListError(f"the {columns.subject_name} cell is empty", line)
        label = check_label(label, line, columns.subject_name)

        row_project = _cell(cells, columns.project)
        if row_project:
            row_project = check_project(row_project, line, columns.project_name)
            if project is not None and row_project != project:
                raise SubjectListError(
                    f"the {columns.project_name} cell names another project "
                    f"({row_project!r}) than the project option ({project!r})",
                    line,
                )
        else:
            row_project = project

        pseudonym = _cell(cells, columns.pseudonym) or None
        if pseudonym is not None:
            pseudonym = check_pseudonym(pseudonym, line, columns.pseudonym_name)

        sessions = tuple(
            check_session(s, line, columns.session_name)
            for s in _cell(cells, columns.session).split()
        )

        key = (row_project, label)
        earlier = merged.get(key)
        if earlier is None:
            merged[key] = {
                "line": line, "pseudonym": pseudonym, "pseudonym_line": line,
                "sessions": list(sessions), "all": not sessions,
            }
            continue
        first = earlier["line"]
        if pseudonym is not None:
            if earlier["pseudonym"] is None:
                earlier["pseudonym"] = pseudonym
                earlier["pseudonym_line"] = line
            elif earlier["pseudonym"] != pseudonym:
                raise SubjectListError(
                    f"same subject as line {earlier['pseudonym_line']} but "
                    "another pseudonym",
                    line,
                )
        if not sessions:
            if earlier["all"]:
                notes.append(f"line {line}: duplicate of line {first} (ignored)")
            else:
                notes.append(
                    f"line {line}: same subject as line {first}, without a "
                    "session: all sessions are taken"
                )
            earlier["all"] = True
        elif earlier["all"]:
            notes.append(
                f"line {line}: same subject as line {first}, which asks for all "
                "sessions: the session filter is ignored"
            )
        else:
            new = [s for s in sessions if s not in earlier["sessions"]]
            if len(new) < len(sessions):
                notes.append(
                    f"line {line}: session already requested for the same "
                    f"subject (line {first}; ignored)"
                )
            earlier["sessions"].extend(new)

    requests = tuple(
        SubjectRequest(
            project=key[0],
            label=key[1],
            pseudonym=entry["pseudonym"],
            sessions=() if entry["all"] else tuple(entry["sessions"]),
            line=entry["line"],
        )
        for key, entry in merged.items()
    )
    _check_unique_pseudonyms(requests)
    return SubjectList(requests=requests, notes=tuple(notes), sha256=digest)


def _check_unique_pseudonyms(requests: tuple[SubjectRequest, ...]) -> None:
    """Different labels must not share a pseudonym (compared ignoring case,
    as paths on macOS and Windows are). The same label in two projects may:
    it is the same person."""
    seen: dict[str, SubjectRequest] = {}
    for request in requests:
        if request.pseudonym is None:
            continue
        other = seen.setdefault(request.pseudonym.casefold(), request)
        if other.label != request.label:
            same = "the same" if other.pseudonym == request.pseudonym else (
                "a pseudonym that differs only in letter case from the"
            )
            raise SubjectListError(
                f"{same} pseudonym as line {other.line} but another subject",
                request.line,
            )


def read_pseudonyms(data: bytes) -> dict[str, str]:
    """Read a pseudonym mapping: subject label -> pseudonym.

    Two columns ``label,pseudonym``, with an optional header naming a
    Subject (or Label) and a Pseudonym column; other columns are ignored.
    The file forms accepted are those of :func:`parse_subject_list`.
    """
    rows = read_rows(data)
    line, cells = rows[0]
    # not loose: a headerless mapping may start with a name-like label,
    # which must not end up in an error message as a "column name"
    if _looks_like_header(cells, loose=False):
        columns = _columns(line, cells, what="pseudonym mapping")
        if columns.pseudonym is None:
            raise SubjectListError(
                "no Pseudonym column in the pseudonym mapping; found columns: "
                + ", ".join(repr(c) for c in cells if c),
                line,
            )
        rows = rows[1:]
        if not rows:
            raise SubjectListError("the pseudonym mapping is empty (a header without rows)")
        width, label_col, pseudo_col = columns.width, columns.subject, columns.pseudonym
        label_name, pseudo_name = columns.subject_name, columns.pseudonym_name
    else:
        width, label_col, pseudo_col = 2, 0, 1
        label_name, pseudo_name = "label", "pseudonym"

    mapping: dict[str, str] = {}
    label_line: dict[str, int] = {}
    by_pseudonym: dict[str, tuple[str, int]] = {}
    for line, cells in rows:
        if any(cells[width:]):
            raise SubjectListError(
                f"more cells ({len(cells)}) than expected ({width})", line
            )
        label = _cell(cells, label_col)
        pseudonym = _cell(cells, pseudo_col)
        if not label:
            raise SubjectListError(f"the {label_name} cell is empty", line)
        if not pseudonym:
            raise SubjectListError(f"the {pseudo_name} cell is empty", line)
        label = check_label(label, line, label_name)
        pseudonym = check_pseudonym(pseudonym, line, pseudo_name)
        if label in mapping:
            if mapping[label] != pseudonym:
                raise SubjectListError(
                    f"same label as line {label_line[label]} but another pseudonym",
                    line,
                )
            continue
        other = by_pseudonym.get(pseudonym.casefold())
        if other is not None:
            raise SubjectListError(
                f"pseudonym already given to another label on line {other[1]}"
                + ("" if mapping[other[0]] == pseudonym else " (differing only in letter case)"),
                line,
            )
        mapping[label] = pseudonym
        label_line[label] = line
        by_pseudonym[pseudonym.casefold()] = (label, line)
    return mapping


def apply_pseudonyms(subjects: SubjectList, mapping: dict[str, str]) -> SubjectList:
    """Fill in each request's pseudonym from *mapping* (label -> pseudonym).

    Every subject must be in the mapping; a pseudonym already given in the
    list must agree with it. Errors name lines, never labels.
    """
    missing: list[int] = []
    requests = []
    for request in subjects.requests:
        pseudonym = mapping.get(request.label)
        if pseudonym is None:
            missing.append(request.line)
            continue
        pseudonym = check_pseudonym(pseudonym, request.line, "the pseudonym in the mapping")
        if request.pseudonym is not None and request.pseudonym != pseudonym:
            raise SubjectListError(
                "the Pseudonym cell differs from the pseudonym mapping",
                request.line,
            )
        requests.append(replace(request, pseudonym=pseudonym))
    if missing:
        also = (
            f" (also line{'s' if len(missing) > 2 else ''} "
            f"{', '.join(str(n) for n in missing[1:])})"
            if len(missing) > 1
            else ""
        )
        raise SubjectListError(
            f"subject not in the pseudonym mapping{also}", missing[0]
        )
    requests_t = tuple(requests)
    _check_unique_pseudonyms(requests_t)
    return replace(subjects, requests=requests_t)
