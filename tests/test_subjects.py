"""Tests of datalad_fmrif.subjects: every accepted form and every refusal.

All labels are invented. Fixtures with exact bytes are in
tests/data/subjects/ (made by make_fixtures.py there).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from datalad_fmrif.subjects import (
    SubjectList,
    SubjectListError,
    SubjectRequest,
    apply_pseudonyms,
    parse_subject_list,
    read_pseudonyms,
)

DATA = Path(__file__).parent / "data" / "subjects"


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def labels(result: SubjectList) -> list[str]:
    return [r.label for r in result.requests]


def error(data: bytes, **kw) -> SubjectListError:
    with pytest.raises(SubjectListError) as info:
        parse_subject_list(data, **kw)
    return info.value


# ---------------------------------------------------------------- fixtures


def test_fixtures_have_exact_bytes():
    # the properties the other tests rely on, so a normalised checkout fails
    raw = fixture("processing_data.csv")
    assert raw.count(b"\r\n") == 3 and b"\n" not in raw.replace(b"\r\n", b"")
    assert not raw.endswith(b"\n")
    assert b'"Subject\xc2\xa0"' in raw
    assert fixture("excel_unicode.txt").startswith(b"\xff\xfe")
    assert fixture("excel_semicolon.csv").startswith(b"\xef\xbb\xbf")
    assert b"\n" not in fixture("mac_cr.csv")
    assert (DATA / ".gitattributes").read_text().split() == ["*", "-text"]


def test_processing_dashboard_export_single_project():
    data = fixture("processing_data.csv")
    result = parse_subject_list(data, project="17-M-0181")
    assert result.requests == (
        SubjectRequest("17-M-0181", "40000001", None, (), 2),
        SubjectRequest("17-M-0181", "40000002", None, (), 3),
        SubjectRequest("17-M-0181", "DOE^JANE", None, (), 4),
    )
    assert result.notes == ()
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_processing_dashboard_export_without_project_option():
    result = parse_subject_list(fixture("processing_data.csv"))
    assert [r.project for r in result.requests] == [None, None, None]


def test_processing_dashboard_cross_project_view():
    result = parse_subject_list(fixture("processing_data_cross.csv"))
    assert [(r.project, r.label, r.line) for r in result.requests] == [
        ("17-M-0181", "40000001", 2),
        ("17-M-0181", "40000002", 3),
        ("01-M-0192", "40000001", 4),  # same label, other project: not a duplicate
    ]
    assert result.notes == ()


def test_project_option_contradicting_a_row_is_an_error():
    e = error(fixture("processing_data_cross.csv"), project="17-M-0181")
    assert e.line == 4
    assert str(e).startswith("line 4: ")
    assert "40000001" not in str(e)


def test_project_option_fills_empty_project_cells():
    data = b"Project,Subject\n17-M-0181,40000001\n,40000002\n"
    result = parse_subject_list(data, project="17-M-0181")
    assert [r.project for r in result.requests] == ["17-M-0181", "17-M-0181"]
    result = parse_subject_list(data)
    assert [r.project for r in result.requests] == ["17-M-0181", None]


def test_excel_semicolons_bom_blank_lines_and_spaces():
    result = parse_subject_list(fixture("excel_semicolon.csv"))
    assert [(r.project, r.label, r.line) for r in result.requests] == [
        ("17-M-0181", "40000001", 2),
        ("17-M-0181", "DOE^JANE", 4),
        ("17-M-0181", "90000003", 6),
    ]


def test_excel_unicode_text_utf16_tabs():
    result = parse_subject_list(fixture("excel_unicode.txt"))
    assert result.requests == (
        SubjectRequest(None, "40000001", "S01", ("90001111",), 2),
        SubjectRequest(None, "40000002", "S02", (), 3),
    )


def test_utf16_big_endian():
    data = "Subject\r\n40000001\r\n".encode("utf-16-be")
    result = parse_subject_list(b"\xfe\xff" + data)
    assert labels(result) == ["40000001"]


def test_plain_list_one_label_per_line():
    result = parse_subject_list(fixture("plain_list.txt"))
    assert [(r.label, r.line) for r in result.requests] == [
        ("40000001", 1),
        ("40000002", 2),
        ("DOE^JANE", 4),
    ]


def test_plain_list_with_spaces_in_a_name():
    result = parse_subject_list(b"DOE JANE\n40000001\n")
    assert labels(result) == ["DOE JANE", "40000001"]


def test_classic_mac_line_ends():
    result = parse_subject_list(fixture("mac_cr.csv"))
    assert [(r.project, r.label, r.line) for r in result.requests] == [
        ("17-M-0181", "40000001", 2),
        ("17-M-0181", "40000002", 3),
    ]


@pytest.mark.parametrize(
    "header",
    [
        "Subject", "subject", "SUBJECT", " Subject ", "Subject Label",
        "subject_label", "subject-label", "Label", "Subject\u00a0",
    ],
)
def test_subject_header_variants(header):
    data = f"{header},Other\n40000001,x\n".encode()
    assert labels(parse_subject_list(data)) == ["40000001"]


@pytest.mark.parametrize("header", ["project", "Project ID", "project_id", "PROJECT"])
def test_project_header_variants(header):
    data = f"{header},Subject\n17-M-0181,40000001\n".encode()
    assert parse_subject_list(data).requests[0].project == "17-M-0181"


@pytest.mark.parametrize("header", ["session", "Session Label", "session_label", "Session ID"])
def test_session_header_variants(header):
    data = f"Subject,{header}\n40000001,90001111\n".encode()
    assert parse_subject_list(data).requests[0].sessions == ("90001111",)


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_separators(separator):
    data = separator.join(["Subject", "Pseudonym"]).encode() + b"\n"
    data += separator.join(["40000001", "S01"]).encode() + b"\n"
    assert parse_subject_list(data).requests[0].pseudonym == "S01"


def test_quoted_cell_with_line_break_in_extra_column():
    data = b'Subject,Notes\n40000001,"two\nlines"\n40000002,\n'
    result = parse_subject_list(data)
    assert [(r.label, r.line) for r in result.requests] == [("40000001", 2), ("40000002", 4)]


def test_doubled_quotes_in_extra_column():
    data = b'"Subject","Notes"\r\n"40000001","say ""hi"""\r\n'
    assert labels(parse_subject_list(data)) == ["40000001"]


