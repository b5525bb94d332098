"""CSV text as XNAT, spreadsheets and people write it: bytes in, rows out,
and rows out as XNAT's Processing Dashboard export.

Reading takes what Excel and editors make of a list (byte-order mark, UTF-16
"Unicode text", ``;`` or tab separators, CR, LF or CRLF line ends, quoted
cells over several lines, blank lines, stray spaces) and refuses the rest
with a :class:`SubjectListError` that names the line. The ``csv`` module
does the splitting (``strict``, so that a broken quote is an error and not a
guess); this module adds what it cannot say: which encoding, which
separator, and on which line an unclosed quote began.

Writing is the Dashboard's form (every field double-quoted, CRLF between
lines, no final line end), so that what ``fmrif-list`` writes,
``fmrif-download`` reads unchanged, and a spreadsheet opens it like the file
people already know.
"""

from __future__ import annotations

import csv
import io
import unicodedata

from .errors import SubjectListError
from .values import MAX_LABEL_LENGTH

MAX_BYTES = 50 * 1024 * 1024
MAX_ROWS = 100_000

_DELIMITERS = ("\t", ";", ",")  # preference on a tie: the rarest in text first
#: for a list of one column: characters that separate nothing, one of which
#: is not in the text (the csv module needs some separator)
_NO_DELIMITER = ("\x1f", "\x1e", "\x1d", "\x1c")


# -- bytes -> text ---------------------------------------------------------------


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


# -- text -> rows -------------------------------------------------------------------


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


def rows(data: bytes) -> list[tuple[int, list[str]]]:
    """Non-blank records of *data* as (line number, stripped cells).

    The line number is that of the record's first line; a quoted cell may
    span lines (Excel writes line breaks inside a cell that way).
    """
    text = _decode(data)
    # lines split at CR, LF and CRLF only, their ends kept for csv
    lines = io.StringIO(text, newline="").readlines()
    delimiter = _sniff_delimiter(lines)
    if delimiter is None:
        delimiter = next((c for c in _NO_DELIMITER if c not in text), "\x1f")
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"', doublequote=True,
                        skipinitialspace=True, strict=True)
    found: list[tuple[int, list[str]]] = []
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise _csv_problem(e, lines, start, delimiter, reader.line_num) from None
        cells = [c.strip() for c in cells]
        if any(cells):
            found.append((start, cells))
            if len(found) > MAX_ROWS + 1:  # + 1: a header line
                raise SubjectListError(
                    f"the subject list is too large (more than {MAX_ROWS} rows)"
                )
        start = reader.line_num + 1
    if not found:
        raise SubjectListError("the subject list is empty")
    return found


def _csv_problem(error: csv.Error, lines: list[str], start: int, delimiter: str,
                 line: int) -> SubjectListError:
    """The csv module's error, said with the line and cell to correct."""
    trouble = _quote_trouble(lines, start, delimiter)
    if trouble is None and "field limit" in str(error):
        # far longer than any label (a quote that runs away is caught above)
        return SubjectListError(
            f"a cell is longer than {MAX_LABEL_LENGTH} characters", line)
    if trouble is None:  # not a quote: say what csv says
        return SubjectListError(f"cannot be read as CSV ({error})", line)
    where, cell, never_closed = trouble
    if never_closed:
        return SubjectListError(
            "unbalanced quotes: a quoted cell starts on this line and is never closed",
            where,
        )
    return SubjectListError(
        f"unbalanced quotes: text after the closing quote of cell {cell}", where
    )


def _quote_trouble(lines: list[str], start: int,
                   delimiter: str) -> tuple[int, int, bool] | None:
    """Where the record that starts on line *start* breaks the quoting rules
    that ``csv.reader(strict=True, skipinitialspace=True)`` applies: (line,
    cell, True) for a quote never closed (csv only says "unexpected end of
    data", at the end of the file), (line, cell, False) for text after a
    closing quote; None if the quotes are fine."""
    state, opened, cell = "start", start, 1
    for number, line in enumerate(lines[start - 1:], start):
        for ch in line:
            if state == "quoted":
                if ch == '"':
                    state = "closed"
            elif state == "closed" and ch == '"':
                state = "quoted"  # a doubled quote inside the cell
            elif ch == delimiter:
                state, cell = "start", cell + 1
            elif ch in "\r\n":
                return None  # the record ends
            elif state == "closed":
                return number, cell, False
            elif state == "start" and ch == '"':
                state, opened = "quoted", number
            elif state == "start" and ch == " ":
                pass
            else:
                state = "unquoted"
    return (opened, cell, True) if state == "quoted" else None


# -- rows -> text ---------------------------------------------------------------------

#: the columns ``fmrif-list`` writes, per kind of row: CSV header -> field
#: of a listing row. "Accession ID", not "Session ID": the reader takes a
#: column named "Session ID" as the session filter, and the listing already
#: has one (the label).
COLUMNS = {
    "subject": (("Project", "project"), ("Subject", "subject")),
    "session": (("Project", "project"), ("Subject", "subject"),
                ("Session", "session"), ("Accession ID", "session_id"),
                ("Date", "date"), ("Scans", "scans"), ("Files", "files"),
                ("Size", "size")),
}


def csv_line(values) -> str:
    """One line as XNAT exports it: every field double-quoted."""
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="").writerow(
        [str(v) for v in values])
    return out.getvalue()


def csv_text(columns, rows: list[dict]) -> str:
    """Header and rows, separated by CRLF, without a final line end.

    *columns*: (header, field of a row) pairs.
    """
    lines = [csv_line(header for header, _ in columns)]
    lines += [csv_line(row[field] for _, field in columns) for row in rows]
    return "\r\n".join(lines)


def csv_row_text(columns, res: dict, *, terminal: bool) -> str:
    """Row ``res["row"]`` (1 for the first) as standard output gets it,
    the header before the first.

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
