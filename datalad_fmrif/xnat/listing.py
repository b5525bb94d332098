"""What ``fmrif-list`` shows of a project: its subjects, or its sessions
with the counts of their files, as rows (dicts) named like the CSV fields.

Request budget: one listing for the subjects (or, with a date range, the
experiment listing, which carries the subject labels too); for sessions,
that listing and one file listing per session in range, a few at a time.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from .catalog import project_sessions, project_subjects, session_files
from .session import XnatSession

lgr = logging.getLogger("datalad.fmrif.xnat.listing")

#: file listings in flight at once: fast enough, and polite to the server
LISTING_WORKERS = 4


def _session_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _in_range(session, since: date | None, until: date | None) -> bool:
    if since is None and until is None:
        return True
    day = _session_date(session.date)
    if day is None:
        return False  # no date: cannot be said to be in any range
    return (since is None or day >= since) and (until is None or day <= until)


def list_subjects(xnat: XnatSession, project: str, since: date | None,
                  until: date | None) -> list[dict]:
    """One row per subject, by label; with a date range, only subjects with a
    session in it. One request either way: the subject listing, or with
    dates the experiment listing (it carries the subject labels too)."""
    if since is None and until is None:
        subjects = list(project_subjects(xnat, project).values())
    else:
        subjects = list({subject.id: subject
                         for subject, session in project_sessions(xnat, project)
                         if _in_range(session, since, until)}.values())
    subjects.sort(key=lambda s: s.label)
    return [{"project": project, "subject": s.label, "subject_id": s.id}
            for s in subjects]


def list_sessions(xnat: XnatSession, project: str, since: date | None,
                  until: date | None) -> list[dict]:
    """One row per session, with counts from its file listing: one request
    for the project's sessions, then one per session in range."""
    pairs = [(subject, session) for subject, session in project_sessions(xnat, project)
             if _in_range(session, since, until)]
    pairs.sort(key=lambda p: (p[0].label, p[1].date or "9999", p[1].id))

    def count(pair):
        subject, session = pair
        files, rejected = session_files(xnat, session)
        if rejected:
            lgr.warning("session %s: %d file rows of XNAT's listing were not "
                        "counted (%s)", session.id, len(rejected), rejected[0])
        return {
            "project": project, "subject": subject.label,
            "subject_id": subject.id, "session": session.label,
            "session_id": session.id, "date": session.date,
            "scans": len({f.scan_id for f in files}), "files": len(files),
            "size": sum(f.size for f in files),
        }

    with ThreadPoolExecutor(LISTING_WORKERS) as pool:
        return list(pool.map(count, pairs))