def test_trailing_empty_cells_beyond_header_are_tolerated():
    result = parse_subject_list(b"Subject;Project\n40000001;17-M-0181;;\n")
    assert labels(result) == ["40000001"]


def test_extra_columns_ignored():
    data = b"Status,Subject,Age,Notes\nok,40000001,33,fine\n"
    assert labels(parse_subject_list(data)) == ["40000001"]


# ---------------------------------------------------------------- merging


def test_duplicates_and_session_rows():
    result = parse_subject_list(fixture("duplicates.csv"))
    assert result.requests == (
        SubjectRequest("17-M-0181", "40000001", None, (), 2),
        SubjectRequest("17-M-0181", "40000002", None, ("90001111", "90002222", "90003333"), 3),
        SubjectRequest("01-M-0192", "40000001", None, (), 4),
    )
    assert result.notes == ("line 6: duplicate of line 2 (ignored)",)


def test_row_without_session_widens_to_all_sessions():
    data = b"Subject,Session\n40000001,90001111\n40000001,\n"
    result = parse_subject_list(data)
    assert result.requests[0].sessions == ()
    assert result.notes == ("line 3: same subject as line 2, without a session: all sessions are taken",)


def test_session_after_all_sessions_is_noted():
    data = b"Subject,Session\n40000001,\n40000001,90001111\n"
    result = parse_subject_list(data)
    assert result.requests[0].sessions == ()
    assert len(result.notes) == 1 and result.notes[0].startswith("line 3: ")


def test_repeated_session_is_noted_once():
    data = b"Subject,Session\n40000001,90001111\n40000001,90001111 90002222\n"
    result = parse_subject_list(data)
    assert result.requests[0].sessions == ("90001111", "90002222")
    assert result.notes[0].startswith("line 3: session already requested")


