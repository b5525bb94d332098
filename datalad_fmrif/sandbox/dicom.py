"""Synthetic DICOM and physio files for the sandbox XNAT server.

Everything here is made up: names, IDs and pixels come from a seeded random
generator.  Files are deterministic for a given seed and file identity, so
their size and MD5 are stable across runs and across sandbox instances.

The DICOM files are MR images as a GE scanner writes them, complete enough
for dcm2niix and heudiconv: one file per slice, slices of a series stepping
along the slice normal (ImagePositionPatient, SliceLocation), and for fMRI
and diffusion series several volumes of the same slices, with the timing
tags GE writes (AcquisitionTime, TriggerTime, the RTIA timer) and, for
diffusion, GE's private b-value and gradient tags.  What a series looks like
(sequence, TR/TE/flip angle, slices x volumes) follows from its series
description and its number of files (:func:`acquisition`).

Every DICOM file of a study has exactly ``file_size`` bytes: the pixel matrix
is chosen to fill most of it and a DICOM "Data Set Trailing Padding" element
(FFFC,FFFC) fills the rest.  The size of a file is therefore known without
generating it; only its MD5 needs the bytes.

About 500 lines: the tags a GE scanner writes, which dcm2niix and heudiconv
need, are listed here in one place rather than spread over helpers.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

#: Made-up UID root used for every synthetic UID (file names, SOP instances).
UID_ROOT = "1.2.826.0.1.3680043.9.7433"

#: Room reserved for everything in a DICOM file except the pixel data.
HEADER_ALLOWANCE = 3072

#: The smallest file size that the fixed-size construction supports.
MIN_FILE_SIZE = 4096

#: What GE writes into (0018,1030) ProtocolName: the exam's protocol, the same
#: for every series of a session.  The name of a series is its SeriesDescription
#: (which is where a ReproIn name typed at a GE console ends up).
PROTOCOL_NAME = "SANDBOX RESEARCH"

_PADDING_ELEMENT_HEADER = 12  # tag (4) + VR (2) + reserved (2) + length (4)
_FIELD_OF_VIEW = 240.0  # mm, along the columns; pixels are square


def _rng(*parts) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across runs
    return random.Random(":".join(str(p) for p in parts))


def uid(*parts) -> str:
    """A deterministic UID under the sandbox's made-up root (always the same length)."""
    digest = int(hashlib.sha1(":".join(str(p) for p in parts).encode()).hexdigest()[:16], 16)
    return f"{UID_ROOT}.{10 ** 17 + digest % (9 * 10 ** 17)}"


_PLACEHOLDER_UID = f"{UID_ROOT}.{9 * 10 ** 17}"


