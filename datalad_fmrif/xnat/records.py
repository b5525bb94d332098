"""What XNAT tells us, as plain immutable records.

Names follow XNAT's own vocabulary: a *subject* has *experiments* (for MR
data: image sessions, called *sessions* here), a session has *scans*, a scan
has *resources* (``DICOM``), and a resource holds *files*. Every object has an
accession ID (``FMRIF_S...``, ``FMRIF_E...``) and a label; labels of subjects
are MRNs or names and labels of sessions are accession numbers, so labels are
identifiers of study participants and are handled with care downstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote


@dataclass(frozen=True)
class Subject:
    project: str
    id: str  # accession ID, e.g. FMRIF_S00001
    label: str  # MRN or name: an identifier


@dataclass(frozen=True)
class Session:
    """An XNAT image session (an "experiment" in XNAT's REST API)."""

    project: str
    id: str  # accession ID, e.g. FMRIF_E00001
    label: str  # accession number: an identifier
    subject_id: str
    date: str  # ISO date of acquisition, '' when XNAT has none
    xsi_type: str  # e.g. xnat:mrSessionData


@dataclass(frozen=True)
class Scan:
    id: str  # e.g. "3"; unique within its session
    type: str
    series_description: str
    quality: str = ""
    xsi_type: str = ""


@dataclass(frozen=True)
class RemoteFile:
    """One file as XNAT lists it, located by accession IDs only.

    ``scan_id`` is ``None`` for a file of a session-level resource
    (``supplementary`` physio files at FMRIF).
    """

    session_id: str
    scan_id: str | None
    resource: str  # resource label, e.g. DICOM
    resource_id: str  # XNAT's numeric resource (catalog) ID
    name: str  # file name inside the resource, may contain '/'
    size: int
    md5: str  # lower-case hex, '' when XNAT has no digest

    @property
    def path(self) -> str:
        """Server path of the file, built from accession IDs (never labels)."""
        base = f"/data/experiments/{_quote(self.session_id)}"
        if self.scan_id is not None:
            base += f"/scans/{_quote(self.scan_id)}"
        return (
            f"{base}/resources/{_quote(self.resource_id)}"
            f"/files/{_quote(self.name, keep_slashes=True)}"
        )


# what urllib's quote() never changes: the common case, tested first
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
_UNRESERVED_PATH = re.compile(r"[A-Za-z0-9_.~/-]*")


def _quote(text: str, keep_slashes: bool = False) -> str:
    """``urllib.parse.quote(text, safe="/" if keep_slashes else "")``,
    without its cost for the IDs and DICOM file names that need no quoting."""
    if (_UNRESERVED_PATH if keep_slashes else _UNRESERVED).fullmatch(text):
        return text
    return quote(text, safe="/" if keep_slashes else "")


@dataclass(frozen=True)
class SessionCatalog:
    """Everything one session holds that a download needs."""

    session: Session
    scans: tuple[Scan, ...]
    files: tuple[RemoteFile, ...]
    # rows of the listing that could not be used, with the reason
    rejected: tuple[str, ...] = ()

    def scan(self, scan_id: str | None) -> Scan | None:
        """The scan with this ID (the first, should XNAT list one twice)."""
        return self._scans_by_id.get(scan_id)

    @cached_property
    def _scans_by_id(self) -> dict[str, Scan]:
        # asked for every file of the session: no search through the scans
        by_id: dict[str, Scan] = {}
        for s in self.scans:
            by_id.setdefault(s.id, s)
        return by_id
