"""Write the subject-list fixtures with exact bytes.

Run from anywhere: ``python tests/data/subjects/make_fixtures.py``. The
files are kept in the repository; this script documents how each was made
(``.gitattributes`` keeps git from touching their line ends). All labels and
names are invented.
"""

from pathlib import Path

HERE = Path(__file__).parent
NBSP = "\u00a0"

FIXTURES: dict[str, bytes] = {
    # XNAT Processing Dashboard export, one project: only a Subject column,
    # every field quoted, CRLF, NBSP at the end of the header, no final newline
    "processing_data.csv": "\r\n".join(
        [f'"Subject{NBSP}"', '"40000001"', '"40000002"', '"DOE^JANE"']
    ).encode("utf-8"),
    # the cross-project view: Project column and status columns
    "processing_data_cross.csv": "\r\n".join(
        [
            f'"Project{NBSP}","Subject{NBSP}","Status{NBSP}","Last Modified{NBSP}"',
            '"17-M-0181","40000001","Complete","2024-01-05 10:11:12"',
            '"17-M-0181","40000002","Failed",""',
            '"01-M-0192","40000001","Ready","2024-02-01 08:00:00"',
        ]
    ).encode("utf-8"),
    # edited in Excel: BOM, ';', blank lines, trailing spaces, header variants,
    # extra column, final CRLF
    "excel_semicolon.csv": (
        "\ufeff project ;SUBJECT ; Notes\r\n"
        "17-M-0181;40000001 ;first visit\r\n"
        "\r\n"
        "17-M-0181 ; DOE^JANE;\r\n"
        ";;\r\n"
        "17-M-0181;90000003;\"has; a semicolon\"\r\n"
    ).encode("utf-8"),
    # Excel "Unicode text": UTF-16 LE with BOM, tab separated, CRLF
    "excel_unicode.txt": (
        "Subject_Label\tPseudonym\tSession Label\r\n"
        "40000001\tS01\t90001111\r\n"
        "40000002\tS02\t\r\n"
    ).encode("utf-16"),
    # a plain list, one label per line, as the original tutorial used
    "plain_list.txt": b"40000001\n40000002\n\nDOE^JANE\n",
    # classic Mac line ends (CR only)
    "mac_cr.csv": b"Subject,Project\r40000001,17-M-0181\r40000002,17-M-0181\r",
    # duplicates, the same label in two projects, sessions over several rows
    "duplicates.csv": (
        "Project,Subject,Session\n"
        "17-M-0181,40000001,\n"
        "17-M-0181,40000002,90001111\n"
        "01-M-0192,40000001,\n"
        "17-M-0181,40000002,90002222 90003333\n"
        "17-M-0181,40000001,\n"
    ).encode("utf-8"),
    # a pseudonym mapping file with header
    "pseudonyms.csv": (
        '"Subject","Pseudonym"\r\n"40000001","S01"\r\n"40000002","S02"\r\n'
        '"DOE^JANE","S03"'
    ).encode("utf-8"),
    # Windows-1252 (not UTF-8): an accented name on line 3
    "latin1.csv": "Subject\r\n40000001\r\nDOE^JOS\u00c9\r\n".encode("cp1252"),
    # binary: a few bytes of a gzip stream
    "binary.bin": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\x48\xcd\xc9\xc9\x07\x00",
}


def main() -> None:
    for name, data in FIXTURES.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
