"""The sandbox's DICOM files are MR images as a GE scanner writes them.

Follows what dcm2niix reads from GE files (console/nii_dicom.cpp and
nii_dicom_batch.cpp of rordenlab/dcm2niix: geometry, the GE private tags
for EPI, diffusion and the Protocol Data Block (0025,101B)) and what
heudiconv groups by (StudyInstanceUID per session, SeriesInstanceUID per
series).  That dcm2niix converts them without a warning is tested in
tests/test_bids.py, where dcm2niix is installed.
"""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pydicom
import pytest

from datalad_fmrif.sandbox import StudySpec, dicom
from datalad_fmrif.sandbox.study import Study

MAIN = "17-M-0181"
# 12 scans: the localizer, every normal series once (two resting-state runs), a special one
SPEC = StudySpec(seed=5, subjects=1, sessions_per_subject=(1, 1), scans_per_session=12,
                 files_per_scan=6, file_size=4096)


def _series(study, session):
    return {scan.series_description + f"#{scan.id}": [pydicom.dcmread(io.BytesIO(f.content()))
                                                      for f in study.scan_files(session.id, scan.id)]
            for scan in study.scans(session.id)}


def test_one_study_per_session_one_series_per_scan():
    study = Study(SPEC)
    session = study.project_sessions(MAIN)[0]
    series = _series(study, session)
    assert {"anat-T1w#9", "func-bold_task-rest#10", "dwi#11"} <= set(series)
    datasets = [ds for files in series.values() for ds in files]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == len(series)
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    # GE: ProtocolName names the exam card; the series' own name is its description
    assert {ds.ProtocolName for ds in datasets} == {dicom.PROTOCOL_NAME}


def test_sessions_of_a_subject_are_told_apart():
    """heudiconv groups files by StudyInstanceUID (and refuses a mix)."""
    study = Study(StudySpec(seed=5, subjects=1, sessions_per_subject=(2, 2), file_size=4096))
    first = []
    for session in study.project_sessions(MAIN):
        f = study.scan_files(session.id, "1")[0]
        first.append(pydicom.dcmread(io.BytesIO(f.content())))
    assert len({ds.StudyInstanceUID for ds in first}) == 2
    assert len({ds.AccessionNumber for ds in first}) == 2
    assert len({ds.StudyDate for ds in first}) == 2
    assert len({ds.PatientID for ds in first}) == 1


def test_slices_step_along_the_slice_normal():
    study = Study(SPEC)
    session = study.project_sessions(MAIN)[0]
    for name, files in _series(study, session).items():
        first = files[0]
        assert first.Manufacturer == "GE MEDICAL SYSTEMS" and first.Modality == "MR", name
        for keyword in ("RepetitionTime", "EchoTime", "FlipAngle", "SliceThickness",
                        "PixelSpacing", "ImageOrientationPatient", "SeriesDescription"):
            assert keyword in first, (name, keyword)
        row, col = np.array(first.ImageOrientationPatient[:3]), np.array(first.ImageOrientationPatient[3:])
        normal = np.cross(row, col)
        acq = dicom.acquisition(first.SeriesDescription, len(files))
        by_instance = sorted(files, key=lambda ds: int(ds.InstanceNumber))
        positions = [float(np.dot(normal, np.array(ds.ImagePositionPatient, float)))
                     for ds in by_instance[:acq.slices]]
        assert np.allclose(np.diff(positions), float(first.SliceThickness)), name
        # later volumes repeat the first one's positions
        for ds in by_instance[acq.slices:]:
            k = (int(ds.InstanceNumber) - 1) % acq.slices
            assert np.dot(normal, np.array(ds.ImagePositionPatient, float)) == pytest.approx(positions[k])
        assert int(first.ImagesInAcquisition) == acq.slices
        assert first.pixel_array.shape == (first.Rows, first.Columns)


def test_time_series_have_volumes_and_timing():
    study = Study(SPEC)
    session = study.project_sessions(MAIN)[0]
    series = _series(study, session)
    bold = sorted(series["func-bold_task-rest#10"], key=lambda ds: int(ds.InstanceNumber))
    acq = dicom.acquisition("func-bold_task-rest", len(bold))
    assert (acq.slices, acq.volumes) == (2, 3)
    assert [int(ds.TemporalPositionIdentifier) for ds in bold] == [1, 1, 2, 2, 3, 3]
    assert {int(ds.NumberOfTemporalPositions) for ds in bold} == {3}
    times = [float(ds.AcquisitionTime) for ds in bold]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert bold[0][0x0019, 0x109C].value == "epiRT"  # GE pulse sequence: fMRI
    # GE's protocol data block: a 4-byte length, then gzipped "KEY "value"" lines
    block = bold[0][0x0025, 0x101B].value
    (length,) = struct.unpack("<I", block[:4])
    text = gzip.decompress(block[4:4 + length]).decode()
    assert 'NOSLC "2"' in text and 'SLICEORDER "1"' in text

    dwi = sorted(series["dwi#11"], key=lambda ds: int(ds.InstanceNumber))
    bvalues = [int(str(ds[0x0043, 0x1039].value[0])) for ds in dwi]
    assert bvalues == [0, 0, 1000, 1000, 1000, 1000]
    directions = {tuple(float(ds[0x0019, e].value) for e in (0x10BB, 0x10BC, 0x10BD)) for ds in dwi[2:]}
    assert len(directions) == 2 and all(np.isclose(np.linalg.norm(d), 1) for d in directions)
    assert dwi[0][0x0019, 0x109E].value == "EPI2"  # spin-echo EPI: dcm2niix reads the b-values


def test_spliced_files_are_what_pydicom_writes():
    """The per-series template is a shortcut only: every file is byte for
    byte the file pydicom writes for it."""
    study = Study(SPEC)
    session = study.project_sessions(MAIN)[0]
    for scan in study.scans(session.id):
        for f in study.scan_files(session.id, scan.id)[:3]:
            ds = pydicom.dcmread(io.BytesIO(f.content()))
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            assert buf.getvalue() == f.content()


def test_file_size_stays_exact_for_long_series():
    study = Study(StudySpec(seed=5, subjects=1, files_per_scan=300, file_size=8192))
    session = study.project_sessions(MAIN)[0]
    for scan in study.scans(session.id)[:4]:
        files = study.scan_files(session.id, scan.id)
        for f in (files[0], files[-1]):
            assert len(f.content()) == 8192
            ds = pydicom.dcmread(io.BytesIO(f.content()))
            assert int(ds.InstanceNumber) == int(files.index(f)) + 1
