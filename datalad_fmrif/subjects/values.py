"""Checks of single values of a subject list: labels, sessions, projects,
pseudonyms. Messages never echo the value: it may identify a person."""

from __future__ import annotations

import re
import unicodedata

from .errors import SubjectListError

MAX_LABEL_LENGTH = 256

# XNAT labels use letters, digits, '_' and '-'; FMRIF subject labels are
# MRNs or names written like DOE^JANE, sometimes with spaces or dots.
_LABEL_RE = re.compile(r"[A-Za-z0-9_\-^. ]+")
_SESSION_RE = re.compile(r"[A-Za-z0-9_\-^.]+")  # several per cell: no spaces
_PROJECT_RE = re.compile(r"[A-Za-z0-9_\-]+")
_PSEUDONYM_RE = re.compile(r"[A-Za-z0-9]+")  # becomes sub-<pseudonym> (BIDS)


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


def check_label(value: str, line: int, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_LABEL_RE,
        allowed_text="XNAT labels use only letters, digits, '_', '-', '^', "
        "'.' and spaces",
    )


def check_session(value: str, line: int, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_SESSION_RE,
        allowed_text="session labels and IDs use only letters, digits, '_', "
        "'-', '^' and '.' (several sessions in one cell are separated by "
        "spaces)",
    )


def check_project(value: str, line: int | None, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_PROJECT_RE,
        allowed_text="XNAT project IDs use only letters, digits, '_' and '-'",
    )


def check_pseudonym(value: str, line: int | None, column: str) -> str:
    return _check_value(
        value, line=line, column=column, allowed=_PSEUDONYM_RE,
        allowed_text="pseudonyms become BIDS labels (sub-<pseudonym>) and may "
        "use only letters and digits",
    )
