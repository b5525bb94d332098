"""Tests of datalad_fmrif.plan (pure: catalogs in, plans out).

All labels and IDs are invented.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from datalad_fmrif.plan import (
    DEFAULT_EXCLUDE_SERIES,
    DEFAULT_TEMPLATE,
    TEMPLATE_FIELDS,
    PlanError,
    PlannedFile,
    PlanOptions,
    name_sessions,
    plan_session,
    sanitize_component,
    sanitize_label,
)
from datalad_fmrif.xnat.records import RemoteFile, Scan, Session, SessionCatalog

MD5 = "0123456789abcdef0123456789abcdef"
SUBJECT_LABEL = "40000001"
SESSION_LABEL = "90001111"


def session(id="FMRIF_E00001", date="2024-01-05", label=SESSION_LABEL):
    return Session(
        project="17-M-0181", id=id, label=label, subject_id="FMRIF_S00001",
        date=date, xsi_type="xnat:mrSessionData",
    )


def rfile(scan_id, name, *, resource="DICOM", resource_id="101", size=10, md5=MD5,
          session_id="FMRIF_E00001"):
    return RemoteFile(
        session_id=session_id, scan_id=scan_id, resource=resource,
        resource_id=resource_id, name=name, size=size, md5=md5,
    )


def catalog(scans, files, sess=None):
    return SessionCatalog(session=sess or session(), scans=tuple(scans), files=tuple(files))


def plan(cat, options=None, subject="S01", session_name="01"):
    return plan_session(
        cat, subject=subject, session=session_name, project="17-M-0181",
        options=options or PlanOptions(),
    )


def paths(p):
    return [f.path for f in p.files]


STANDARD = catalog(
    [
        Scan("1", "localizer", "3Plane Loc"),
        Scan("3", "rsfMRI", "rsfMRI (AP) 2.5mm"),
        Scan("4", "DTI", "DTI/64dir"),
        Scan("90", "REQUISITION", "REQUISITION"),
        Scan("91", "OTHER", "Screen Save"),
        Scan("92", "SAVE", ""),
        Scan("93", "OTHER", "save"),
    ],
    [
        rfile("1", "1.dcm"),
        rfile("3", "IM-0001.dcm", resource_id="103"),
        rfile("3", "IM-0002.dcm", resource_id="103"),
        rfile("3", "rest.nii.gz", resource="NIFTI", resource_id="113"),
        rfile("4", "DTI.dcm", resource_id="104"),
        rfile("90", "req.dcm", resource_id="190"),
        rfile("91", "ss.dcm", resource_id="191"),
        rfile("92", "save.dcm", resource_id="192"),
        rfile("93", "save2.dcm", resource_id="193"),
        rfile(None, "ECG_epiRT_phys.1D", resource="supplementary", resource_id="200"),
        rfile(None, "Resp_epiRT_phys.1D", resource="supplementary", resource_id="200"),
    ],
)


# ---------------------------------------------------------------- default plan


def test_default_plan_paths():
    p = plan(STANDARD)
    assert paths(p) == [
        "sub-S01/ses-01/1-3Plane_Loc/1.dcm",
        "sub-S01/ses-01/3-rsfMRI_AP_2.5mm/IM-0001.dcm",
        "sub-S01/ses-01/3-rsfMRI_AP_2.5mm/IM-0002.dcm",
        "sub-S01/ses-01/4-DTI_64dir/DTI.dcm",
    ]
    assert p.problems == ()
    assert p.bytes == 40
    assert p.subject == "S01" and p.session == "01" and p.catalog is STANDARD


def test_default_exclusions_by_series_description_and_type():
    p = plan(STANDARD)
    reasons = {f.name: r for f, r in p.excluded}
    assert reasons["req.dcm"] == "series 'REQUISITION' excluded by default (identifying text)"
    assert reasons["ss.dcm"] == "series 'Screen Save' excluded by default (identifying text)"
    # empty series description: matched on the type
    assert reasons["save.dcm"] == "series 'SAVE' excluded by default (identifying text)"
    assert reasons["save2.dcm"] == "series 'save' excluded by default (identifying text)"
    assert reasons["rest.nii.gz"] == "resource 'NIFTI' not selected"
    assert reasons["ECG_epiRT_phys.1D"] == "resource 'supplementary' not selected"
    assert len(p.excluded) + len(p.files) == len(STANDARD.files)


def test_default_exclusion_on_type_only():
    cat = catalog([Scan("5", "REQUISITION", "Patient info")], [rfile("5", "a.dcm")])
    p = plan(cat)
    assert p.files == ()
    assert p.excluded[0][1].startswith("series 'Patient info' excluded by default")


@pytest.mark.parametrize(
    "text, excluded",
    [
        ("REQUISITION", True), ("requisition", True), (" SAVE ", True),
        ("SCREEN-SAVE", True), ("screen_save", True), ("SCREENSAVE", True),
        ("Screen Save", True), ("SAVED", False), ("Requisition form", False),
        ("T1 SAVE", False),
    ],
)
def test_default_exclude_pattern(text, excluded):
    cat = catalog([Scan("5", "MR", text)], [rfile("5", "a.dcm")])
    assert (plan(cat).files == ()) is excluded


def test_exclusion_can_be_switched_off():
    p = plan(STANDARD, PlanOptions(exclude_series=None))
    assert "sub-S01/ses-01/90-REQUISITION/req.dcm" in paths(p)
    assert "sub-S01/ses-01/92-SAVE/save.dcm" in paths(p)


def test_include_series():
    p = plan(STANDARD, PlanOptions(include_series="rsfmri|^dti"))
    assert paths(p) == [
        "sub-S01/ses-01/3-rsfMRI_AP_2.5mm/IM-0001.dcm",
        "sub-S01/ses-01/3-rsfMRI_AP_2.5mm/IM-0002.dcm",
        "sub-S01/ses-01/4-DTI_64dir/DTI.dcm",
    ]
    reasons = {f.name: r for f, r in p.excluded}
    assert reasons["1.dcm"] == "series '3Plane Loc' does not match include_series"
    # exclusion wins over inclusion
    assert "excluded by default" in reasons["req.dcm"]


def test_include_series_matches_type():
    p = plan(STANDARD, PlanOptions(include_series="^localizer$"))
    assert paths(p) == ["sub-S01/ses-01/1-3Plane_Loc/1.dcm"]


def test_custom_exclude_series():
    p = plan(STANDARD, PlanOptions(exclude_series="loc"))
    reasons = {f.name: r for f, r in p.excluded}
    assert reasons["1.dcm"] == "series '3Plane Loc' matches exclude_series"
    # the default exclusion is replaced, not added to
    assert "sub-S01/ses-01/90-REQUISITION/req.dcm" in paths(p)


def test_resources_including_supplementary():
    p = plan(STANDARD, PlanOptions(resources=("dicom", "Supplementary", "NIFTI")))
    assert paths(p) == [
        "sub-S01/ses-01/1-3Plane_Loc/1.dcm",
        "sub-S01/ses-01/3-rsfMRI_AP_2.5mm/IM-0001.dcm",
        "sub-S01/ses-01/3-rsfMRI_AP_2.5mm/IM-0002.dcm",
        "sub-S01/ses-01/3-rsfMRI_AP_2.5mm/rest.nii.gz",
        "sub-S01/ses-01/4-DTI_64dir/DTI.dcm",
        "sub-S01/ses-01/supplementary/ECG_epiRT_phys.1D",
        "sub-S01/ses-01/supplementary/Resp_epiRT_phys.1D",
    ]
    physio = p.files[-1]
    assert physio.scan is None
    assert physio.url_path == "/data/experiments/FMRIF_E00001/resources/200/files/Resp_epiRT_phys.1D"


def test_supplementary_not_filtered_by_series():
    p = plan(STANDARD, PlanOptions(resources=("supplementary",), include_series="nothing"))
    assert paths(p) == [
        "sub-S01/ses-01/supplementary/ECG_epiRT_phys.1D",
        "sub-S01/ses-01/supplementary/Resp_epiRT_phys.1D",
    ]


def test_supplementary_with_other_templates():
    opts = PlanOptions(
        template="{subject}/{scan_type}/{scan}_{series_description}/{resource}/{file}",
        resources=("supplementary",),
    )
    # consecutive scan components collapse into one resource folder
    assert paths(plan(STANDARD, opts))[0] == "S01/supplementary/supplementary/ECG_epiRT_phys.1D"
    opts = PlanOptions(template="{subject}/{scan}_{file}", resources=("supplementary",))
    assert paths(plan(STANDARD, opts))[0] == "S01/supplementary_ECG_epiRT_phys.1D"


def test_scan_missing_from_scan_list():
    cat = catalog([], [rfile("7", "x.dcm")])
    p = plan(cat)
    assert p.files == ()
    assert "scan 7 is not in the session's scan list" in p.excluded[0][1]
    p = plan(cat, PlanOptions(exclude_series=None))
    assert paths(p) == ["sub-S01/ses-01/7-_/x.dcm"]


# ---------------------------------------------------------------- template


def test_all_template_fields():
    template = "/".join("{%s}" % f for f in TEMPLATE_FIELDS)
    p = plan(STANDARD, PlanOptions(template=template))
    assert p.files[1].path == (
        "S01/01/FMRIF_S00001/FMRIF_E00001/17-M-0181/3/rsfMRI/rsfMRI_AP_2.5mm/DICOM/103/IM-0001.dcm"
    )


def test_template_fields_constant():
    assert TEMPLATE_FIELDS == (
        "subject", "session", "subject_id", "session_id", "project", "scan",
        "scan_type", "series_description", "resource", "resource_id", "file",
    )
    assert DEFAULT_TEMPLATE == "sub-{subject}/ses-{session}/{scan}-{series_description}/{file}"
    assert DEFAULT_EXCLUDE_SERIES == r"^(REQUISITION|SCREEN[-_ ]?SAVE|SAVE)$"


def test_literal_braces_and_prefix_folder():
    opts = PlanOptions(template="sourcedata/{{x}}/sub-{subject}/{file}")
    assert paths(plan(STANDARD, opts))[0] == "sourcedata/{x}/sub-S01/1.dcm"


def test_series_description_falls_back_to_type():
    cat = catalog([Scan("5", "T1w", "  ")], [rfile("5", "a.dcm")])
    assert paths(plan(cat)) == ["sub-S01/ses-01/5-T1w/a.dcm"]


def test_awkward_series_descriptions():
    scans = [
        Scan("5", "x", "../../etc"),
        Scan("6", "x", "a/b\\c:d*e?f"),
        Scan("7", "x", "???"),
        Scan("8", "x", ".hidden"),
        Scan("9", "x", "CON"),
    ]
    scans.append(Scan("10", "x", "nul"))
    cat = catalog(scans, [rfile(s.id, "a.dcm") for s in scans])
    assert paths(plan(cat)) == [
        "sub-S01/ses-01/5-etc/a.dcm",
        "sub-S01/ses-01/6-a_b_c_d_e_f/a.dcm",
        "sub-S01/ses-01/7-_/a.dcm",
        "sub-S01/ses-01/8-hidden/a.dcm",
        "sub-S01/ses-01/9-CON/a.dcm",  # not a whole component: fine
        "sub-S01/ses-01/10-nul/a.dcm",
    ]
    opts = PlanOptions(template="{subject}/{series_description}/{file}")
    assert paths(plan(cat, opts))[-1] == "S01/nul_/a.dcm"


def test_file_names_with_sub_folders():
    cat = catalog([Scan("5", "x", "T1")], [rfile("5", "sec/./a b.dcm"), rfile("5", "x//y.dcm")])
    first, second = paths(plan(cat))
    assert re.fullmatch(r"sub-S01/ses-01/5-T1/sec/a_b-[0-9a-f]{6}\.dcm", first)
    assert second == "sub-S01/ses-01/5-T1/x/y.dcm"


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "//etc/passwd", "a/../../b.dcm", ".."]
)
def test_file_names_leaving_the_resource_are_problems(name):
    cat = catalog([Scan("5", "x", "T1")], [rfile("5", name), rfile("5", "ok.dcm")])
    p = plan(cat)
    assert paths(p) == ["sub-S01/ses-01/5-T1/ok.dcm"]
    assert len(p.problems) == 1
    assert p.problems[0].startswith(f"scan 5 file {name}: ")
    for f in p.files:
        assert not f.path.startswith("/") and ".." not in f.path.split("/")


def test_file_name_with_dots_and_git_components():
    cat = catalog(
        [Scan("5", "x", "T1")],
        [rfile("5", ".git/config"), rfile("5", "..\\..\\x"), rfile("5", ".datalad")],
    )
    p = plan(cat)
    got = paths(p)
    for path, pattern in zip(got, [r"git-[0-9a-f]{6}/config", r"x-[0-9a-f]{6}",
                                   r"datalad-[0-9a-f]{6}"]):
        assert re.fullmatch(r"sub-S01/ses-01/5-T1/" + pattern, path)
    assert len(got) == 3 and p.problems == ()


@pytest.mark.parametrize(
    "template, message",
    [
        ("sub-{subject}/{nope}/{file}", "unknown field {nope}"),
        ("sub-{subject}/{scan.id}/{file}", "unknown field"),
        ("sub-{subject}/{}/{file}", "unknown field"),
        ("/abs/{file}", "must be relative"),
        ("../{file}", "must not contain '..'"),
        ("a..b/{file}", "must not contain '..'"),
        ("sub-{subject}/ses-{session}", "must contain {file}"),
        ("{file}/{file}", "exactly once"),
        ("{file}/{scan}", "last component"),
        ("{subject}//{file}", "empty folder name"),
        ("{subject}/{file}/", "last component"),
        ("./{file}", "'.' is not allowed"),
        ("{subject}/.git/{file}", "'.git'"),
        ("{subject}/.GIT/{file}", "'.git'"),
        (".datalad/{file}", "'.datalad'"),
        ("a\\b/{file}", "'/'"),
        ("{scan:>3}/{file}", "format specifications"),
        ("{scan!r}/{file}", "format specifications"),
        ("{scan/{file}", "path template"),
        ("", "empty"),
        ("a\tb/{file}", "control character"),
    ],
)
def test_bad_templates(template, message):
    opts = PlanOptions(template=template)
    with pytest.raises(PlanError, match=re.escape(message)):
        opts.validate()
    with pytest.raises(PlanError):
        plan(STANDARD, opts)


def test_datalad_below_top_is_allowed():
    PlanOptions(template="{subject}/.datalad/{file}").validate()


@pytest.mark.parametrize(
    "options, message",
    [
        (PlanOptions(include_series="("), "include_series"),
        (PlanOptions(exclude_series="[a"), "exclude_series"),
        (PlanOptions(resources=()), "non-empty"),
        (PlanOptions(resources="DICOM"), "non-empty"),
        (PlanOptions(resources=("DICOM", " ")), "empty labels"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(PlanError, match=message):
        options.validate()


def test_default_options_validate():
    PlanOptions().validate()


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "name, extension",
    [
        # expected values from git-annex 10.2026 `calckey --backend=MD5E`
        ("1.3.12.2.1107.dcm", ".1107.dcm"),
        ("ECG_epiRT.1D", ".1D"),
        ("x.nii.gz", ".nii.gz"),
        ("noext", ""),
        ("a.b.c.d", ".c.d"),
        ("longext.abcde", ""),
        ("IM-0001-0001.dcm", ".dcm"),
        ("file.tar.gz.verylong", ""),
        ("MR.1.2.840.113619.2.5", ".2.5"),
        ("a.tar.GZ", ".tar.GZ"),
        ("a.b_c", ""),
    ],
)
def test_key_extension_like_git_annex(name, extension):
    cat = catalog([Scan("5", "x", "T1")], [rfile("5", name, size=1234, md5=MD5.upper())])
    f = plan(cat).files[0]
    assert f.key == f"MD5E-s1234--{MD5}{extension}"
    assert f.md5 == MD5 and f.size == 1234


@pytest.mark.parametrize("md5", ["", "xyz", MD5[:-1], MD5 + "0", "g" * 32])
def test_no_usable_digest_no_key(md5):
    cat = catalog([Scan("5", "x", "T1")], [rfile("5", "a.dcm", md5=md5)])
    f = plan(cat).files[0]
    assert f.key is None and f.md5 == ""
    assert f.url_path == "/data/experiments/FMRIF_E00001/scans/5/resources/101/files/a.dcm"


def test_url_path_uses_ids_and_original_name():
    cat = catalog([Scan("5", "x", "T1")], [rfile("5", "sub dir/a b#.dcm")])
    f = plan(cat).files[0]
    # changed by sanitising: a digest of the original name keeps it distinct
    assert re.fullmatch(r"sub-S01/ses-01/5-T1/sub_dir-[0-9a-f]{6}/a_b-[0-9a-f]{6}\.dcm", f.path)
    assert f.url_path == "/data/experiments/FMRIF_E00001/scans/5/resources/101/files/sub%20dir/a%20b%23.dcm"
    assert f.file.name == "sub dir/a b#.dcm"


@pytest.mark.parametrize("name", [
    "1.3.12.2.1107.5.2.dcm", "a~b_c-d.e/f", "é.dcm", "a b", "a%20b", "a?b", "a#b",
    "a+b", "a;b", "a:b", "a@b", "", "/", "x//y", "\t", "a\\b", "%", "€",
])
def test_url_path_quotes_like_urllib(name):
    # the shortcut for names that need no quoting must never change a URL
    f = RemoteFile(session_id="E 1", scan_id="5/6", resource="DICOM",
                   resource_id="1%", name=name, size=1, md5=MD5)
    assert f.path == (
        f"/data/experiments/{quote('E 1', safe='')}/scans/{quote('5/6', safe='')}"
        f"/resources/{quote('1%', safe='')}/files/{quote(name, safe='/')}"
    )


# ---------------------------------------------------------------- collisions


def test_names_that_sanitise_alike_stay_distinct():
    """Names people give uploads (XNAT lists them as stored): each keeps a
    path of its own, whatever else the resource holds."""
    names = ["a b.dcm", "a_b.dcm", "a?b.dcm", "ECG #2.1D", "ECG_2.1D", "50%41.txt",
             "a (1)?.1D", "a (1)!.1D", "\u00fcber.1D", "\u00e9ber.1D"]
    cat = catalog([Scan("3", "x", "T1")], [rfile("3", n) for n in names])
    p = plan(cat, PlanOptions(template="sub-{subject}/{series_description}/{file}"))
    assert p.problems == ()
    got = {f.file.name: f.path for f in p.files}
    assert len(set(got.values())) == len(names)
    assert got["a_b.dcm"] == "sub-S01/T1/a_b.dcm" and got["ECG_2.1D"] == "sub-S01/T1/ECG_2.1D"
    # the same name, the same path, on every run
    again = plan(catalog([Scan("3", "x", "T1")], [rfile("3", "ECG #2.1D")]),
                 PlanOptions(template="sub-{subject}/{series_description}/{file}"))
    assert again.files[0].path == got["ECG #2.1D"]
    assert got["ECG #2.1D"].endswith(".1D") and "#" not in got["ECG #2.1D"]


def test_exact_collision_is_a_problem():
    cat = catalog(
        [Scan("3", "x", "T1"), Scan("4", "x", "T1")],
        [rfile("3", "a.dcm"), rfile("4", "a.dcm"), rfile("3", "b.dcm")],
    )
    p = plan(cat, PlanOptions(template="sub-{subject}/{series_description}/{file}"))
    assert p.problems == (
        "2 files planned to sub-S01/T1/a.dcm: scan 3 file a.dcm, scan 4 file a.dcm",
    )


def test_collision_across_scans():
    cat = catalog(
        [Scan("3", "x", "T1"), Scan("4", "x", "T1")],
        [rfile("3", "A.dcm"), rfile("4", "A.dcm")],
    )
    p = plan(cat, PlanOptions(template="{subject}/{series_description}/{file}"))
    assert p.problems == ("2 files planned to S01/T1/A.dcm: scan 3 file A.dcm, scan 4 file A.dcm",)


def test_collision_two_resources_same_name():
    cat = catalog(
        [Scan("3", "x", "T1")],
        [rfile("3", "a.dcm"), rfile("3", "a.dcm", resource="secondary", resource_id="9")],
    )
    assert plan(cat, PlanOptions(resources=("DICOM", "secondary"))).conflicts != ()
    opts = PlanOptions(template=DEFAULT_TEMPLATE.replace("{file}", "{resource}/{file}"),
                       resources=("DICOM", "secondary"))
    assert plan(cat, opts).problems == ()
    assert plan(cat, opts).conflicts == ()


def test_same_name_in_two_resources_of_a_scan_is_that_file_s_problem():
    """Two DICOM resources of one scan with a file of the same name: those
    files are left out, with a message naming both resources; the rest of
    the session (its other scans and files) is planned as usual."""
    cat = catalog(
        [Scan("3", "x", "T1"), Scan("4", "x", "T2")],
        [rfile("3", "dup.dcm"), rfile("3", "other.dcm"),
         rfile("3", "dup.dcm", resource_id="102"), rfile("4", "dup.dcm")],
    )
    p = plan(cat)
    assert p.problems == ()
    assert paths(p) == ["sub-S01/ses-01/3-T1/other.dcm", "sub-S01/ses-01/4-T2/dup.dcm"]
    [(path, why)] = p.conflicts
    assert path == "sub-S01/ses-01/3-T1/dup.dcm"
    assert "DICOM (ID 101)" in why and "DICOM (ID 102)" in why
    assert "{resource_id}" in why
    opts = PlanOptions(template=DEFAULT_TEMPLATE.replace("{file}", "{resource_id}-{file}"))
    assert plan(cat, opts).conflicts == () and len(plan(cat, opts).files) == 4


def test_case_insensitive_collision_is_a_problem():
    cat = catalog([Scan("3", "x", "T1")], [rfile("3", "a.dcm"), rfile("3", "A.DCM")])
    p = plan(cat)
    assert len(p.problems) == 1
    assert "differ only in letter case" in p.problems[0]
    assert "scan 3 file a.dcm, scan 3 file A.DCM" in p.problems[0]
    assert len(p.files) == 2  # the plan shows both; the caller must not write it


def test_file_and_folder_collision():
    cat = catalog([Scan("3", "x", "T1")], [rfile("3", "a"), rfile("3", "a/b.dcm")])
    p = plan(cat)
    assert p.problems == (
        "sub-S01/ses-01/3-T1/a is planned as a file (scan 3 file a) and as a folder (scan 3 file a/b.dcm)",
    )


def test_problems_name_no_labels():
    cat = catalog([Scan("3", "x", "T1")], [rfile("3", "a.dcm"), rfile("3", "A.DCM")])
    p = plan(cat, PlanOptions(template="{subject_id}/{file}"))
    for problem in p.problems:
        assert SUBJECT_LABEL not in problem and SESSION_LABEL not in problem


# ---------------------------------------------------------------- metadata


def test_metadata():
    f = plan(STANDARD).files[1]
    assert f.metadata("17-M-0181") == {
        "xnat_project": "17-M-0181",
        "xnat_subject": "S01",
        "xnat_session": "01",
        "xnat_subject_id": "FMRIF_S00001",
        "xnat_session_id": "FMRIF_E00001",
        "xnat_scan_id": "3",
        "xnat_scan_type": "rsfMRI",
        "xnat_series_description": "rsfMRI (AP) 2.5mm",
        "xnat_resource": "DICOM",
        "xnat_resource_id": "103",
        "xnat_file": "IM-0001.dcm",
    }


def test_metadata_of_session_level_file_omits_empty_values():
    p = plan(STANDARD, PlanOptions(resources=("supplementary",)))
    md = p.files[0].metadata("17-M-0181")
    assert "xnat_scan_id" not in md and "xnat_scan_type" not in md
    assert "xnat_series_description" not in md
    assert md["xnat_resource"] == "supplementary"


def test_metadata_contains_no_label():
    for f in plan(STANDARD, PlanOptions(resources=("DICOM", "supplementary"))).files:
        values = f.metadata("17-M-0181").values()
        assert SUBJECT_LABEL not in values and SESSION_LABEL not in values
        assert all(SUBJECT_LABEL not in v and SESSION_LABEL not in v for v in values)
        assert SUBJECT_LABEL not in f.path and SESSION_LABEL not in f.path


def test_planned_file_is_frozen():
    f = plan(STANDARD).files[0]
    assert isinstance(f, PlannedFile)
    with pytest.raises(AttributeError):
        f.path = "x"  # type: ignore[misc]


# ---------------------------------------------------------------- names


def test_sanitize_label():
    assert sanitize_label("DOE^JANE") == "DOEJANE"
    assert sanitize_label("40000001") == "40000001"
    assert sanitize_label(" a-b_c.d ") == "abcd"
    with pytest.raises(PlanError) as info:
        sanitize_label("^-_")
    assert "^-_" not in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("rsfMRI (AP) 2.5mm", "rsfMRI_AP_2.5mm"),
        ("DTI/64dir", "DTI_64dir"),
        ("../../etc", "etc"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", "_"),
        (".", "_"),
        ("", "_"),
        ("???", "_"),
        ("-rf", "rf"),
        ("_x_", "x"),
        ("a__b", "a_b"),
        ("a+b.c-d", "a+b.c-d"),
        ("file.", "file"),
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("lpt1", "lpt1_"),
        ("CONSOLE", "CONSOLE"),
        ("na\u00efve", "na_ve"),
    ],
)
def test_sanitize_component(text, expected):
    assert sanitize_component(text) == expected


def test_sanitize_component_caps_length_keeping_extension():
    long = "x" * 200 + ".nii.gz"
    value = sanitize_component(long)
    assert len(value) == 120 and value.endswith(".nii.gz")
    assert len(sanitize_component("y" * 300)) == 120


def sessions(*pairs):
    return [session(id=i, date=d) for i, d in pairs]


def test_name_sessions_in_acquisition_order():
    s = sessions(("FMRIF_E3", "2024-03-01"), ("FMRIF_E1", "2024-01-01"),
                 ("FMRIF_E2", "2024-01-01"), ("FMRIF_E0", ""))
    assert name_sessions(s, {}) == {
        "FMRIF_E1": "01", "FMRIF_E2": "02", "FMRIF_E3": "03", "FMRIF_E0": "04",
    }


def test_name_sessions_keeps_assigned_names_when_an_earlier_session_appears():
    first = name_sessions(sessions(("FMRIF_E5", "2024-05-01"), ("FMRIF_E6", "2024-06-01")), {})
    assert first == {"FMRIF_E5": "01", "FMRIF_E6": "02"}
    later = sessions(("FMRIF_E5", "2024-05-01"), ("FMRIF_E6", "2024-06-01"),
                     ("FMRIF_E9", "2024-07-01"), ("FMRIF_E4", "2023-12-01"))
    assert name_sessions(later, first) == {
        "FMRIF_E5": "01", "FMRIF_E6": "02", "FMRIF_E4": "03", "FMRIF_E9": "04",
    }


def test_name_sessions_continues_after_highest_assigned_even_if_absent():
    assigned = {"FMRIF_E1": "01", "FMRIF_E7": "07", "FMRIF_EX": "pilot"}
    result = name_sessions(sessions(("FMRIF_E1", "2024"), ("FMRIF_E8", "2025")), assigned)
    assert result == {"FMRIF_E1": "01", "FMRIF_E8": "08"}


def test_name_sessions_grows_past_99():
    s = sessions(*[(f"FMRIF_E{i:03d}", "2024-01-01") for i in range(101)])
    names = name_sessions(s, {})
    assert names["FMRIF_E000"] == "01"
    assert names["FMRIF_E098"] == "99"
    assert names["FMRIF_E099"] == "100"
    assert names["FMRIF_E100"] == "101"
    assert len(set(names.values())) == 101


def test_name_sessions_rejects_duplicate_assigned_names():
    with pytest.raises(PlanError):
        name_sessions([], {"FMRIF_E1": "01", "FMRIF_E2": "01"})


def test_name_sessions_skips_taken_names():
    # "3" and "03" are different names; a new session never reuses "04" if taken
    result = name_sessions(sessions(("FMRIF_E9", "2024")), {"FMRIF_E1": "03", "FMRIF_E2": "x04"})
    assert result == {"FMRIF_E9": "04"}


# ---------------------------------------------------------------- session folder


@pytest.mark.parametrize("template, folder", [
    (DEFAULT_TEMPLATE, "sub-S01/ses-01"),
    ("{project}/sub-{subject}/{session_id}/{scan}/{file}", "17-M-0181/sub-S01/FMRIF_E00001"),
    ("sub-{subject}/{scan}-{session}/{file}", "sub-S01"),
    ("{subject}_{session}_{file}", ""),
])
def test_session_folder_is_the_template_up_to_the_first_scan_field(template, folder):
    # also when the filters leave none of the session's files
    p = plan(STANDARD, PlanOptions(template=template, include_series="nothing-matches"))
    assert p.files == ()
    assert p.folder == folder
