"""/data/experiments with field filters, as datalad-xnat uses it.

XNAT's experiment listing filters on any experiment field given in the query
(``project=``, ``subject_ID=``; a comma separates alternatives). A
subject-assessor field in the query makes XNAT list subject assessors, whose
default columns include ``subject_ID`` and ``subject_label``.
"""

from __future__ import annotations

MAIN = "17-M-0181"


def test_filter_by_project_and_subject(sb, get_rows):
    subject = sb.study.subjects(MAIN)[0]
    rows = get_rows("/data/experiments", project=MAIN, subject_ID=subject.id)
    assert [r["ID"] for r in rows] == [e.id for e in sb.study.sessions(subject.id)]
    assert list(rows[0]) == ["ID", "label", "project", "xsiType", "date", "insert_date",
                             "subject_ID", "subject_label", "URI"]
    assert {r["subject_ID"] for r in rows} == {subject.id}
    assert {r["subject_label"] for r in rows} == {subject.label}


def test_filter_alternatives_and_plain_listing(sb, get_rows):
    a, b = sb.study.subjects(MAIN)[:2]
    rows = get_rows("/data/experiments", subject_ID=f"{a.id},{b.id}")
    assert {r["subject_ID"] for r in rows} == {a.id, b.id}
    project_rows = get_rows("/data/experiments", project=MAIN)
    assert len(project_rows) == len(sb.study.project_sessions(MAIN))
    assert "subject_ID" not in project_rows[0]  # experimentData's default columns
    assert get_rows("/data/experiments", project=MAIN, subject_ID="FMRIF_S99999") == []
    # forbidden projects stay out of the unfiltered listing
    assert all(r["project"] != "01-M-0192" for r in get_rows("/data/experiments"))
