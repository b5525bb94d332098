"""The synthetic study model: deterministic, lazy, awkward where it should be."""

from __future__ import annotations

import hashlib
import io
import time

import pydicom
import pytest

from datalad_fmrif.sandbox import StudySpec
from datalad_fmrif.sandbox.study import Study

MAIN = "17-M-0181"


def test_projects_and_ids():
    study = Study(StudySpec())
    assert study.projects == ["17-M-0181", "20-M-0042", "01-M-0192"]
    subjects = study.subjects(MAIN)
    assert len(subjects) == 3
    assert [s.label for s in subjects].count("DOE^JANE") == 1
    for s in subjects:
        assert s.id.startswith("FMRIF_S") and s.project == MAIN
        if s.label != "DOE^JANE":
            assert len(s.label) == 8 and s.label.startswith("4") and s.label.isdigit()
    assert len(study.subjects("20-M-0042")) == 2
    all_ids = [s.id for p in study.projects for s in study.subjects(p)]
    assert len(set(all_ids)) == len(all_ids)
    for s in subjects:
        sessions = study.sessions(s.id)
        assert 1 <= len(sessions) <= 3
        dates = [e.date for e in sessions]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        for e in sessions:
            assert e.id.startswith("FMRIF_E") and e.subject_id == s.id
            assert e.xsi_type == "xnat:mrSessionData"
            assert study.session(e.id) == e


def test_awkward_scans_exist_across_study():
    study = Study(StudySpec())
    sessions = study.project_sessions(MAIN)
    descriptions = [sc.series_description for e in sessions for sc in study.scans(e.id)]
    for wanted in ("REQUISITION", "SCREEN-SAVE", "SAVE", "3Plane_Loc", "T1w_MPRAGE",
                   "ASSET calibration", "rsfMRI (AP) 2.5mm", "DTI/64dir"):
        assert wanted in descriptions, wanted
    assert any(
        len(set(d)) < len(d)
        for d in ([sc.series_description for sc in study.scans(e.id)] for e in sessions))
    for e in sessions:
        for sc in study.scans(e.id):
            assert sc.quality == "usable" and sc.xsi_type == "xnat:mrScanData"
    rids = [r.id for e in sessions for sc in study.scans(e.id) for r in study.scan_resources(e.id, sc.id)]
    rids += [r.id for e in sessions for r in study.session_resources(e.id)]
    assert len(set(rids)) == len(rids) and all(r.isdigit() for r in rids)


def test_files_and_physio():
    study = Study(StudySpec())
    e = study.project_sessions(MAIN)[0]
    files = study.files(e.id)
    dicoms = [f for f in files if f.scan_id is not None]
    physio = [f for f in files if f.scan_id is None]
    assert all(f.size == 8192 and f.resource == "DICOM" for f in dicoms)
    assert {f.name.split("_")[0] for f in physio} == {"ECG", "Resp"}
    assert all(f.resource == "supplementary" and f.name.endswith(".1D") for f in physio)
    for f in files:
        data = f.content()
        assert len(data) == f.size
        assert hashlib.md5(data).hexdigest() == f.md5
    ds = pydicom.dcmread(io.BytesIO(dicoms[0].content()))
    assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert ds.pixel_array.size > 0
    assert ds.SeriesDescription == study.scan(e.id, dicoms[0].scan_id).series_description
    float(physio[0].content().split()[0])


def test_file_size_is_configurable():
    study = Study(StudySpec(file_size=65536, files_per_scan=2))
    f = study.files(study.project_sessions(MAIN)[0].id)[0]
    assert f.size == 65536 and len(f.content()) == 65536
    with pytest.raises(ValueError):
        StudySpec(file_size=100)


def test_determinism():
    a, b = Study(StudySpec(seed=7)), Study(StudySpec(seed=7))
    c = Study(StudySpec(seed=8))
    ea, eb = a.project_sessions(MAIN), b.project_sessions(MAIN)
    assert ea == eb
    assert [f.md5 for f in a.files(ea[0].id)] == [f.md5 for f in b.files(eb[0].id)]
    assert [s.label for s in a.subjects(MAIN)] != [s.label for s in c.subjects(MAIN)]


def test_laziness_of_a_large_study():
    t0 = time.monotonic()
    study = Study(StudySpec(subjects=1000, sessions_per_subject=(2, 2), scans_per_session=10,
                            files_per_scan=300))
    subject = study.subjects(MAIN)[500]
    sessions = study.sessions(subject.id)
    assert len(sessions) == 2
    assert study.scans(sessions[1].id)[0].id == "1"
    files = study.scan_files(sessions[1].id, "2")
    assert len(files) == 300 and all(f.size == 8192 for f in files)
    assert study.generated_files == 0
    assert time.monotonic() - t0 < 5
    files[0].md5
    assert study.generated_files == 1


def test_mutations():
    study = Study(StudySpec())
    subject = study.subjects(MAIN)[0]
    before = study.sessions(subject.id)
    new = study.add_session(subject.id)
    assert study.sessions(subject.id) == before + [new]
    assert new.date > before[-1].date and study.session(new.id) == new
    assert study.scans(new.id)

    e = before[0]
    n = len(study.scans(e.id))
    scan = study.add_scan(e.id, type="T1w_MPRAGE", files=2)
    assert scan.id == str(n + 1) and len(study.scan_files(e.id, scan.id)) == 2
    study.delete_scan(e.id, "1")
    assert "1" not in [s.id for s in study.scans(e.id)]

    f = study.scan_files(e.id, "2")[0]
    old = f.md5
    study.change_file(e.id, "2", f.name)
    f2 = study.file(e.id, "2", f.name)
    new_md5 = f2.md5
    assert new_md5 != old and hashlib.md5(f2.content()).hexdigest() == new_md5

    study.set_digest(e.id, "2", f.name, "")
    assert study.file(e.id, "2", f.name).md5 == ""
    assert hashlib.md5(study.file(e.id, "2", f.name).content()).hexdigest() == new_md5
    study.set_digest(e.id, "2", f.name, None)
    assert study.file(e.id, "2", f.name).md5 == new_md5
