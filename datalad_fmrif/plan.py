"""From an XNAT session catalog to the files a dataset will hold.

A pure function of its inputs: given what XNAT lists for one session and the
user's options, decide for every file whether it is taken (and where it goes,
under which git-annex key, from which server path, with which metadata) or
left out (and why). Nothing here touches the network or the dataset, so the
whole plan -- path collisions included -- is known before anything is
written.

Paths never contain XNAT labels unless the caller passes them as the
subject/session names: subjects and sessions appear under their dataset names
(a pseudonym, a sanitised label by explicit choice, ``01``-style session
numbers), and every value put into a path is sanitised so that it stays one
harmless path component.

Why one module of ~650 lines: the naming rules (sanitising, tags, the path
template, collisions, exclusions) are one contract that is read and
changed together; split, each part would need the others to be understood.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from datalad_fmrif.annex.keys import md5e
from datalad_fmrif.xnat.records import RemoteFile, Scan, Session, SessionCatalog

__all__ = [
    "DEFAULT_TEMPLATE",
    "DEFAULT_EXCLUDE_SERIES",
    "TEMPLATE_FIELDS",
    "PlanError",
    "PlanOptions",
    "PlannedFile",
    "SessionPlan",
    "name_sessions",
    "sanitize_label",
    "sanitize_component",
    "plan_session",
]

DEFAULT_TEMPLATE = "sub-{subject}/ses-{session}/{scan}-{series_description}/{file}"
# Series with burned-in identifying text (requisition forms, screen saves).
DEFAULT_EXCLUDE_SERIES = r"^(REQUISITION|SCREEN[-_ ]?SAVE|SAVE)$"
TEMPLATE_FIELDS = (
    "subject",  # dataset name of the subject (pseudonym or sanitised label)
    "session",  # dataset name of the session ("01", ...)
    "subject_id",  # XNAT accession ID of the subject
    "session_id",  # XNAT accession ID of the session (experiment)
    "project",
    "scan",  # scan ID
    "scan_type",
    "series_description",  # falls back to the scan type when empty
    "resource",  # resource label, e.g. DICOM
    "resource_id",  # XNAT's numeric resource ID
    "file",  # file name inside the resource; may hold sub-folders
)
# Fields that describe a scan; see plan_session() for session-level resources.
_SCAN_FIELDS = frozenset({"scan", "scan_type", "series_description"})

MAX_COMPONENT = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)
_MD5 = re.compile(r"[0-9a-f]{32}")


class PlanError(ValueError):
    """Options or inputs that cannot give a plan (bad template, bad regex)."""


# --------------------------------------------------------------------------
# names


def sanitize_label(label: str) -> str:
    """A BIDS-safe ``sub-``/``ses-`` value: letters and digits only.

    ``DOE^JANE`` -> ``DOEJANE``. The label is not repeated in the error.
    """
    value = re.sub(r"[^A-Za-z0-9]", "", label)
    if not value:
        raise PlanError("a label without letters or digits cannot name a subject or session")
    return value


def _path_extension(name: str) -> str:
    """The extension a shortened or tagged path component keeps (our rule).

    For paths only; keys take git-annex's rule (:func:`annex.keys.extension`).
    This one is frozen so that a file's path never moves between versions:
    from the last extension backwards while each is at most 4 characters,
    those that are alphanumeric, the last two of them.
    ``1.3.12.2.1107.dcm`` -> ``.1107.dcm``, ``x.nii.gz`` -> ``.nii.gz``,
    ``f.tar.gz.verylong`` -> ``''``. (It differs from git-annex's only for
    empty extensions, ``x.c..d``, which sanitized names rarely have.)
    """
    base = name.rsplit("/", 1)[-1]
    parts = base.split(".")[1:]
    if not parts or base.startswith("."):
        return ""
    kept = []
    for ext in reversed(parts):
        if len(ext) > 4:
            break
        if ext and all((c.isascii() and c.isalnum()) or not c.isascii() for c in ext):
            kept.append(ext)
    kept = kept[:2]
    return "".join("." + e for e in reversed(kept))


def sanitize_component(text: str) -> str:
    """Make *text* one safe path component.

    Every run of characters outside ``[A-Za-z0-9._+-]`` becomes one ``_``,
    runs of ``_`` collapse, and ``.``, ``-`` and ``_`` are stripped from both
    ends (no hidden files, nothing that reads as an option, no trailing dot
    that Windows drops). Windows device names (``CON``, ``nul.txt``) get a
    ``_`` after the name. The result is cut to 120 characters, keeping a
    file's extension. Something that leaves nothing (``""``, ``"..."``,
    ``"???"``) becomes ``_``: never ``""``, ``.`` or ``..``.
    """
    return _unreserve(_clean(text))


@lru_cache(maxsize=4096)  # the same subjects, sessions and scans, file after file
def _clean(text: str) -> str:
    """sanitize_component() without the device-name rule, for values that
    are only part of a component (the rule applies to the whole)."""
    value = _UNSAFE.sub("_", text)
    value = re.sub(r"_{2,}", "_", value).strip("._-")
    if not value:
        return "_"
    if len(value) > MAX_COMPONENT:
        ext = _path_extension(value)
        if len(ext) >= MAX_COMPONENT // 2:
            ext = ""
        value = value[: MAX_COMPONENT - len(ext)].rstrip("._-") + ext
    return value


def _unreserve(component: str) -> str:
    stem, dot, rest = component.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:
        return f"{stem}_{dot}{rest}"
    return component


def name_sessions(sessions: Sequence[Session], assigned: Mapping[str, str]) -> dict[str, str]:
    """Pseudonymous session names (``01``, ``02``, ...) by accession ID.

    *assigned* maps session accession IDs to the names given on earlier runs
    (from the dataset's records); those never change, even when a session
    acquired earlier turns up later. Sessions without a name get the next
    numbers after the highest assigned one, in acquisition order (date, then
    accession ID; sessions without a date last). Names have at least two
    digits and grow beyond ``99``. Pass all sessions of a subject, not only
    those selected for download, so the numbers follow acquisition order.
    """
    by_name: dict[str, str] = {}
    for sid, name in assigned.items():
        if name in by_name:
            raise PlanError(
                f"session name {name!r} is assigned to two sessions "
                f"({by_name[name]} and {sid})"
            )
        by_name[name] = sid
    highest = max((int(n) for n in assigned.values() if n.isdigit()), default=0)
    result = {s.id: assigned[s.id] for s in sessions if s.id in assigned}
    new = sorted(
        {s.id: s for s in sessions if s.id not in assigned}.values(),
        key=lambda s: (s.date == "", s.date, s.id),
    )
    number = highest
    for session in new:
        number += 1
        while f"{number:02d}" in by_name:
            number += 1
        result[session.id] = f"{number:02d}"
    return result


# --------------------------------------------------------------------------
# template


@dataclass(frozen=True)
class _Part:
    literal: str
    field: str | None


def _compile_template(template: str) -> tuple[tuple[_Part, ...], ...]:
    """Parse *template* into path components of literal text and fields."""
    if not template:
        raise PlanError("the path template is empty")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise PlanError(f"path template {template!r}: {e}") from None
    components: list[list[_Part]] = [[]]
    fields = []
    for literal, field, spec, conversion in parsed:
        if "\\" in literal:
            raise PlanError(f"path template {template!r}: use '/' to separate folders, not '\\'")
        if ".." in literal:
            raise PlanError(f"path template {template!r} must not contain '..'")
        if any(ord(c) < 32 or ord(c) == 127 for c in literal):
            raise PlanError(f"path template {template!r} contains a control character")
        pieces = literal.split("/")
        for n, piece in enumerate(pieces):
            if n:
                components.append([])
            if piece:
                components[-1].append(_Part(piece, None))
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS:
            raise PlanError(
                f"path template {template!r}: unknown field {{{field}}}; "
                f"known fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
            )
        if spec or conversion:
            raise PlanError(
                f"path template {template!r}: format specifications such as "
                f"{{{field}:...}} or {{{field}!...}} are not supported"
            )
        fields.append(field)
        components[-1].append(_Part("", field))
    if template.startswith("/"):
        raise PlanError(f"path template {template!r} must be relative, not absolute")
    if fields.count("file") != 1:
        raise PlanError(f"path template {template!r} must contain {{file}} exactly once")
    if not any(p.field == "file" for p in components[-1]):
        raise PlanError(f"path template {template!r}: {{file}} must be in its last component")
    for n, component in enumerate(components):
        if not component:
            raise PlanError(f"path template {template!r} has an empty folder name ('//' or a trailing '/')")
        if all(p.field is None for p in component):
            text = "".join(p.literal for p in component)
            problem = _bad_component(text, top=n == 0)
            if problem:
                raise PlanError(f"path template {template!r}: {problem}")
    return tuple(tuple(c) for c in components)


@lru_cache(maxsize=4096)  # the same folders, file after file
def _bad_component(component: str, *, top: bool) -> str | None:
    if component in ("", ".", ".."):
        return f"path component {component!r} is not allowed"
    if component.casefold() == ".git":
        return "a '.git' folder is not allowed"
    if top and component.casefold() == ".datalad":
        return "the dataset's '.datalad' folder is not allowed"
    return None


def _check_path(path: str) -> str | None:
    """Why *path* is not a safe path inside a dataset, or None."""
    if not path or path.startswith("/") or "\\" in path:
        return "not a relative POSIX path"
    for n, component in enumerate(path.split("/")):
        problem = _bad_component(component, top=n == 0)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------
# options and results


@dataclass(frozen=True)
class PlanOptions:
    template: str = DEFAULT_TEMPLATE
    # re.search, case-insensitive, on the series description or the type
    include_series: str | None = None
    exclude_series: str | None = DEFAULT_EXCLUDE_SERIES
    # resource labels (case-insensitive); "supplementary" is FMRIF's
    # session-level physio resource
    resources: tuple[str, ...] = ("DICOM",)

    def validate(self) -> None:
        """Raise PlanError when the options cannot work."""
        _compile_template(self.template)
        for name in ("include_series", "exclude_series"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as e:
                raise PlanError(f"{name} {pattern!r} is not a valid regular expression: {e}") from None
        if isinstance(self.resources, str) or not self.resources:
            raise PlanError("resources must be a non-empty sequence of resource labels")
        if not all(isinstance(r, str) and r.strip() for r in self.resources):
            raise PlanError("resources must not contain empty labels")


@dataclass(frozen=True)
class PlannedFile:
    path: str  # POSIX path relative to the dataset root, sanitised
    key: str | None  # MD5E-s{size}--{md5}{ext}; None without a usable digest
    url_path: str  # server path from accession IDs; the caller adds the server
    size: int
    md5: str  # lower-case hex; '' when XNAT gave no (usable) digest
    file: RemoteFile
    scan: Scan | None
    subject: str  # dataset name of the subject
    session: str  # dataset name of the session
    subject_id: str = ""  # XNAT accession ID of the subject

    def metadata(self, project: str) -> dict[str, str]:
        """git-annex metadata of this file; empty values are left out.

        Subject and session appear under their dataset names and accession
        IDs, never under their XNAT labels.
        """
        values = {
            "xnat_project": project,
            "xnat_subject": self.subject,
            "xnat_session": self.session,
            "xnat_subject_id": self.subject_id,
            "xnat_session_id": self.file.session_id,
            "xnat_scan_id": self.file.scan_id or "",
            "xnat_scan_type": self.scan.type if self.scan else "",
            "xnat_series_description": self.scan.series_description if self.scan else "",
            "xnat_resource": self.file.resource,
            "xnat_resource_id": self.file.resource_id,
            "xnat_file": self.file.name,
        }
        return {k: v.strip() for k, v in values.items() if v and v.strip()}


@dataclass(frozen=True)
class SessionPlan:
    catalog: SessionCatalog
    subject: str  # dataset name of the subject
    session: str  # dataset name of the session
    files: tuple[PlannedFile, ...]
    excluded: tuple[tuple[RemoteFile, str], ...]  # (file, reason)
    # e.g. path collisions; a session with problems must not be written
    problems: tuple[str, ...]
    # where the session's files go: see session_folder()
    folder: str = ""
    # files left out because another file of their scan has the same name
    # (two resources of one scan): (planned path, why); each one's problem
    conflicts: tuple[tuple[str, str], ...] = ()

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


# --------------------------------------------------------------------------
# planning


def _describe(file: RemoteFile) -> str:
    """A file for messages: by scan ID and file name (no labels)."""
    where = f"scan {file.scan_id}" if file.scan_id is not None else f"resource {file.resource}"
    return f"{where} file {file.name}"


def _file_components(name: str) -> list[str] | None:
    """The sanitised sub-folders and name of a server file name, or None
    when the name tries to leave its resource (absolute or '..')."""
    if name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return [_distinct_component(p) for p in parts]


@lru_cache(maxsize=4096)
def _distinct_component(part: str) -> str:
    """A safe path component for a file or folder name that stays distinct.

    Names that are already safe stay as they are. A name that sanitising
    changes (``ECG #2.1D``, ``a (1)?.1D``, ``50%41.txt``, non-ASCII letters)
    gets a short digest of the original name before its extension
    (``ECG_2-5d1f3a.1D``), so that two names that sanitise alike
    (``ECG #2.1D``, ``ECG_2.1D``) never land on one path, and a name's path
    never depends on which other files the resource holds.
    """
    clean = sanitize_component(part)
    if clean == part:
        return clean
    tag = hashlib.sha1(part.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    ext = _path_extension(clean)
    stem = clean[: len(clean) - len(ext)] if ext else clean
    stem = stem[: MAX_COMPONENT - len(ext) - len(tag) - 1].rstrip("._-") or "_"
    return _unreserve(f"{stem}-{tag}{ext}")


def _key(file: RemoteFile, path: str) -> tuple[str | None, str]:
    md5 = file.md5.strip().lower()
    if not _MD5.fullmatch(md5) or file.size < 0:
        return None, ""
    return md5e(file.size, md5, path), md5


def _series_filter(options: PlanOptions, scan: Scan | None, file: RemoteFile) -> str | None:
    """Why the series filters leave out a scan file, or None to take it."""
    if scan is None:
        if options.include_series is None and options.exclude_series is None:
            return None
        return (
            f"scan {file.scan_id} is not in the session's scan list, so its "
            "series cannot be checked against the series filters"
        )
    values = [v.strip() for v in (scan.series_description, scan.type) if v.strip()]
    shown = scan.series_description.strip() or scan.type.strip()
    if options.exclude_series is not None:
        pattern = re.compile(options.exclude_series, re.IGNORECASE)
        if any(pattern.search(v) for v in values):
            if options.exclude_series == DEFAULT_EXCLUDE_SERIES:
                return f"series {shown!r} excluded by default (identifying text)"
            return f"series {shown!r} matches exclude_series"
    if options.include_series is not None:
        pattern = re.compile(options.include_series, re.IGNORECASE)
        if not any(pattern.search(v) for v in values):
            return f"series {shown!r} does not match include_series"
    return None


_SESSION_FIELDS = frozenset({"subject", "session", "subject_id", "session_id", "project"})


def session_folder(template: str, values: Mapping[str, str]) -> str:
    """The folder of a session in the dataset: the leading folders of the
    template that only name the subject and session (``sub-P01/ses-01`` with
    the default template), or "" (the dataset) when the first folder already
    depends on a scan or file.

    Reports name a session by this folder, also when none of its files is
    planned (a series filter that matches nothing in it): the same path in a
    dry run, a download and ``fmrif-status``.
    """
    folders = []
    for component in _compile_template(template)[:-1]:
        if any(p.field and p.field not in _SESSION_FIELDS for p in component):
            break
        folders.append(_unreserve("".join(
            p.literal if p.field is None else _clean(values[p.field])
            for p in component)))
    return "/".join(folders)


def plan_session(
    catalog: SessionCatalog,
    *,
    subject: str,
    session: str,
    project: str,
    options: PlanOptions,
) -> SessionPlan:
    """Plan the files of one session.

    *subject* and *session* are the names used in the dataset (a pseudonym
    or sanitised label, a session name from :func:`name_sessions`).

    Filters: a file is taken when its resource label is one of
    ``options.resources`` (ignoring case); for scan files the series filters
    then apply to the series description and the scan type. Session-level
    resources (``supplementary`` physio) have no series and are not
    filtered by series: choosing the resource chooses them.

    Session-level resources in the template: a path component that uses a
    scan field (``{scan}``, ``{scan_type}``, ``{series_description}``) and
    not ``{file}`` becomes the resource label, once, so physio lands in
    ``sub-X/ses-01/supplementary/ECG_...1D`` with the default template;
    elsewhere scan fields stand for the resource label.

    Problems (the session must then not be written): paths that collide,
    exactly or ignoring case (macOS/Windows clones), a path that is both a
    file and a folder, a server file name that leaves its resource.
    """
    options.validate()
    components = _compile_template(options.template)
    exclude = []
    problems: list[str] = []
    planned: list[PlannedFile] = []
    selected = {r.strip().casefold() for r in options.resources}
    record = catalog.session

    series_reasons: dict[str, str | None] = {}  # scan ID -> why it is left out
    for file in catalog.files:
        if file.resource.strip().casefold() not in selected:
            exclude.append((file, f"resource {file.resource!r} not selected"))
            continue
        scan = catalog.scan(file.scan_id) if file.scan_id is not None else None
        if file.scan_id is not None:
            if file.scan_id not in series_reasons:  # once per scan, not per file
                series_reasons[file.scan_id] = _series_filter(options, scan, file)
            reason = series_reasons[file.scan_id]
            if reason:
                exclude.append((file, reason))
                continue
        file_parts = _file_components(file.name)
        if file_parts is None:
            problems.append(
                f"{_describe(file)}: the server gave a file name that leaves "
                "its resource (absolute or '..'); not planned"
            )
            continue

        session_level = file.scan_id is None
        if session_level:
            scan_values = dict.fromkeys(_SCAN_FIELDS, file.resource)
        else:
            scan_values = {
                "scan": file.scan_id,
                "scan_type": scan.type if scan else "",
                "series_description": (
                    (scan.series_description.strip() or scan.type) if scan else ""
                ),
            }
        values = {
            "subject": subject,
            "session": session,
            "subject_id": record.subject_id,
            "session_id": record.id,
            "project": project or record.project,
            "resource": file.resource,
            "resource_id": file.resource_id,
            **scan_values,
        }
        rendered: list[str] = []
        replaced_previous = False
        for component in components:
            fields = {p.field for p in component if p.field}
            if session_level and fields & _SCAN_FIELDS and "file" not in fields:
                if not replaced_previous:
                    rendered.append(_clean(file.resource))
                replaced_previous = True
                continue
            replaced_previous = False
            text = ""
            for part in component:
                if part.field is None:
                    text += part.literal
                elif part.field == "file":
                    text += "/".join(file_parts)
                else:
                    text += _clean(values[part.field])
            rendered.append(text)
        rendered = [_unreserve(c) for c in "/".join(rendered).split("/")]
        path = "/".join(rendered)
        problem = _check_path(path)
        if problem:
            problems.append(f"{_describe(file)}: planned path {path!r}: {problem}")
            continue
        key, md5 = _key(file, path)
        planned.append(
            PlannedFile(
                path=path,
                key=key,
                url_path=file.path,
                size=file.size,
                md5=md5,
                file=file,
                scan=scan,
                subject=subject,
                session=session,
                subject_id=record.subject_id,
            )
        )

    conflicts = _same_name_in_a_scan(planned)
    planned = [f for f in planned if f.path not in conflicts]
    problems.extend(_collisions(planned))
    return SessionPlan(
        catalog=catalog,
        subject=subject,
        session=session,
        files=tuple(planned),
        excluded=tuple(exclude),
        problems=tuple(problems),
        folder=session_folder(options.template, {
            "subject": subject, "session": session,
            "subject_id": record.subject_id, "session_id": record.id,
            "project": project or record.project}),
        conflicts=tuple(sorted(conflicts.items())),
    )


def _same_name_in_a_scan(planned: list[PlannedFile]) -> dict[str, str]:
    """Files of one scan planned to one path (a scan with two resources of
    the same label that both hold a file of that name): path -> why.

    Only these files are left out: which one is the scan's file is not
    for us to guess, and the rest of the session is not concerned. A
    template with ``{resource_id}`` keeps them apart.
    """
    by_path: dict[str, list[PlannedFile]] = defaultdict(list)
    for f in planned:
        by_path[f.path].append(f)
    failed = {}
    for group in by_path.values():
        scans = {f.file.scan_id for f in group}
        if (len(group) < 2 or len(scans) != 1 or None in scans
                or len({f.file.name for f in group}) != 1
                or len({f.file.resource_id for f in group}) != len(group)):
            continue  # not the same name in resources of one scan: _collisions
        resources = ", ".join(f"{f.file.resource} (ID {f.file.resource_id})"
                              for f in group)
        for f in group:
            failed[f.path] = (
                f"scan {f.file.scan_id} has {len(group)} files named "
                f"{f.file.name}, in resources {resources}, planned to the same "
                "path; not downloaded. A --path template with {resource_id} "
                "keeps them apart")
    return failed


def _collisions(planned: list[PlannedFile]) -> list[str]:
    """Paths planned twice, exactly or ignoring case, or as file and folder."""
    problems = []
    by_path: dict[str, list[PlannedFile]] = defaultdict(list)
    for f in planned:
        by_path[f.path.casefold()].append(f)
    for group in by_path.values():
        if len(group) < 2:
            continue
        what = ", ".join(_describe(f.file) for f in group)
        paths = sorted({f.path for f in group})
        if len(paths) == 1:
            problems.append(f"{len(group)} files planned to {paths[0]}: {what}")
        else:
            problems.append(
                f"{len(group)} files planned to paths that differ only in "
                f"letter case ({', '.join(paths)}): {what}"
            )
    folders = {}
    for f in planned:
        parts = f.path.casefold().split("/")
        for n in range(1, len(parts)):
            folders.setdefault("/".join(parts[:n]), f)
    for f in planned:
        inner = folders.get(f.path.casefold())
        if inner is not None:
            problems.append(
                f"{f.path} is planned as a file ({_describe(f.file)}) and as a "
                f"folder ({_describe(inner.file)})"
            )
    return problems
