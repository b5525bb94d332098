"""The subject list: which XNAT subjects to download, read from a CSV file.

The usual input is XNAT's Processing Dashboard export ``processing_data.csv``
(every field double-quoted, CRLF line ends, no final newline, header cells that
may end in a non-breaking space, a ``Project`` column only in the
cross-project view, sometimes status columns). People also edit that file in
Excel (byte-order mark, ``;`` or tab separators, UTF-16 "Unicode text", blank
lines, stray spaces) or write a plain list with one label per line. All of
these are read here; anything else is refused with a :class:`SubjectListError`
whose message names the line and the problem.

Subject labels are MRNs or names, session labels are accession numbers: they
identify study participants. Error messages and notes therefore name the line
and the column, never the label itself, because they end up in logs.

Everything here is pure: bytes in, records out.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, replace

__all__ = [
    "SubjectRequest",
    "SubjectList",
    "SubjectListError",
    "parse_subject_list",
    "read_pseudonyms",
    "apply_pseudonyms",
]

MAX_BYTES = 50 * 1024 * 1024
MAX_ROWS = 100_000
MAX_LABEL_LENGTH = 256


@dataclass(frozen=True)
class SubjectRequest:
    """One subject to download, as the list asks for it."""

    project: str | None  # None: no Project column/cell and no default given
    label: str  # XNAT subject label (MRN or name): an identifier
    pseudonym: str | None  # name to use in the dataset instead of the label
    sessions: tuple[str, ...]  # session labels or accession IDs; () = all
    line: int  # 1-based line of the (first) row naming this subject


class SubjectListError(ValueError):
    """A subject list (or pseudonym mapping) that cannot be used.

    The message starts with ``line N:`` when a line is to blame; ``line`` is
    that number (or ``None``).
    """

    def __init__(self, problem: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {problem}" if line is not None else problem)


@dataclass(frozen=True)
class SubjectList:
    requests: tuple[SubjectRequest, ...]
    notes: tuple[str, ...]  # e.g. "line 7: duplicate of line 3 (ignored)"
    sha256: str  # of the raw input bytes; the content itself holds identifiers


# --------------------------------------------------------------------------
# columns

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

_DELIMITERS = ("\t", ";", ",")  # preference on a tie: the rarest in text first

# XNAT labels use letters, digits, '_' and '-'; FMRIF subject labels are
# MRNs or names written like DOE^JANE, sometimes with spaces or dots.
_LABEL_RE = re.compile(r"[A-Za-z0-9_\-^. ]+")
_SESSION_RE = re.compile(r"[A-Za-z0-9_\-^.]+")  # several per cell: no spaces
_PROJECT_RE = re.compile(r"[A-Za-z0-9_\-]+")
_PSEUDONYM_RE = re.compile(r"[A-Za-z0-9]+")  # becomes sub-<pseudonym> (BIDS)


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


# --------------------------------------------------------------------------
# bytes -> text -> rows


def _decode(data: bytes) -> str:
    """Return the text of *data*, or raise SubjectListError."""
    if len(data) > MAX_BYTES:
        raise SubjectListError(
            f"the subject list is too large ({len(data)} bytes; at most "
            f"{MAX_BYTES} are accepted)"
        )
    if data.startswith(b"PK\x03\x04"):
        raise SubjectListError(
            "the subject list does not look like a text file (it looks like "
            "an Excel workbook or another zip file); save it as CSV"
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Excel's "Unicode text": UTF-16 with a byte-order mark
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise SubjectListError(
                "the subject list does not look like a text file (it starts "
                "like UTF-16 but is not valid UTF-16)"
            ) from None
        if "\x00" in text:
            raise SubjectListError(
                "the subject list does not look like a text file (it contains "
                "NUL characters)"
            )
        return text
    if b"\x00" in data:
        raise SubjectListError(
            "the subject list does not look like a text file (it contains NUL "
            "bytes)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        bad = e.start + start
        line = data.count(b"\n", 0, bad) + 1
        if _is_legacy_text(data):
            raise SubjectListError(
                "the subject list is not UTF-8 or UTF-16 text (perhaps "
                "Latin-1/Windows-1252); save it as 'CSV UTF-8' or as "
                "'Unicode text'",
                line,
            ) from None
        raise SubjectListError(
            "the subject list does not look like a text file (it is not "
            "UTF-8 or UTF-16 text)",
            line,
        ) from None


def _is_legacy_text(data: bytes) -> bool:
    """Whether *data* reads as Windows-1252 text without odd control bytes."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return not any(
        unicodedata.category(c) == "Cc" and c not in "\t\r\n" for c in text
    )


_LINE_END = re.compile(r"\r\n|\r|\n")


def _physical_lines(text: str) -> list[str]:
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()  # a final line end does not start another line
    return lines


def _count_outside_quotes(line: str, ch: str) -> int:
    n = 0
    quoted = False
    for c in line:
        if c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            n += 1
    return n


def _sniff_delimiter(lines: list[str]) -> str | None:
    """The separator used by the first non-blank line, or None (one column)."""
    for line in lines:
        if line.strip():
            counts = {d: _count_outside_quotes(line, d) for d in _DELIMITERS}
            best = max(_DELIMITERS, key=lambda d: counts[d])  # first on a tie
            return best if counts[best] else None
    return None


_START, _UNQUOTED, _QUOTED, _AFTER_QUOTE = range(4)