def test_several_sessions_in_one_cell():
    data = b'Subject,Session\n40000001,"90001111  90002222\t90003333"\n'
    assert parse_subject_list(data).requests[0].sessions == ("90001111", "90002222", "90003333")


def test_notes_do_not_contain_labels():
    result = parse_subject_list(fixture("duplicates.csv"))
    assert all("4000000" not in n for n in result.notes)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "data",
    [b"", b"\n\n  \r\n", b"\xef\xbb\xbf", b'"Subject\xc2\xa0"', b"Subject\r\n\r\n", b";;\r\n;;\r\n"],
)
def test_empty(data):
    assert "the subject list is empty" in str(error(data))


def test_binary_with_nul_bytes():
    e = error(fixture("binary.bin"))
    assert "does not look like a text file" in str(e)
    assert "\\x" not in str(e) and "\x1f" not in str(e)


def test_binary_without_nul_bytes():
    e = error(b"Subject\n\x81\x8d\x8f\x90\x9d\x01\x02\n")
    assert "does not look like a text file" in str(e)
    assert e.line == 2


def test_excel_workbook():
    e = error(b"PK\x03\x04\x14\x00\x06\x00rest")
    assert "does not look like a text file" in str(e) and "CSV" in str(e)


def test_latin1_names_the_line_and_encoding():
    e = error(fixture("latin1.csv"))
    assert e.line == 3
    assert str(e).startswith("line 3: ")
    assert "not UTF-8 or UTF-16" in str(e)
    assert "JOS" not in str(e)


def test_latin1_after_bom_names_the_right_line():
    e = error(b"\xef\xbb\xbfSubject\n40000001\n40000002\nDOE^JOS\xc9\n")
    assert e.line == 4


def test_utf16_with_nul_characters():
    assert "does not look like a text file" in str(error("Subject\n4\x00\n".encode("utf-16")))


def test_no_subject_column_lists_column_names():
    e = error(b"Project,Status\n17-M-0181,ok\n")
    assert str(e) == "line 1: no Subject column in the subject list; found columns: 'Project', 'Status'; name the column of XNAT subject labels 'Subject'"


def test_unrecognised_header_lists_column_names():
    e = error(b"Participant,Visit\n40000001,1\n")
    assert "no Subject column" in str(e) and "'Participant', 'Visit'" in str(e)


def test_subject_id_is_not_guessed():
    e = error(b"Subject ID\n40000001\n")
    assert "rename it to 'Subject'" in str(e)


def test_headerless_several_columns_do_not_echo_labels():
    e = error(b"17-M-0181,40000001\n17-M-0181,40000002\n")
    assert e.line == 1
    assert "40000001" not in str(e) and "17-M-0181" not in str(e)


def test_two_subject_columns():
    e = error(b"Subject,Label\n4,5\n")
    assert e.line == 1 and "two Subject columns" in str(e)


def test_unbalanced_quote_never_closed():
    e = error(b'Subject\n40000001\n"40000002\n40000003\n')
    assert e.line == 3 and "unbalanced quotes" in str(e)


def test_text_after_closing_quote():
    e = error(b'Subject\n"4000"0001\n')
    assert e.line == 2 and "unbalanced quotes" in str(e)


def test_more_cells_than_header():
    e = error(b"Subject,Project\n40000001,17-M-0181\n40000002,17-M-0181,extra\n")
    assert e.line == 3 and "more cells (3) than the header has columns (2)" in str(e)


def test_headerless_row_with_extra_cell():
    e = error(b"40000001,\n40000002,x\n")
    assert e.line == 2 and "no header" in str(e)
    # without a separator on the first line, the list has one column
    e = error(b"40000001\n40000002,x\n")
    assert e.line == 2 and "contains ','" in str(e)


def test_empty_subject_cell():
    e = error(b"Subject,Project\n40000001,17-M-0181\n,17-M-0181\n")
    assert str(e) == "line 3: the Subject cell is empty"


