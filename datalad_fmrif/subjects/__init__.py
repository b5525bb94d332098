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

Everything here is pure: bytes in, records out. The package, one module
per job:

- ``csvfile``: bytes -> rows (encodings, separators, quotes; the ``csv``
  module) and rows -> the Processing Dashboard's CSV, which ``fmrif-list``
  writes;
- ``values``: checks of single labels, sessions, projects, pseudonyms;
- ``lists``: the subject list and the pseudonym mapping from those rows;
- ``errors``: :class:`SubjectListError`.
"""

from __future__ import annotations

from .csvfile import COLUMNS, csv_line, csv_row_text, csv_text
from .errors import SubjectListError
from .lists import (
    SubjectList,
    SubjectRequest,
    apply_pseudonyms,
    parse_subject_list,
    read_pseudonyms,
)

__all__ = [
    "COLUMNS",
    "SubjectRequest",
    "SubjectList",
    "SubjectListError",
    "apply_pseudonyms",
    "csv_line",
    "csv_row_text",
    "csv_text",
    "parse_subject_list",
    "read_pseudonyms",
]
