"""The sentences of the results: counts that agree with their nouns, sizes,
the verb of what a run did (pure functions, no sandbox)."""

from __future__ import annotations

import pytest

from datalad_fmrif.commands.list import COLUMNS, csv_row_text
from datalad_fmrif.report import (
    download_summary,
    excluded_text,
    plural,
    session_message,
    size_text,
    status_line,
    status_summary,
)


def test_plural_agrees_with_the_count():
    assert plural(1, "session") == "1 session"
    assert [plural(n, "file") for n in (0, 2)] == ["0 files", "2 files"]


@pytest.mark.parametrize("n, text", [
    (0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1024, "1.0 KB"),
    (40960, "40.0 KB"), (3 * 1024 ** 3 // 2, "1.5 GB"), (5 * 1024 ** 4, "5.0 TB"),
])
def test_size_text(n, text):
    assert size_text(n) == text


def test_excluded_text_names_files_and_a_few_series():
    assert excluded_text(1, ["REQUISITION"]) == "1 file excluded (series REQUISITION)"
    assert excluded_text(0) == "0 files excluded"
    many = excluded_text(9, ["A", "B", "C", "D", "E", "F"])
    assert many == "9 files excluded (series A, B, C, D and 2 more)"


def test_session_message_says_what_the_run_did():
    counts = dict(new=1, new_bytes=4096, present=0, excluded=1,
                  excluded_series=["SAVE"])
    assert session_message("E1", dry_run=True, **counts) == (
        "session E1: would download 1 new file (4.0 KB), 0 already present, "
        "1 file excluded (series SAVE)")
    assert "registered 1 new file" in session_message("E1", no_content=True, **counts)
    assert "would register" in session_message("E1", dry_run=True, no_content=True,
                                               **counts)
    assert "downloaded 1 new file" in session_message("E1", **counts)


def _session(status="ok", **fields):
    base = dict(status=status, files_new=0, bytes_new=0, files_present=0,
                files_changed=0, files_failed=0, files_excluded=0)
    return dict(base, **fields)


def test_download_summary():
    sessions = [_session(files_new=10, bytes_new=40960, files_excluded=1, dry_run=True),
                _session("notneeded", files_excluded=11, dry_run=True)]
    assert download_summary(sessions) == (
        "Dry run, nothing changed. 2 sessions (1 with nothing new, not listed "
        "above): 10 new files (40.0 KB) to download, 0 already present, "
        "0 changed on XNAT, 0 failed, 12 files excluded")
    one = download_summary([_session(files_new=1, bytes_new=10, no_content=True)])
    assert one.startswith("1 session: 1 new file (10 bytes) registered, content "
                          "not downloaded,")
    back = download_summary([_session(files_present=5, files_refetched=3),
                             _session("notneeded", files_present=2)])
    assert ("7 already present (3 of them fetched again: their content was not "
            "here), 0 changed") in back


def test_status_line_puts_the_state_first_like_datalad_status():
    assert status_line("untracked", "sub-P01/ses-03", "session") == \
        "untracked: sub-P01/ses-03 (session)"
    assert status_line("modified", "a/b.dcm", "file", "MD5 x") == \
        " modified: a/b.dcm (file) [MD5 x]"
    assert status_summary({"untracked": 1, "clean": 3}) == \
        "4 sessions checked against XNAT: 3 as recorded, 1 untracked"
    assert status_summary({}) == ""


def test_csv_rows_end_lines_on_a_terminal_only():
    rows = [dict(row=1, project="P", subject="A"), dict(row=2, project="P", subject="B")]
    columns = COLUMNS["subject"]
    piped = "".join(csv_row_text(columns, r, terminal=False) for r in rows)
    assert piped == '"Project","Subject"\r\n"P","A"\r\n"P","B"'
    shown = "".join(csv_row_text(columns, r, terminal=True) for r in rows)
    assert shown == '"Project","Subject"\n"P","A"\n"P","B"\n'