@pytest.mark.parametrize(
    "label, problem",
    [
        ("=cmd|' /C calc'!A0", "looks like a spreadsheet formula"),
        ("+SUM(A1)", "looks like a spreadsheet formula"),
        ("-abc", "looks like a spreadsheet formula"),
        ("@SUM(A1)", "looks like a spreadsheet formula"),
        ("=1+2", "looks like a spreadsheet formula"),
        ("a/b", "contains '/'"),
        ("a\\\\b", "contains '\\\\'"),
        (".", "not an XNAT label"),
        ("..", "not an XNAT label"),
        ("DOE\u00a0JANE", "contains U+00A0"),
        ("caf\u00e9", "contains U+00E9"),
        ("a\u200bb", "control character"),
        ("a\x07b", "control character"),
        ("x" * 257, "longer than 256"),
    ],
)
def test_bad_labels(label, problem):
    data = ('"Subject","Notes"\n"ok1",""\n"' + label + '",""\n').encode()
    e = error(data)
    assert e.line == 3
    assert problem in str(e)
    assert str(e).startswith("line 3: the Subject cell ")
    if len(label) > 3:
        assert label not in str(e)


def test_label_with_line_break_inside_quotes():
    e = error(b'Subject\n"4000\n0001"\n')
    assert e.line == 2 and "control character" in str(e)


def test_labels_that_are_fine():
    data = b"Subject\n-1234\nDOE^JANE\nDOE JANE JR.\nA_B-C\n" + b"9" * 256 + b"\n"
    assert len(parse_subject_list(data).requests) == 5


@pytest.mark.parametrize("pseudonym", ["sub-01", "S_01", "S 01", "\u00e901", "=S1"])
def test_bad_pseudonyms(pseudonym):
    data = f'Subject,Pseudonym\n40000001,S1\n40000002,"{pseudonym}"\n'.encode()
    e = error(data)
    assert e.line == 3 and "Pseudonym cell" in str(e)


def test_two_labels_same_pseudonym():
    e = error(b"Subject,Pseudonym\n40000001,S01\n40000002,S02\n40000003,S01\n")
    assert e.line == 4 and "line 2" in str(e)


def test_pseudonyms_differing_only_in_case():
    e = error(b"Subject,Pseudonym\n40000001,Sa\n40000002,SA\n")
    assert e.line == 3 and "letter case" in str(e)


def test_same_label_two_projects_may_share_pseudonym():
    data = b"Project,Subject,Pseudonym\nP1,40000001,S01\nP2,40000001,S01\n"
    result = parse_subject_list(data)
    assert [r.pseudonym for r in result.requests] == ["S01", "S01"]


def test_same_subject_two_pseudonyms():
    e = error(b"Subject,Pseudonym\n40000001,S01\n40000001,S02\n")
    assert e.line == 3 and "another pseudonym" in str(e)


@pytest.mark.parametrize("value", ["17/M/0181", "17 M 0181", "=P"])
def test_bad_project_cells(value):
    e = error(f'Project,Subject\n"{value}",40000001\n'.encode())
    assert e.line == 2 and "Project cell" in str(e)


def test_bad_project_option():
    e = error(b"Subject\n40000001\n", project="a/b")
    assert e.line is None and str(e).startswith("the project option contains")


def test_bad_session_cell():
    e = error(b"Subject,Session\n40000001,9000/1111\n")
    assert e.line == 2 and "Session cell" in str(e)


def test_too_many_bytes():
    e = error(b"Subject\n" + b"4" * (50 * 1024 * 1024))
    assert "too large" in str(e)


def test_too_many_rows():
    data = b"Subject\n" + b"".join(b"%d\n" % (40000000 + i) for i in range(100_001))
    assert "too large" in str(error(data))


def test_exactly_the_row_limit_is_fine():
    data = b"Subject\n" + b"".join(b"%d\n" % (40000000 + i) for i in range(100_000))
    assert len(parse_subject_list(data).requests) == 100_000


# ---------------------------------------------------------------- pseudonyms


def test_read_pseudonyms_with_header():
    assert read_pseudonyms(fixture("pseudonyms.csv")) == {
        "40000001": "S01",
        "40000002": "S02",
        "DOE^JANE": "S03",
    }