def pixel_shape(file_size: int) -> tuple[int, int]:
    """Rows and columns of the pixel matrix of a DICOM file of ``file_size`` bytes."""
    if file_size < MIN_FILE_SIZE:
        raise ValueError(f"file_size must be at least {MIN_FILE_SIZE} bytes, got {file_size}")
    pixel_bytes = file_size - HEADER_ALLOWANCE
    cols = 64 if pixel_bytes < 512 * 1024 else 256
    rows = max(1, pixel_bytes // (2 * cols))
    return rows, cols


# ---------------------------------------------------------------------------- acquisitions

@dataclass(frozen=True)
class Acquisition:
    """How a series was acquired: what dcm2niix and heudiconv read from it.

    Times in milliseconds, lengths in millimetres, as DICOM has them.
    ``sequence`` is GE's pulse sequence name (0019,109C); ``epi`` its
    internal EPI flavour (0019,109E): ``EPI`` for gradient echo (fMRI),
    ``EPI2`` for spin echo (diffusion), which is what makes dcm2niix read
    GE's diffusion tags.
    """

    kind: str  # "anat", "func", "dwi", "localizer", "calibration", "screen", "other"
    sequence: str
    repetition_time: float
    echo_time: float
    flip_angle: float
    slice_thickness: float
    slices: int
    volumes: int
    three_d: bool = False
    epi: str = ""

    @property
    def image_type(self) -> list[str]:
        if self.kind == "screen":
            return ["DERIVED", "SECONDARY", "SCREEN SAVE"]
        return ["ORIGINAL", "PRIMARY", "OTHER"]


def _volumes(n_files: int) -> tuple[int, int]:
    """Slices and volumes of a time series of ``n_files`` images: as many
    slices as possible while there are at least as many volumes."""
    slices = max(d for d in range(1, math.isqrt(n_files) + 1) if n_files % d == 0)
    return slices, n_files // slices


#: (words in the lower-cased series description, kind, GE sequence, TR, TE, flip, thickness, 3D, EPI)
_PROTOCOLS = (
    (("func-", "fmri", "epirt"), "func", "epiRT", 2000.0, 30.0, 70.0, 3.0, False, "EPI"),
    (("dwi", "dti"), "dwi", "epi2", 8000.0, 80.0, 90.0, 2.5, False, "EPI2"),
    (("t2w", "cube"), "anat", "Cube", 3200.0, 90.0, 90.0, 1.0, True, ""),
    (("t1w", "mprage", "anat-"), "anat", "efgre3d", 7.6, 3.0, 12.0, 1.0, True, ""),
    (("loc",), "localizer", "fgre", 5.0, 1.5, 30.0, 5.0, False, ""),
    (("asset", "calibration"), "calibration", "3dasset", 150.0, 1.6, 5.0, 5.0, True, ""),
    # pictures of the console or the requisition form, saved as a series
    (("save", "requisition"), "screen", "fse", 500.0, 10.0, 90.0, 5.0, False, ""),
)


def acquisition(series_description: str, n_files: int) -> Acquisition:
    """What a GE scanner would have acquired for a series of this name and size.

    fMRI and diffusion series are time series (see :func:`_volumes`); every
    other series is one volume of ``n_files`` slices.  A time series of
    fewer than 4 files has a single slice, which dcm2niix converts with a
    warning (it cannot tell the slice direction); 4 or more files give at
    least 2 slices and 2 volumes.
    """
    name = series_description.lower()
    for words, kind, seq, tr, te, flip, thick, three_d, epi in _PROTOCOLS:
        if any(w in name for w in words):
            break
    else:
        kind, seq, tr, te, flip, thick, three_d, epi = "other", "fse", 500.0, 10.0, 90.0, 5.0, False, ""
    slices, volumes = _volumes(n_files) if kind in ("func", "dwi") else (n_files, 1)
    return Acquisition(kind, seq, tr, te, flip, thick, slices, volumes, three_d, epi)


def _gradient(volume: int) -> tuple[int, tuple[float, float, float]]:
    """b-value and unit gradient direction of a diffusion volume: b=0 first,
    then b=1000 along directions spread over a half sphere (a spiral)."""
    if volume == 0:
        return 0, (0.0, 0.0, 0.0)
    z = 1.0 - (volume - 0.5) / 32.0
    r = math.sqrt(max(0.0, 1.0 - z * z))
    phi = volume * 2.399963  # the golden angle
    return 1000, (r * math.cos(phi), r * math.sin(phi), z)


# ---------------------------------------------------------------------------- DICOM files

def _ds(x: float) -> str:
    """A decimal string of fixed width (10), so that a template can be spliced."""
    return f"{x:+010.4f}"


def _tm(seconds: float) -> str:
    """A DICOM time HHMMSS.FFFFFF (fixed width) for seconds after midnight."""
    micro = round(seconds * 1e6)
    s, us = divmod(micro, 1_000_000)
    return f"{s // 3600 % 24:02d}{s // 60 % 60:02d}{s % 60:02d}.{us:06d}"


def _series_start(series_number: int) -> float:
    """Seconds after midnight at which a series starts (the study starts at 09:00)."""
    return 9 * 3600 + 7 * 60 * series_number


def _per_file(acq: Acquisition, series_number: int, instance: int, rows: int, cols: int) -> dict:
    """The values that differ between the files of a series, by keyword,
    formatted at fixed width (see :func:`make_dicom`)."""
    volume, slice_ = divmod(instance - 1, acq.slices)
    spacing = _FIELD_OF_VIEW / cols
    z = (slice_ - (acq.slices - 1) / 2) * acq.slice_thickness
    # interleaved acquisition: even slices first, then odd ones
    order = list(range(0, acq.slices, 2)) + list(range(1, acq.slices, 2))
    slice_time = order.index(slice_) * acq.repetition_time / acq.slices if acq.volumes > 1 else 0.0
    offset = volume * acq.repetition_time + slice_time  # ms after the series started
    time = _tm(_series_start(series_number) + offset / 1000)
    values = {
        "InstanceNumber": f"{instance:06d}",
        "AcquisitionTime": time,
        "ContentTime": time,
        "ImagePositionPatient": [_ds(-cols * spacing / 2), _ds(-rows * spacing / 2), _ds(z)],
        "SliceLocation": _ds(z),
    }
    if acq.volumes > 1:
        values["TriggerTime"] = f"{slice_time:010.2f}"
        values["TemporalPositionIdentifier"] = f"{volume + 1:04d}"
        values[(0x0021, 0x105E)] = f"{offset / 1000:014.6f}"  # GE RTIA timer, seconds
    if acq.kind == "dwi":
        bvalue, direction = _gradient(volume)
        values[(0x0043, 0x1039)] = f"{bvalue:010d}\\8\\0\\0"  # GE slop_int_6..9: b-value first
        for elem, component in zip((0x10BB, 0x10BC, 0x10BD), direction):
            values[(0x0019, elem)] = f"{component:+09.6f}"
    return values


def _protocol_block(acq: Acquisition, series_description: str) -> bytes:
    """GE's Protocol Data Block (0025,101B): the exam card's settings as
    ``KEY "value"`` lines, gzipped, after a 4-byte length.

    dcm2niix reads slice order, slice count and imaging options from it to
    work out slice timing.  The gzip member holds one stored (uncompressed)
    deflate block, so the bytes do not depend on the zlib at hand.
    """
    lines = {"ENTRY": "Head First", "POSITION": "Supine", "PLANE": "AXIAL",
             "SEDESC": series_description, "PSEQ": acq.sequence,
             "IOPT": {"func": "MPh, EDR, Fast, FMRI", "dwi": "EDR, Fast, DIFF"}.get(acq.kind, ""),
             "NOSLC": str(acq.slices), "SLICEORDER": "1", "VIEWORDER": "1", "MBACCEL": "1",
             "DELACQ": "Minimum", "DELACQNOAV": "0"}
    text = "".join(f'{key} "{value}"\n' for key, value in lines.items()).encode("latin-1", "replace")
    text = b"\n" + text  # dcm2niix finds SLICEORDER as "\nSLICEORDER"
    stored = b"\x01" + struct.pack("<HH", len(text), len(text) ^ 0xFFFF) + text
    member = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + stored
              + struct.pack("<II", zlib.crc32(text), len(text)))
    block = struct.pack("<I", len(member)) + member
    return block + b"\0" * (len(block) % 2)


