"""The sentences a researcher reads at the end of a command, made from counts.

Pure functions, no I/O: the commands pass the numbers of their results in and
show the text with DataLad's UI. Counts agree with their nouns ("1 session",
"2 sessions"), sizes read as people read them, and what a run did is said in
its own verb (a dry run "would download", ``--no-content`` "registered").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: series names listed in a line before "and N more"
SHOWN_SERIES = 4


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 files``."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def size_text(n: int) -> str:
    """Bytes as DataLad's progress bars show them: 512 bytes, 4.0 KB, 1.2 GB
    (steps of 1024)."""
    if n < 1024:
        return plural(n, "byte")
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def series_text(names: Iterable[str]) -> str:
    """``series T2w, fMRI_rest and 3 more``: the first few, then how many more."""
    names = list(dict.fromkeys(names))
    if not names:
        return ""
    shown = ", ".join(names[:SHOWN_SERIES])
    more = len(names) - SHOWN_SERIES
    return "series " + shown + (f" and {more} more" if more > 0 else "")


def excluded_text(files: int, series: Iterable[str] = ()) -> str:
    """``1 file excluded (series REQUISITION)``."""
    named = series_text(series)
    return plural(files, "file") + " excluded" + (f" ({named})" if named else "")


def action_words(*, dry_run: bool, no_content: bool) -> tuple[str, str]:
    """What happens to new files, for one session's line and for the summary:
    ("would download", "to download"), ("registered", "registered, content
    not downloaded"), ..."""
    if dry_run:
        verb = "would register" if no_content else "would download"
        return verb, "to register" if no_content else "to download"
    if no_content:
        return "registered", "registered, content not downloaded"
    return "downloaded", "downloaded"


def refetched_text(n: int) -> str:
    """`` (1000 of them fetched again: their content was not here)``: files
    already in the dataset whose content the run brought back (dropped, or
    a fresh clone); nothing when there are none."""
    return f" ({n} of them fetched again: their content was not here)" if n else ""


def session_message(session_id: str, *, new: int, new_bytes: int, present: int,
                    excluded: int, refetched: int = 0, excluded_series: Iterable[str] = (),
                    dry_run: bool = False, no_content: bool = False,
                    others: Mapping[str, int] | None = None) -> str:
    """One session's line of ``fmrif-download``, e.g. ``session FMRIF_E00001:
    would download 10 new files (40.0 KB), 0 already present, 1 file excluded
    (series REQUISITION)``; *others* adds counts that are not zero, e.g.
    ``{"failed": 3}`` as ``, 3 failed``."""
    verb, _ = action_words(dry_run=dry_run, no_content=no_content)
    return (f"session {session_id}: {verb} {plural(new, 'new file')} "
            f"({size_text(new_bytes)}), {present} already present{refetched_text(refetched)}, "
            + excluded_text(excluded, excluded_series)
            + "".join(f", {n} {label}" for label, n in (others or {}).items() if n))


def download_summary(sessions: list[Mapping]) -> str:
    """The last line of ``fmrif-download``, from its session results."""
    def total(key):
        return sum(r.get(key, 0) for r in sessions)

    dry_run = any(r.get("dry_run") for r in sessions)
    no_content = any(r.get("no_content") for r in sessions)
    _, done = action_words(dry_run=dry_run, no_content=no_content)
    quiet = sum(1 for r in sessions if r.get("status") == "notneeded")
    head = plural(len(sessions), "session")
    if quiet:
        head += f" ({quiet} with nothing new, not listed above)"
    text = (f"{head}: {plural(total('files_new'), 'new file')} "
            f"({size_text(total('bytes_new'))}) {done}, "
            f"{total('files_present')} already present"
            f"{refetched_text(total('files_refetched'))}, "
            f"{total('files_changed')} changed on XNAT, "
            f"{total('files_failed')} failed, "
            f"{excluded_text(total('files_excluded'))}"
            + "".join(f", {plural(total(key), 'file')} {what}" for key, what in (
                ("files_removed", "removed from the dataset"),
                ("files_missing_on_server", "no longer on XNAT")) if total(key)))
    return ("Dry run, nothing changed. " + text) if dry_run else text


def status_line(state: str, path: str, type_: str, message: str = "") -> str:
    """A line of ``fmrif-status`` as ``datalad status`` writes one: the state
    first, right-aligned, then the path and its type; then our detail."""
    width = len("untracked")
    line = f"{state:>{width}}: {path} ({type_})"
    return line + (f" [{message}]" if message else "")


def status_summary(states: Mapping[str, int]) -> str:
    """``4 sessions checked: 3 as recorded, 1 untracked``."""
    checked = sum(states.values())
    if not checked:
        return ""
    parts = [f"{n} {'as recorded' if state == 'clean' else state}"
             for state, n in sorted(states.items(), key=lambda i: i[0] != "clean")]
    return f"{plural(checked, 'session')} checked against XNAT: " + ", ".join(parts)


def excluded_series(plan) -> list[str]:
    """The series a session plan leaves out, by description (else type), in
    the order of XNAT's listing. Files of session-level resources that were
    not selected are counted, not named: they belong to no series."""
    names = []
    for file, _ in plan.excluded:
        if file.scan_id is None:
            continue
        scan = plan.catalog.scan(file.scan_id)
        name = scan and (scan.series_description.strip() or scan.type.strip())
        names.append(name or f"scan {file.scan_id}")
    return list(dict.fromkeys(names))
