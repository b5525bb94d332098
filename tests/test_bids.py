"""From XNAT to BIDS, proven: the recipe of docs/bids.md, run for real.

A session downloaded with fmrif-download in the default layout is converted
by heudiconv (ReproIn heuristic, dcm2niix) through ``datalad run`` into a
``rawdata/`` subdataset, and the result passes the BIDS validator.  The
converters are not dependencies of datalad-fmrif: they come with the
``bids`` extra (part of ``devel``); in CI their absence is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import datalad.api as dl
import pytest
from helpers import PROJECT, download, git, keyring_sandbox, subjects_csv

from datalad_fmrif.sandbox import StudySpec
from datalad_fmrif.sandbox.demo import OFFLINE
from datalad_fmrif.sandbox.study import Study

TOOLS = ("heudiconv", "dcm2niix", "bids-validator-deno")
# two sessions of 12 scans: every series the sandbox names, the ReproIn ones included
SPEC = StudySpec(seed=19, subjects=1, sessions_per_subject=(2, 2), scans_per_session=12,
                 files_per_scan=4, file_size=4096)
# what `datalad run` runs (it fills in {placeholders}, so heudiconv's own are doubled)
HEUDICONV = ("heudiconv -f reproin -c dcm2niix --bids --minmeta -o rawdata "
             "-d 'sub-{{subject}}/ses-{{session}}/*/*.dcm' -s P01 -ss SESSION")


@pytest.fixture(autouse=True)
def converters(monkeypatch):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        msg = f"not installed: {', '.join(missing)} (pip install -e '.[bids]')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    # nipype, heudiconv, dcm2bids and deno ask the internet for newer versions
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)


def test_dcm2niix_converts_every_series_without_a_warning(tmp_path):
    study = Study(SPEC)
    session = study.project_sessions(PROJECT)[0]
    scans = study.scans(session.id)
    for scan in scans:
        folder = tmp_path / "dicom" / scan.id
        folder.mkdir(parents=True)
        for f in study.scan_files(session.id, scan.id):
            (folder / f.name).write_bytes(f.content())
        out = tmp_path / "nifti" / scan.id
        out.mkdir(parents=True)
        proc = subprocess.run(["dcm2niix", "-b", "y", "-z", "y", "-f", "%s", "-o", str(out), str(folder)],
                              capture_output=True, text=True)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 0, said
        assert "warning" not in said.lower() and "error" not in said.lower(), (scan.series_description, said)
        assert [p.name for p in out.glob("*.nii.gz")] == [f"{scan.id}.nii.gz"], said
        if "dwi" in scan.series_description.lower() or "dti" in scan.series_description.lower():
            assert (out / f"{scan.id}.bval").read_text().split() == ["0", "1000"]


def _validate(path) -> list[dict]:
    proc = subprocess.run(["bids-validator-deno", "--format", "json", str(path)],
                          capture_output=True, text=True)
    report = json.loads(proc.stdout)
    return [i for i in report["issues"]["issues"] if i["severity"] == "error"]


def test_heudiconv_through_datalad_run_gives_valid_bids(tmp_path, secret_service, state_dir):
    with keyring_sandbox(SPEC) as sb:
        subject = sb.study.subjects(PROJECT)[0]
        sessions = sb.study.sessions(subject.id)
        csv = subjects_csv(tmp_path, [(PROJECT, subject.label, "P01")])
        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        download(ds, sb, csv, no_content=True)
        ds.get("sub-P01", result_renderer="disabled")

        # the BIDS dataset: a subdataset with text in git; heudiconv's own
        # notes (.heudiconv/: DICOM headers with the subject's ID) stay out
        dl.create(dataset=ds.path, path=ds.pathobj / "rawdata", cfg_proc="text2git",
                  result_renderer="disabled")
        (ds.pathobj / "rawdata" / ".gitignore").write_text(".heudiconv/\n")
        ds.save(recursive=True, message="BIDS dataset for the conversion", result_renderer="disabled")

        for ses in ("01", "02"):
            ds.run(HEUDICONV.replace("SESSION", ses), inputs=[f"sub-P01/ses-{ses}"], outputs=["rawdata"],
                   message=f"Convert sub-P01/ses-{ses} to BIDS", result_renderer="disabled")
            record = git(ds, "log", "-1", "--format=%B")
            assert "[DATALAD RUNCMD] Convert sub-P01/ses-" + ses in record
            assert f"-s P01 -ss {ses}" in record and '"inputs": [\n  "sub-P01/ses-' + ses in record

    raw = ds.pathobj / "rawdata"
    for ses in ("01", "02"):
        base = raw / "sub-P01" / f"ses-{ses}"
        assert (base / "anat" / f"sub-P01_ses-{ses}_T1w.nii.gz").exists()
        assert (base / "func" / f"sub-P01_ses-{ses}_task-rest_bold.nii.gz").exists()
        assert (base / "dwi" / f"sub-P01_ses-{ses}_dwi.bval").read_text().split() == ["0", "1000"]
    assert git(dl.Dataset(raw), "status", "--porcelain") == ""
    assert git(ds, "status", "--porcelain") == ""
    assert _validate(raw) == []

    # no XNAT label (subject, session) in either dataset's history
    labels = [subject.label, subject.label.split("^")[0]] + [s.label for s in sessions]
    for path in (ds.pathobj, raw):
        history = subprocess.run(["git", "log", "--all", "-p", "--format=%B"], cwd=path,
                                 capture_output=True, text=True, check=True).stdout
        assert history and not [label for label in labels if label in history], path
    assert not git(dl.Dataset(raw), "ls-files", ".heudiconv")
    # reproin's DICOM tarballs carry the headers: annexed, like the DICOM files
    tarballs = sorted((raw / "sourcedata").rglob("*.dicom.tgz"))
    assert tarballs and all(p.is_symlink() for p in tarballs)


def test_the_validator_finds_errors(tmp_path):
    """The check above can fail: a BIDS dataset without its description is an error."""
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    (tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not a NIfTI")
    assert _validate(tmp_path)
