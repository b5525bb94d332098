"""Synthetic DICOM and physio files for the sandbox XNAT server.

Everything here is made up: names, IDs and pixels come from a seeded random
generator.  Files are deterministic for a given seed and file identity, so
their size and MD5 are stable across runs and across sandbox instances.

Every DICOM file of a study has exactly ``file_size`` bytes: the pixel matrix
is chosen to fill most of it and a DICOM "Data Set Trailing Padding" element
(FFFC,FFFC) fills the rest.  The size of a file is therefore known without
generating it; only its MD5 needs the bytes.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
import threading
from collections import OrderedDict

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

_PADDING_ELEMENT_HEADER = 12  # tag (4) + VR (2) + reserved (2) + length (4)


def _rng(*parts) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across runs
    return random.Random(":".join(str(p) for p in parts))


def uid(*parts) -> str:
    """A deterministic UID under the sandbox's made-up root (always the same length)."""
    digest = int(hashlib.sha1(":".join(str(p) for p in parts).encode()).hexdigest()[:16], 16)
    return f"{UID_ROOT}.{10 ** 17 + digest % (9 * 10 ** 17)}"


_PLACEHOLDER_UID = f"{UID_ROOT}.{9 * 10 ** 17}"
_PLACEHOLDER_INSTANCE = "000000"


def pixel_shape(file_size: int) -> tuple[int, int]:
    """Rows and columns of the pixel matrix of a DICOM file of ``file_size`` bytes."""
    if file_size < MIN_FILE_SIZE:
        raise ValueError(f"file_size must be at least {MIN_FILE_SIZE} bytes, got {file_size}")
    pixel_bytes = file_size - HEADER_ALLOWANCE
    cols = 64 if pixel_bytes < 512 * 1024 else 256
    rows = max(1, pixel_bytes // (2 * cols))
    return rows, cols


def _build_dicom(*, file_size, patient_id, patient_name, study_date, accession, study_uid, series_uid,
                 series_number, series_description, instance_text, sop_uid, pixels) -> bytes:
    """The DICOM file without trailing padding; the pixel data is its last element."""
    rows, cols = pixel_shape(file_size)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = f"{UID_ROOT}.1"
    meta.ImplementationVersionName = "FMRIF_SANDBOX"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date.replace("-", "")
    ds.SeriesDate = ds.StudyDate
    ds.StudyTime = "090000"
    ds.AccessionNumber = accession
    ds.Modality = "MR"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.InstitutionName = "SANDBOX"
    ds.StudyDescription = "SANDBOX^SYNTHETIC"
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "SYNTHETIC"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "BRAIN"
    ds.MagneticFieldStrength = "3"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_text
    ds.ImagesInAcquisition = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [1, 1]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.ImageComments = "synthetic sandbox data"
    ds.PixelData = pixels
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


_templates = None  # BoundedDict, made below (the class is defined later in this module)


def _template(common: tuple, file_size: int):
    """Bytes of a file with placeholder UID/instance, and where to splice per-file values."""
    key = (common, file_size)
    hit = _templates.get(key)
    if hit is not None:
        return hit
    rows, cols = pixel_shape(file_size)
    names = ("patient_id", "patient_name", "study_date", "accession", "study_uid", "series_uid",
             "series_number", "series_description")
    natural = _build_dicom(file_size=file_size, **dict(zip(names, common)), instance_text=_PLACEHOLDER_INSTANCE,
                           sop_uid=_PLACEHOLDER_UID, pixels=bytes(rows * cols * 2))
    uid_bytes = _PLACEHOLDER_UID.encode()
    uid_pos = [m.start() for m in re.finditer(re.escape(uid_bytes), natural)]
    inst_tag = b"\x20\x00\x13\x00IS" + struct.pack("<H", len(_PLACEHOLDER_INSTANCE))
    inst_pos = natural.find(inst_tag) + len(inst_tag)
    if len(uid_pos) != 2 or natural.count(inst_tag) != 1:
        hit = None
    else:
        hit = (natural, uid_pos, inst_pos, len(natural) - rows * cols * 2)
    _templates.put(key, hit or False)
    return hit


def make_dicom(*, seed, file_size: int, patient_id: str, patient_name: str,
               study_date: str, accession: str, study_uid: str, series_uid: str,
               series_number: int, series_description: str, instance: int,
               sop_uid: str, version: int = 0) -> bytes:
    """One MR Image Storage file of exactly ``file_size`` bytes.

    Files of one series differ only in SOP instance UID, instance number and
    pixels, so one pydicom-written template per series is spliced per file.
    """
    rows, cols = pixel_shape(file_size)
    gen = np.random.default_rng(
        int.from_bytes(hashlib.sha256(f"{seed}:{sop_uid}:{version}".encode()).digest()[:8], "little"))
    pixels = gen.integers(0, 4096, size=rows * cols, dtype=np.uint16).tobytes()
    common = (patient_id, patient_name, study_date, accession, study_uid, series_uid, series_number,
              series_description)
    instance_text = f"{instance:06d}"
    tpl = None
    if len(sop_uid) == len(_PLACEHOLDER_UID) and len(instance_text) == len(_PLACEHOLDER_INSTANCE):
        tpl = _template(common, file_size)
    if tpl:
        natural, uid_pos, inst_pos, pix_off = tpl
        buf = bytearray(natural)
        for pos in uid_pos:
            buf[pos:pos + len(sop_uid)] = sop_uid.encode()
        buf[inst_pos:inst_pos + len(instance_text)] = instance_text.encode()
        buf[pix_off:] = pixels
        natural = bytes(buf)
    else:
        natural = _build_dicom(file_size=file_size, patient_id=patient_id, patient_name=patient_name,
                               study_date=study_date, accession=accession, study_uid=study_uid,
                               series_uid=series_uid, series_number=series_number,
                               series_description=series_description, instance_text=str(instance),
                               sop_uid=sop_uid, pixels=pixels)
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