def test_read_pseudonyms_without_header_utf16_tabs():
    data = "40000001\tS01\r\n40000002\tS02\r\n".encode("utf-16")
    assert read_pseudonyms(data) == {"40000001": "S01", "40000002": "S02"}


def test_read_pseudonyms_label_header_and_extra_columns():
    data = b"\xef\xbb\xbfNotes;Pseudonym;label\nx;S01;40000001\n"
    assert read_pseudonyms(data) == {"40000001": "S01"}


def test_read_pseudonyms_repeated_identical_row_is_fine():
    assert read_pseudonyms(b"40000001,S01\n40000001,S01\n") == {"40000001": "S01"}


@pytest.mark.parametrize(
    "data, line, problem",
    [
        (b"", None, "empty"),
        (b"Subject,Pseudonym\n", None, "empty"),
        (b"Subject,Notes\n40000001,x\n", 1, "no Pseudonym column"),
        (b"Pseudonym\nS01\n", 1, "no Subject column"),
        (b"40000001,S01\n40000002\n", 2, "pseudonym cell is empty"),
        (b"40000001,S01\n,S02\n", 2, "label cell is empty"),
        (b"40000001,S01\n40000001,S02\n", 2, "another pseudonym"),
        (b"40000001,S01\n40000002,S01\n", 2, "already given to another label on line 1"),
        (b"40000001,S01\n40000002,s01\n", 2, "letter case"),
        (b"40000001,sub-01\n", 1, "only letters and digits"),
        (b"40000001,S01,x\n", 1, "more cells"),
        (b"a/b,S01\n", 1, "contains '/'"),
        (b"40000001,S01\n\x00", None, "does not look like a text file"),
    ],
)
def test_read_pseudonyms_errors(data, line, problem):
    with pytest.raises(SubjectListError) as info:
        read_pseudonyms(data)
    assert info.value.line == line
    assert problem in str(info.value)
    assert "4000000" not in str(info.value)


def test_headerless_mapping_starting_with_a_name_is_not_a_header():
    assert read_pseudonyms(b"SMITH,Alpha\nJONES,Beta\n") == {"SMITH": "Alpha", "JONES": "Beta"}


def test_apply_pseudonyms():
    subjects = parse_subject_list(fixture("processing_data.csv"), project="17-M-0181")
    mapped = apply_pseudonyms(subjects, read_pseudonyms(fixture("pseudonyms.csv")))
    assert [r.pseudonym for r in mapped.requests] == ["S01", "S02", "S03"]
    assert [r.label for r in mapped.requests] == labels(subjects)
    assert mapped.sha256 == subjects.sha256
    assert mapped.notes == subjects.notes


def test_apply_pseudonyms_missing_subject_names_lines_not_labels():
    subjects = parse_subject_list(fixture("plain_list.txt"))
    with pytest.raises(SubjectListError) as info:
        apply_pseudonyms(subjects, {"40000002": "S02"})
    assert info.value.line == 1
    assert str(info.value) == "line 1: subject not in the pseudonym mapping (also line 4)"


def test_apply_pseudonyms_conflicts_with_column():
    subjects = parse_subject_list(b"Subject,Pseudonym\n40000001,S01\n")
    with pytest.raises(SubjectListError) as info:
        apply_pseudonyms(subjects, {"40000001": "S09"})
    assert info.value.line == 2


def test_apply_pseudonyms_agreeing_with_column():
    subjects = parse_subject_list(b"Subject,Pseudonym\n40000001,S01\n40000002,\n")
    mapped = apply_pseudonyms(subjects, {"40000001": "S01", "40000002": "S02"})
    assert [r.pseudonym for r in mapped.requests] == ["S01", "S02"]


def test_apply_pseudonyms_checks_mapping_values():
    subjects = parse_subject_list(b"40000001\n40000002\n")
    with pytest.raises(SubjectListError) as info:
        apply_pseudonyms(subjects, {"40000001": "S01", "40000002": "S01"})
    assert info.value.line == 2
    with pytest.raises(SubjectListError):
        apply_pseudonyms(subjects, {"40000001": "S-1", "40000002": "S2"})


def test_error_is_a_value_error():
    assert issubclass(SubjectListError, ValueError)