_PRIVATE = {  # GE's private blocks: group -> private creator
    0x0019: "GEMS_ACQU_01",
    0x0021: "GEMS_RELA_01",
    0x0025: "GEMS_SERS_01",
    0x0043: "GEMS_PARM_01",
}
_PRIVATE_VR = {
    (0x0019, 0x109C): "LO", (0x0019, 0x109E): "LO",
    (0x0019, 0x10BB): "DS", (0x0019, 0x10BC): "DS", (0x0019, 0x10BD): "DS",
    (0x0019, 0x10E0): "DS",
    (0x0021, 0x104F): "SS", (0x0021, 0x105E): "DS", (0x0025, 0x101B): "OB",
    (0x0043, 0x102F): "SS", (0x0043, 0x1039): "IS",
}


def _set(ds: Dataset, key, value) -> None:
    """Set a standard element by keyword or a GE private one by (group, element)."""
    if isinstance(key, str):
        setattr(ds, key, value)
        return
    group, elem = key
    block = ds.private_block(group, _PRIVATE[group], create=True)
    block.add_new(elem & 0xFF, _PRIVATE_VR[key], value)


def _build_dicom(*, file_size, acq, patient_id, patient_name, study_date, accession, study_uid,
                 series_uid, series_number, series_description, sop_uid, file_values,
                 pixels) -> bytes:
    """The DICOM file without trailing padding; the pixel data is its last element."""
    rows, cols = pixel_shape(file_size)
    spacing = _FIELD_OF_VIEW / cols
    date = study_date.replace("-", "")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = f"{UID_ROOT}.1"
    meta.ImplementationVersionName = "FMRIF_SANDBOX"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = acq.image_type
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = _tm(_series_start(0))
    ds.SeriesTime = _tm(_series_start(series_number))
    ds.AccessionNumber = accession
    ds.Modality = "MR"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.InstitutionName = "SANDBOX"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SANDBOX^SYNTHETIC"
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "SYNTHETIC"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = ["EP"] if acq.epi else ["GR"]
    ds.SequenceVariant = ["NONE"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D" if acq.three_d else "2D"
    ds.SequenceName = acq.sequence
    ds.SliceThickness = acq.slice_thickness
    ds.RepetitionTime = acq.repetition_time
    ds.EchoTime = acq.echo_time
    ds.ImagingFrequency = 127.7
    ds.MagneticFieldStrength = 3
    ds.SpacingBetweenSlices = acq.slice_thickness
    ds.EchoTrainLength = 1
    ds.SoftwareVersions = ["27", "LX", "MR Software release:RX27.0_R02_1831.b"]
    ds.ProtocolName = PROTOCOL_NAME
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.FlipAngle = acq.flip_angle
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = uid(study_uid, "frame")
    if acq.volumes > 1:
        ds.NumberOfTemporalPositions = acq.volumes
    ds.ImagesInAcquisition = acq.slices
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.ImageComments = "synthetic sandbox data"
    _set(ds, (0x0019, 0x109C), acq.sequence)
    if acq.epi:
        _set(ds, (0x0019, 0x109E), acq.epi)
    if acq.kind == "dwi":
        _set(ds, (0x0019, 0x10E0), str(acq.volumes - 1))  # number of diffusion directions
    _set(ds, (0x0021, 0x104F), acq.slices)  # LocationsInAcquisition
    _set(ds, (0x0025, 0x101B), _protocol_block(acq, series_description))
    _set(ds, (0x0043, 0x102F), 0)  # magnitude image
    for key, value in file_values.items():
        _set(ds, key, value)
    ds.PixelData = pixels
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


_templates = None  # BoundedDict, made below (the class is defined later in this module)


def _spans(data: bytes, header_end: int, keys) -> list | None:
    """Where the value of each element ``keys`` names starts, and its length.

    An element is found by its tag, VR and 16-bit length, which occur once
    in the header of a file written in explicit VR little endian.
    """
    keyword_tags = {"InstanceNumber": (0x0020, 0x0013), "AcquisitionTime": (0x0008, 0x0032),
                    "ContentTime": (0x0008, 0x0033), "ImagePositionPatient": (0x0020, 0x0032),
                    "SliceLocation": (0x0020, 0x1041), "TriggerTime": (0x0018, 0x1060),
                    "TemporalPositionIdentifier": (0x0020, 0x0100)}
    head = data[:header_end]
    spans = []
    for key in keys:
        group, elem = keyword_tags.get(key, key)
        if not isinstance(key, str):  # private: the block's element number
            elem = (_private_block_number(head, group) << 8) | (elem & 0xFF)
        needle = struct.pack("<HH", group, elem)
        found = [m.start() for m in re.finditer(re.escape(needle), head)]
        if len(found) != 1:
            return None
        pos = found[0] + 6
        spans.append((key, pos + 2, struct.unpack("<H", head[pos:pos + 2])[0]))
    return spans


def _private_block_number(head: bytes, group: int) -> int:
    """The block (xx of (gggg,00xx)) pydicom reserved for GE's creator in ``group``."""
    creator = _PRIVATE[group].encode()
    for block in range(0x10, 0x100):
        needle = struct.pack("<HH", group, block) + b"LO"
        pos = head.find(needle)
        if pos >= 0 and head[pos + 8:pos + 8 + len(creator)] == creator:
            return block
    raise LookupError(group)


def _template(common: tuple, acq: Acquisition, file_size: int, file_values: dict):
    """Bytes of a file of the series with placeholder per-file values, and
    where to splice each file's own values, or None when that cannot work."""
    key = (common, acq, file_size)
    hit = _templates.get(key)
    if hit is not None:
        return hit
    rows, cols = pixel_shape(file_size)
    names = ("patient_id", "patient_name", "study_date", "accession", "study_uid", "series_uid",
             "series_number", "series_description")
    natural = _build_dicom(file_size=file_size, acq=acq, **dict(zip(names, common)),
                           sop_uid=_PLACEHOLDER_UID, file_values=file_values,
                           pixels=bytes(rows * cols * 2))
    pix_off = len(natural) - rows * cols * 2
    uid_bytes = _PLACEHOLDER_UID.encode()
    uid_pos = [m.start() for m in re.finditer(re.escape(uid_bytes), natural[:pix_off])]
    spans = _spans(natural, pix_off, file_values)
    hit = (natural, uid_pos, spans, pix_off) if len(uid_pos) == 2 and spans else None
    _templates.put(key, hit or False)
    return hit


def make_dicom(*, seed, file_size: int, patient_id: str, patient_name: str,
               study_date: str, accession: str, study_uid: str, series_uid: str,
               series_number: int, series_description: str, n_files: int, instance: int,
               sop_uid: str, version: int = 0) -> bytes:
    """One MR Image Storage file of exactly ``file_size`` bytes: image
    ``instance`` (1-based) of a series of ``n_files`` images.

    Files of one series differ only in a few elements (SOP instance UID,
    instance number, position, times, gradient) and the pixels, so one
    pydicom-written template per series is spliced per file.  Every per-file
    value has a fixed width, so the spliced bytes are the bytes pydicom
    would write for that file.
    """
    rows, cols = pixel_shape(file_size)
    acq = acquisition(series_description, n_files)
    gen = np.random.default_rng(
        int.from_bytes(hashlib.sha256(f"{seed}:{sop_uid}:{version}".encode()).digest()[:8], "little"))
    pixels = gen.integers(0, 4096, size=rows * cols, dtype=np.uint16).tobytes()
    common = (patient_id, patient_name, study_date, accession, study_uid, series_uid, series_number,
              series_description)
    values = _per_file(acq, series_number, instance, rows, cols)
    tpl = _template(common, acq, file_size, values) if len(sop_uid) == len(_PLACEHOLDER_UID) else None
    if tpl:
        natural, uid_pos, spans, pix_off = tpl
        buf = bytearray(natural)
        for pos in uid_pos:
            buf[pos:pos + len(sop_uid)] = sop_uid.encode()
        for key, pos, length in spans:
            value = values[key]
            text = ("\\".join(value) if isinstance(value, list) else value).encode()
            if len(text) > length:
                raise RuntimeError(f"{key} {value!r} is wider than its template ({length} bytes)")
            buf[pos:pos + length] = text.ljust(length)
        buf[pix_off:] = pixels
        natural = bytes(buf)
    else:
        names = ("patient_id", "patient_name", "study_date", "accession", "study_uid", "series_uid",
                 "series_number", "series_description")
        natural = _build_dicom(file_size=file_size, acq=acq, **dict(zip(names, common)),
                               sop_uid=sop_uid, file_values=values, pixels=pixels)
    pad = file_size - len(natural) - _PADDING_ELEMENT_HEADER
    if pad < 0 or pad % 2:
        raise RuntimeError(f"cannot pad DICOM of {len(natural)} bytes to {file_size}")
    # (FFFC,FFFC) Data Set Trailing Padding is the highest tag: appending it keeps the data set sorted
    data = natural + b"\xfc\xff\xfc\xffOB\0\0" + struct.pack("<I", pad) + b"\0" * pad
    assert len(data) == file_size, (len(data), file_size)
    return data


def make_physio(*, seed, kind: str, key: str, version: int = 0) -> bytes:
    """A small text file of numbers, like GE's ECG_*.1D / Resp_*.1D physio logs."""
    rng = _rng(seed, "physio", kind, key, version)
    n = 1000 + rng.randrange(1000)
    if kind == "ECG":
        values = (str(2000 + rng.randrange(-400, 400)) for _ in range(n))
    else:
        values = (str(rng.randrange(0, 4096)) for _ in range(n))
    return ("\n".join(values) + "\n").encode("ascii")


class ByteLRU:
    """A thread-safe LRU cache bounded by the total size of its values."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._data: OrderedDict = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value: bytes):
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._data[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._size -= len(dropped)

    def __len__(self):
        return len(self._data)

    @property
    def nbytes(self):
        return self._size


class BoundedDict:
    """A thread-safe LRU mapping bounded by the number of entries."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value):
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def __len__(self):
        return len(self._data)


_templates = BoundedDict(256)
