"""The synthetic study that the sandbox XNAT server serves.

Everything is computed on demand from ``(seed, index)``: a study of 1,000
subjects with 300 files per scan costs nothing until somebody asks for a
listing, and file bytes are only generated when a digest or the content is
needed (and then kept in a small bounded cache).

Numbering (all deterministic):

- subjects get a site-wide number ``n`` (``FMRIF_S{n:05d}``); the main
  project's subjects come first, then the small ones of the other projects.
- each subject owns ``slot`` consecutive experiment numbers; its k-th session
  is ``FMRIF_E{(n - 1) * slot + k + 1:05d}``.  Sessions added by
  :meth:`Study.add_session` are numbered after all of those.
- scans are ``"1"`` .. ``"N"``; each scan's ``DICOM`` resource and each
  session's ``supplementary`` resource has a numeric resource ID derived from
  the experiment number.

Tests change the study through the mutation methods; the changes live in small
override dicts on top of the lazy generator.

Longer than one reading (about 600 lines) because the numbering, the
catalog rows and the content of one study only make sense together.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import threading
from dataclasses import dataclass, field
from typing import Optional

from . import dicom

MAIN_PROJECT = "17-M-0181"
SECOND_PROJECT = "20-M-0042"
FORBIDDEN_PROJECT = "01-M-0192"

#: Normal scans, rotated per session so that every one shows up in a study.
NORMAL_SCANS = [
    "ASSET calibration",
    "T1w_MPRAGE",
    "rsfMRI (AP) 2.5mm",
    "rsfMRI (AP) 2.5mm",  # duplicated series description within a session
    "DTI/64dir",
    "epiRT",
    "T2w_CUBE",
    "fMRI task (PA) run1",
    # named by the ReproIn convention at the scanner console, which heudiconv's
    # reproin heuristic turns into BIDS names (docs/bids.md).  Last, so that the
    # first sessions keep their scans; with 6 scans a session, the 7th session
    # (sub-P03/ses-01 of the demo and the docs) has all three.
    "anat-T1w",
    "func-bold_task-rest",
    "dwi",
]
#: Series that carry burned-in identifying information on FMRIF's GE scanners.
SPECIAL_SCANS = ["REQUISITION", "SCREEN-SAVE", "SAVE"]

#: Names of files people upload to session resources, as XNAT stores and
#: lists them (a relative path, never URL-encoded): each one breaks a client
#: that unquotes, splits a URL at ``#``/``?``, or keeps only the base name.
ODD_NAMES = (
    "ECG #2.1D",
    "50%41.txt",
    "a (1)?.1D",
    "Atemkurve_\u00fcber_\u00c9tage.1D",
    "run 2/Resp #1.1D",
)

EMPTY_NAME = "run 2/empty.log"

_SCAN_STRIDE = 100  # resource IDs: experiment number * stride + scan index


@dataclass(frozen=True)
class StudySpec:
    """Shape of the synthetic main project (``17-M-0181``)."""

    seed: int = 0
    subjects: int = 3
    sessions_per_subject: tuple = (1, 3)
    scans_per_session: int = 6
    files_per_scan: int = 4
    file_size: int = 8192
    physio: bool = True
    #: the ``supplementary`` resource also holds files named as people name
    #: uploads (``#``, ``?``, ``%``, spaces, parentheses, non-ASCII, a folder)
    odd_names: bool = False

    def __post_init__(self):
        lo, hi = self.sessions_per_subject
        if not 1 <= lo <= hi:
            raise ValueError("sessions_per_subject must be (lo, hi) with 1 <= lo <= hi")
        if self.scans_per_session < 1 or self.files_per_scan < 1:
            raise ValueError("scans_per_session and files_per_scan must be >= 1")
        if self.scans_per_session >= _SCAN_STRIDE - 10:
            raise ValueError(f"scans_per_session must be < {_SCAN_STRIDE - 10}")
        dicom.pixel_shape(self.file_size)  # validates file_size


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    description: str
    pi_firstname: str
    pi_lastname: str
    secondary_id: str
    n_subjects: int
    sessions: tuple
    scans: int
    files: int


@dataclass(frozen=True)
class Subject:
    id: str
    label: str
    project: str
    number: int
    insert_date: str


@dataclass(frozen=True)
class Session:
    id: str
    label: str
    date: str
    subject_id: str
    subject_label: str
    project: str
    number: int
    insert_date: str
    xsi_type: str = "xnat:mrSessionData"


@dataclass(frozen=True)
class Scan:
    id: str
    type: str
    series_description: str
    session_id: str
    resource_id: str
    n_files: int
    quality: str = "usable"
    note: str = ""
    xsi_type: str = "xnat:mrScanData"
    imagescandata_id: str = ""


@dataclass(frozen=True)
class Resource:
    id: str
    label: str
    session_id: str
    scan_id: Optional[str]  # None for a session-level resource
    format: str
    content: str


@dataclass
class File:
    """One file of a resource; ``md5`` is what the listing reports."""

    study: "Study" = field(repr=False)
    session_id: str
    scan_id: Optional[str]
    resource: str
    resource_id: str
    name: str
    size: int
    _key: tuple = field(repr=False)

    @property
    def md5(self) -> str:
        return self.study._listed_digest(self)

    @property
    def true_md5(self) -> str:
        return self.study._md5(self)

    def content(self) -> bytes:
        return self.study._content(self)


def _rng(*parts):
    return dicom._rng(*parts)


def _affine_digits(n: int, salt: int, digits: int = 7) -> str:
    """``digits`` digits that are unique for distinct ``n`` < 10**digits."""
    mod = 10 ** digits
    return f"{(n * 3141593 + salt) % mod:0{digits}d}"


class Study:
    """Lazy, deterministic model of the sandbox's projects and data."""

    def __init__(self, spec: StudySpec | None = None):
        self.spec = spec or StudySpec()
        s = self.spec
        self.seed = s.seed
        self._salt = int(hashlib.sha256(f"salt:{s.seed}".encode()).hexdigest()[:8], 16)
        self._projects = {
            MAIN_PROJECT: Project(MAIN_PROJECT, "Sandbox main protocol",
                                  "Synthetic data for the datalad-fmrif sandbox", "Pat", "Sandbox",
                                  "MAIN", s.subjects, tuple(s.sessions_per_subject),
                                  s.scans_per_session, s.files_per_scan),
            SECOND_PROJECT: Project(SECOND_PROJECT, "Sandbox second protocol",
                                    "A small second readable project", "Kim", "Example",
                                    "SECOND", 2, (1, 1), 3, 2),
            FORBIDDEN_PROJECT: Project(FORBIDDEN_PROJECT, "Sandbox forbidden protocol",
                                       "Exists, but the demo user may not read it", "Lee", "Closed",
                                       "CLOSED", 1, (1, 1), 2, 2),
        }
        self._order = [MAIN_PROJECT, SECOND_PROJECT, FORBIDDEN_PROJECT]
        self._first_number = {}
        n = 1
        for pid in self._order:
            self._first_number[pid] = n
            n += self._projects[pid].n_subjects
        self._n_subjects = n - 1
        self._slot = max(p.sessions[1] for p in self._projects.values())
        self._next_added = self._n_subjects * self._slot + 1

        self._lock = threading.RLock()
        # overrides
        self._added_sessions: dict[int, Session] = {}
        self._added_scans: dict[str, list[Scan]] = {}
        self._deleted_scans: set[tuple[str, str]] = set()
        self._file_versions: dict[tuple, int] = {}
        self._digest_overrides: dict[tuple, str] = {}
        self._renamed: dict[tuple, str] = {}  # (session ID, scan ID, index) -> name
        self._resized: dict[tuple, int] = {}  # DICOM file -> its new size
        self._stale: dict[tuple, tuple] = {}  # file -> (listed size, listed digest)
        self._gone_from_disk: set[tuple] = set()  # listed, but not on disk
        self._unreadable: set[str] = set()  # sessions listed, but not readable
        # caches
        self._content_cache = dicom.ByteLRU(64 * 1024 * 1024)
        self._md5_cache = dicom.BoundedDict(500_000)
        #: number of files whose bytes were generated (for laziness tests)
        self.generated_files = 0

    # ------------------------------------------------------------------ projects
    @property
    def projects(self) -> list[str]:
        return list(self._order)

    def project(self, project_id: str) -> Optional[Project]:
        return self._projects.get(project_id)

    # ------------------------------------------------------------------ subjects
    def _subject_by_number(self, n: int) -> Optional[Subject]:
        if not 1 <= n <= self._n_subjects:
            return None
        for pid in reversed(self._order):
            if n >= self._first_number[pid]:
                break
        idx = n - self._first_number[pid]
        if pid == MAIN_PROJECT and idx == min(1, self._projects[pid].n_subjects - 1):
            label = "DOE^JANE"
        else:
            label = "4" + _affine_digits(n, self._salt)
        rng = _rng(self.seed, "subject", n)
        insert = datetime.datetime(2017, 1, 1) + datetime.timedelta(days=rng.randrange(2000))
        return Subject(id=f"FMRIF_S{n:05d}", label=label, project=pid, number=n,
                       insert_date=insert.strftime("%Y-%m-%d %H:%M:%S.0"))

    def subjects(self, project: str) -> list[Subject]:
        p = self._projects.get(project)
        if p is None:
            return []
        first = self._first_number[project]
        return [self._subject_by_number(first + i) for i in range(p.n_subjects)]

    def subject(self, subject_id: str) -> Optional[Subject]:
        m = re.fullmatch(r"FMRIF_S(\d+)", subject_id or "")
        return self._subject_by_number(int(m.group(1))) if m else None

    def subject_by_label(self, project: str, label: str) -> Optional[Subject]:
        """A subject of ``project`` by accession ID or label (labels are per project)."""
        s = self.subject(label)
        if s is not None and s.project == project:
            return s
        for s in self.subjects(project):
            if s.label == label:
                return s
        return None

    # ------------------------------------------------------------------ sessions
    def _n_lazy_sessions(self, subject: Subject) -> int:
        lo, hi = self._projects[subject.project].sessions
        return _rng(self.seed, "n_sessions", subject.number).randint(lo, hi)

    def _lazy_dates(self, subject: Subject) -> list[datetime.date]:
        rng = _rng(self.seed, "dates", subject.number)
        d = datetime.date(2018, 1, 1) + datetime.timedelta(days=rng.randrange(1500))
        dates = []
        for _ in range(self._slot):
            dates.append(d)
            d = d + datetime.timedelta(days=1 + rng.randrange(180))
        return dates

    def _make_session(self, subject: Subject, number: int, date: datetime.date) -> Session:
        return Session(
            id=f"FMRIF_E{number:05d}",
            label="E" + _affine_digits(number, self._salt ^ 0x5A5A5A),
            date=date.isoformat(),
            subject_id=subject.id, subject_label=subject.label, project=subject.project,
            number=number,
            insert_date=f"{(date + datetime.timedelta(days=1)).isoformat()} 08:15:00.0",
        )

    def sessions(self, subject_id: str) -> list[Session]:
        subject = self.subject(subject_id)
        if subject is None:
            return []
        dates = self._lazy_dates(subject)
        base = (subject.number - 1) * self._slot
        result = [self._make_session(subject, base + k + 1, dates[k])
                  for k in range(self._n_lazy_sessions(subject))]
        with self._lock:
            result += [s for s in self._added_sessions.values() if s.subject_id == subject.id]
        return result

    def project_sessions(self, project: str) -> list[Session]:
        return [e for s in self.subjects(project) for e in self.sessions(s.id)]

    def session(self, session_id: str) -> Optional[Session]:
        m = re.fullmatch(r"FMRIF_E(\d+)", session_id or "")
        if not m:
            return None
        number = int(m.group(1))
        with self._lock:
            if number in self._added_sessions:
                return self._added_sessions[number]
        if not 1 <= number <= self._n_subjects * self._slot:
            return None
        subject = self._subject_by_number((number - 1) // self._slot + 1)
        k = (number - 1) % self._slot
        if k >= self._n_lazy_sessions(subject):
            return None
        return self._make_session(subject, number, self._lazy_dates(subject)[k])

    def session_by_label(self, project: str, label: str, subject_id: str | None = None):
        """A session of ``project`` (and subject) by accession ID or label."""
        e = self.session(label)
        if e is not None and e.project == project and (subject_id is None or e.subject_id == subject_id):
            return e
        pool = self.sessions(subject_id) if subject_id else self.project_sessions(project)
        for e in pool:
            if e.label == label:
                return e
        return None

    # ------------------------------------------------------------------ scans
    def _lazy_scans(self, session: Session) -> list[Scan]:
        project = self._projects[session.project]
        n = project.scans
        rot = session.number % len(NORMAL_SCANS)
        normal = NORMAL_SCANS[rot:] + NORMAL_SCANS[:rot]
        names = ["3Plane_Loc"] if n >= 2 else []
        i = 0
        while len(names) < n - 1:
            names.append(normal[i % len(normal)])
            i += 1
        names.append(SPECIAL_SCANS[session.number % len(SPECIAL_SCANS)])
        names = names[:n]
        scans = []
        for idx, name in enumerate(names, start=1):
            scans.append(Scan(
                id=str(idx), type=name, series_description=name, session_id=session.id,
                resource_id=str(session.number * _SCAN_STRIDE + idx),
                n_files=1 if name in SPECIAL_SCANS else project.files,
                imagescandata_id=str(session.number * _SCAN_STRIDE + idx),
            ))
        return scans

    def scans(self, session_id: str) -> list[Scan]:
        session = self.session(session_id)
        if session is None:
            return []
        with self._lock:
            scans = self._lazy_scans(session) + list(self._added_scans.get(session.id, []))
            return [s for s in scans if (session.id, s.id) not in self._deleted_scans]

    def scan(self, session_id: str, scan_id: str) -> Optional[Scan]:
        for s in self.scans(session_id):
            if s.id == scan_id:
                return s
        return None

    # ------------------------------------------------------------------ resources and files
    def scan_resources(self, session_id: str, scan_id: str) -> list[Resource]:
        scan = self.scan(session_id, scan_id)
        if scan is None:
            return []
        return [Resource(scan.resource_id, "DICOM", session_id, scan.id, "DICOM", "RAW")]

    def session_resources(self, session_id: str) -> list[Resource]:
        session = self.session(session_id)
        if session is None or not self.spec.physio or session.project != MAIN_PROJECT:
            return []
        return [Resource(str(session.number * _SCAN_STRIDE), "supplementary", session_id, None, "", "")]

    def resource_files(self, resource: Resource) -> list[File]:
        session = self.session(resource.session_id)
        if resource.scan_id is None:
            files = []
            compact = session.date.replace("-", "")
            for run in (1, 2):
                for kind in ("ECG", "Resp"):
                    name = f"{kind}_epiRT_run{run}_{compact}.1D"
                    f = File(self, session.id, None, resource.label, resource.id, name, 0,
                             ("physio", session.number, kind, run))
                    f.size = len(self._content(f))
                    files.append(f)
            if self.spec.odd_names:
                for i, name in enumerate(ODD_NAMES, start=10):
                    f = File(self, session.id, None, resource.label, resource.id, name, 0,
                             ("physio", session.number, "ECG", i))
                    f.size = len(self._content(f))
                    files.append(f)
                # a zero-byte upload (an empty marker or log file)
                f = File(self, session.id, None, resource.label, resource.id,
                         EMPTY_NAME, 0, ("empty", session.number))
                f.size = len(self._content(f))
                files.append(f)
            return files
        scan = self.scan(resource.session_id, resource.scan_id)
        files = []
        for i in range(1, scan.n_files + 1):
            if scan.type in ("SAVE", "SCREEN-SAVE"):
                name = f"MR.{dicom.uid(self.seed, session.number, scan.id, i).rsplit('.', 1)[1]}.dcm"
            else:
                name = dicom.uid(self.seed, "file", session.number, scan.id, i) + ".dcm"
            name = self._renamed.get((session.id, scan.id, i), name)
            size = self.spec.file_size if session.project == MAIN_PROJECT else 4096
            size = self._resized.get((session.id, scan.id, name), size)
            files.append(File(self, session.id, scan.id, resource.label, resource.id, name,
                              size, ("dicom", session.number, scan.id, i)))
        return files

    def scan_files(self, session_id: str, scan_id: str) -> list[File]:
        return [f for r in self.scan_resources(session_id, scan_id) for f in self.resource_files(r)]

    def session_level_files(self, session_id: str) -> list[File]:
        return [f for r in self.session_resources(session_id) for f in self.resource_files(r)]

    def files(self, session_id: str) -> list[File]:
        """Every file of a session: all scans, then session-level resources."""
        out = []
        for scan in self.scans(session_id):
            out += self.scan_files(session_id, scan.id)
        return out + self.session_level_files(session_id)

    def file(self, session_id: str, scan_id: Optional[str], name: str) -> Optional[File]:
        pool = self.scan_files(session_id, scan_id) if scan_id is not None \
            else self.session_level_files(session_id)
        for f in pool:
            if f.name == name:
                return f
        return None

    # ------------------------------------------------------------------ content
    def _version(self, f: File) -> int:
        with self._lock:
            return self._file_versions.get((f.session_id, f.scan_id, f.name), 0)

    def _content(self, f: File) -> bytes:
        key = f._key + (self._version(f),)
        data = self._content_cache.get(key)
        if data is not None:
            return data
        version = key[-1]
        session = self.session(f.session_id)
        if key[0] == "empty":
            data = b"" if not version else b"no longer empty\n"
        elif key[0] == "physio":
            data = dicom.make_physio(seed=self.seed, kind=key[2], key=f"{key[1]}:{key[3]}", version=version)
        else:
            scan = self.scan(f.session_id, f.scan_id)
            subject = self.subject(session.subject_id)
            instance = key[3]
            data = dicom.make_dicom(
                seed=self.seed, file_size=f.size,
                patient_id=subject.label if subject.label.isdigit() else "4" + _affine_digits(subject.number, 7),
                patient_name=subject.label if not subject.label.isdigit() else f"SANDBOX^{subject.id}",
                study_date=session.date, accession=session.label,
                study_uid=dicom.uid(self.seed, "study", session.number),
                series_uid=dicom.uid(self.seed, "series", session.number, scan.id),
                series_number=int(scan.id) if scan.id.isdigit() else 0,
                series_description=scan.series_description, n_files=scan.n_files, instance=instance,
                sop_uid=dicom.uid(self.seed, "sop", session.number, scan.id, instance, version),
                version=version,
            )
        with self._lock:
            self.generated_files += 1
        self._content_cache.put(key, data)
        return data

    def _md5(self, f: File) -> str:
        key = f._key + (self._version(f),)
        digest = self._md5_cache.get(key)
        if digest is None:
            digest = hashlib.md5(self._content(f)).hexdigest()
            self._md5_cache.put(key, digest)
        return digest

    def _listed_digest(self, f: File) -> str:
        with self._lock:
            k = (f.session_id, f.scan_id, f.name)
            override = self._digest_overrides.get(k)
            stale = self._stale.get(k)
        if stale is not None:
            return stale[1]
        return override if override is not None else self._md5(f)

    def listed_size(self, f: File) -> int:
        """The size XNAT's catalog reports (stale after :meth:`make_stale`)."""
        with self._lock:
            stale = self._stale.get((f.session_id, f.scan_id, f.name))
        return stale[0] if stale is not None else f.size

    def on_disk(self, f: File) -> bool:
        """False for a file the catalog lists but the archive lacks."""
        with self._lock:
            return (f.session_id, f.scan_id, f.name) not in self._gone_from_disk

    def readable(self, session_id: str) -> bool:
        with self._lock:
            return session_id not in self._unreadable

    # ------------------------------------------------------------------ mutations
    def add_session(self, subject_id: str) -> Session:
        """A new session for ``subject_id``, dated after its existing ones."""
        subject = self.subject(subject_id)
        if subject is None:
            raise KeyError(subject_id)
        with self._lock:
            last = max(datetime.date.fromisoformat(s.date) for s in self.sessions(subject_id))
            number = self._next_added
            self._next_added += 1
            session = self._make_session(subject, number, last + datetime.timedelta(days=30))
            self._added_sessions[number] = session
            return session

    def add_scan(self, session_id: str, type: str = "T1w_MPRAGE", series_description: str | None = None,
                 files: int | None = None) -> Scan:
        """A new scan with the next free scan ID."""
        session = self.session(session_id)
        if session is None:
            raise KeyError(session_id)
        with self._lock:
            existing = self._lazy_scans(session) + self._added_scans.get(session_id, [])
            idx = max(int(s.id) for s in existing) + 1
            if idx >= _SCAN_STRIDE:
                raise ValueError("too many scans in this session")
            scan = Scan(id=str(idx), type=type, series_description=series_description or type,
                        session_id=session_id, resource_id=str(session.number * _SCAN_STRIDE + idx),
                        n_files=files or self._projects[session.project].files,
                        imagescandata_id=str(session.number * _SCAN_STRIDE + idx))
            self._added_scans.setdefault(session_id, []).append(scan)
            return scan

    def delete_scan(self, session_id: str, scan_id: str) -> None:
        if self.scan(session_id, scan_id) is None:
            raise KeyError((session_id, scan_id))
        with self._lock:
            self._deleted_scans.add((session_id, scan_id))

    def change_file(self, session_id: str, scan_id: Optional[str], name: str) -> File:
        """Give a file new content (and so a new MD5) from now on."""
        if self.file(session_id, scan_id, name) is None:
            raise KeyError((session_id, scan_id, name))
        with self._lock:
            k = (session_id, scan_id, name)
            self._file_versions[k] = self._file_versions.get(k, 0) + 1
        f = self.file(session_id, scan_id, name)
        if scan_id is None:
            f.size = len(f.content())
        return f

    def rename_file(self, session_id: str, scan_id: str, name: str, new_name: str) -> None:
        """Serve a scan's file under another name (same content) from now on,
        e.g. to give two scans files of the same name."""
        f = self.file(session_id, scan_id, name)
        if f is None or f._key[0] != "dicom":
            raise KeyError((session_id, scan_id, name))
        with self._lock:
            self._renamed[(session_id, scan_id, f._key[3])] = new_name

    def make_stale(self, session_id: str, scan_id: Optional[str], name: str,
                   new_size: Optional[int] = None) -> File:
        """The file changes on disk, XNAT's catalog is not refreshed: listings
        keep its old size and digest (XNAT reads both from the catalog), the
        download sends the new content. ``new_size`` also changes the length
        of a DICOM file."""
        old = self.file(session_id, scan_id, name)
        if old is None:
            raise KeyError((session_id, scan_id, name))
        listed = (old.size, self._listed_digest(old))
        with self._lock:
            k = (session_id, scan_id, name)
            self._stale[k] = listed
            self._file_versions[k] = self._file_versions.get(k, 0) + 1
            if new_size is not None and old._key[0] == "dicom":
                self._resized[k] = new_size
        return self.file(session_id, scan_id, name)

    def remove_from_disk(self, session_id: str, scan_id: Optional[str], name: str) -> None:
        """The file goes from the archive's disk; the catalog still lists it."""
        if self.file(session_id, scan_id, name) is None:
            raise KeyError((session_id, scan_id, name))
        with self._lock:
            self._gone_from_disk.add((session_id, scan_id, name))

    def make_unreadable(self, session_id: str) -> None:
        """The session stays in its subject's experiment listing, but its
        data cannot be read (permissions changed, archive moved or gone)."""
        if self.session(session_id) is None:
            raise KeyError(session_id)
        with self._lock:
            self._unreadable.add(session_id)

    def set_digest(self, session_id: str, scan_id: Optional[str], name: str, value: Optional[str]) -> None:
        """Make listings report ``value`` as the digest (None: the true MD5 again)."""
        if self.file(session_id, scan_id, name) is None:
            raise KeyError((session_id, scan_id, name))
        with self._lock:
            k = (session_id, scan_id, name)
            if value is None:
                self._digest_overrides.pop(k, None)
            else:
                self._digest_overrides[k] = value