def _read_record(
    lines: list[str], i: int, delimiter: str | None
) -> tuple[list[str], int]:
    """Split the record starting at ``lines[i]`` into stripped cells.

    Returns the cells and the index of the next record's first line. Quoted
    cells may span lines (Excel writes line breaks inside a cell that way).
    """
    line = lines[i]
    if '"' not in line:  # the common case, fast
        cells = line.split(delimiter) if delimiter else [line]
        return [c.strip() for c in cells], i + 1
    cells: list[str] = []
    field: list[str] = []
    state = _START
    quote_line = i + 1
    pos = 0
    while True:
        if pos == len(line):
            if state == _QUOTED:
                i += 1
                if i == len(lines):
                    raise SubjectListError(
                        "unbalanced quotes: a quoted cell starts on this line "
                        "and is never closed",
                        quote_line,
                    )
                field.append("\n")
                line = lines[i]
                pos = 0
                continue
            cells.append("".join(field).strip())
            return cells, i + 1
        ch = line[pos]
        pos += 1
        if state == _QUOTED:
            if ch == '"':
                if pos < len(line) and line[pos] == '"':
                    field.append('"')
                    pos += 1
                else:
                    state = _AFTER_QUOTE
            else:
                field.append(ch)
        elif ch == delimiter:
            cells.append("".join(field).strip())
            field = []
            state = _START
        elif state == _START:
            if ch == '"':
                field = []  # drop white space before the opening quote
                state = _QUOTED
                quote_line = i + 1
            else:
                field.append(ch)
                if not ch.isspace():
                    state = _UNQUOTED
        elif state == _UNQUOTED:
            field.append(ch)
        elif not ch.isspace():  # _AFTER_QUOTE
            raise SubjectListError(
                f"unbalanced quotes: text after the closing quote of cell "
                f"{len(cells) + 1}",
                i + 1,
            )


def _rows(data: bytes) -> list[tuple[int, list[str]]]:
    """Non-blank records of *data* as (line number, stripped cells)."""
    text = _decode(data)
    lines = _physical_lines(text)
    delimiter = _sniff_delimiter(lines)
    rows: list[tuple[int, list[str]]] = []
    i = 0
    while i < len(lines):
        start = i + 1
        cells, i = _read_record(lines, i, delimiter)
        if any(cells):
            rows.append((start, cells))
            if len(rows) > MAX_ROWS + 1:  # + 1: a header line
                raise SubjectListError(
                    f"the subject list is too large (more than {MAX_ROWS} rows)"
                )
    if not rows:
        raise SubjectListError("the subject list is empty")
    return rows


# --------------------------------------------------------------------------
# checks of single values (never echo the value: it may identify a person)


def _describe_char(c: str) -> str:
    return repr(c) if c.isascii() and c.isprintable() else f"U+{ord(c):04X}"


def _check_value(
    value: str, *, line: int | None, column: str, allowed: re.Pattern,
    allowed_text: str
) -> str:
    """Check one value; *column* names it in messages ("Subject" -> "the
    Subject cell"; a name starting with "the " is used as it is)."""
    what = column if column.startswith("the ") else f"the {column} cell"
    if not value:
        raise SubjectListError(f"{what} is empty", line)
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise SubjectListError(
            f"{what} contains a control character", line
        )
    if len(value) > MAX_LABEL_LENGTH:
        raise SubjectListError(
            f"{what} is longer than {MAX_LABEL_LENGTH} characters",
            line,
        )
    if value[0] in "=+@" or (
        value[0] == "-" and (len(value) == 1 or not value[1].isdigit())
    ):
        raise SubjectListError(
            f"{what} looks like a spreadsheet formula (starts with "
            f"{value[0]!r}); XNAT labels do not",
            line,
        )
    if value in (".", ".."):
        raise SubjectListError(f"{what} is not an XNAT label", line)
    if not allowed.fullmatch(value):
        bad = sorted({c for c in value if not allowed.fullmatch(c)})
        raise SubjectListError(
            f"{what} contains "
            f"{', '.join(_describe_char(c) for c in bad)}; "
            f"{allowed_text}",
            line,
        )
    return value


def _check_label(value: str, line: int, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_LABEL_RE,
        allowed_text="XNAT labels use only letters, digits, '_', '-', '^', "
        "'.' and spaces",
    )


def _check_session(value: str, line: int, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_SESSION_RE,
        allowed_text="session labels and IDs use only letters, digits, '_', "
        "'-', '^' and '.' (several sessions in one cell are separated by "
        "spaces)",
    )


def _check_project(value: str, line: int | None, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_PROJECT_RE,
        allowed_text="XNAT project IDs use only letters, digits, '_' and '-'",
    )


def _check_pseudonym(value: str, line: int | None, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_PSEUDONYM_RE,
        allowed_text="pseudonyms become BIDS labels (sub-<pseudonym>) and may "
        "use only letters and digits",
    )


# --------------------------------------------------------------------------
# header


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


# --------------------------------------------------------------------------
# public functions


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
        project = _check_project(project, None, "the project option")
    columns, data_rows = _header(_rows(data), what="subject list")

    merged: dict[tuple[str | None, str], dict] = {}
    notes: list[str] = []
    for line, cells in data_rows:
        _check_width(line, cells, columns)
        label = _cell(cells, columns.subject)
        if not label:
            raise SubjectListError(f"the {columns.subject_name} cell is empty", line)
        label = _check_label(label, line, columns.subject_name)

        row_project = _cell(cells, columns.project)
        if row_project:
            row_project = _check_project(row_project, line, columns.project_name)
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
            pseudonym = _check_pseudonym(pseudonym, line, columns.pseudonym_name)

        sessions = tuple(
            _check_session(s, line, columns.session_name)
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
    rows = _rows(data)
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
        label = _check_label(label, line, label_name)
        pseudonym = _check_pseudonym(pseudonym, line, pseudo_name)
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
        pseudonym = _check_pseudonym(pseudonym, request.line, "the pseudonym in the mapping")
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
