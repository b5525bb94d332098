"""fmrif-list end to end: sandbox XNAT, real keyring, real DataLad, CLI."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import datalad.api as dl
import pytest

from datalad_fmrif.credentials import CredentialStore, default_credential_name
from datalad_fmrif.subjects import parse_subject_list

PROJECT = "17-M-0181"
FORBIDDEN = "01-M-0192"
#: what XnatSession costs around any listing (measured): the login request,
#: xnatpy's set-up requests, and the logout
# the login and its check (no xnatpy set-up: fmrif-list asks nothing of xnatpy)
LOGIN = [("PUT", "/data/services/auth"), ("GET", "/data/auth")]
LOGOUT = [("DELETE", "/data/JSESSION")]
# a line of XNAT's Processing Dashboard export: every field double-quoted
QUOTED_LINE = re.compile(r'"(?:[^"]|"")*"(?:,"(?:[^"]|"")*")*')
FIXTURES = Path(__file__).parent / "data" / "subjects"


@pytest.fixture(autouse=True)
def outside_any_dataset(tmp_path, monkeypatch):
    """No dataset configuration from the current directory."""
    monkeypatch.chdir(tmp_path)


def fmrif_list(sb, project=PROJECT, **kw):
    return dl.fmrif_list(project, server=sb.url, result_renderer="disabled",
                         on_failure="ignore", return_type="list", **kw)


def cli(*args, cwd=None):
    return subprocess.run(["datalad", *args], capture_output=True, cwd=cwd,
                          check=False)


def listings(sb):
    """(method, path) of the requests that are not login or logout."""
    return [(r.method, r.path) for r in sb.requests
            if (r.method, r.path) not in LOGIN + LOGOUT]


def expected_sessions(sb, since="", until="9999"):
    """Sessions of the main project as the sandbox holds them."""
    rows = []
    for s in sb.study.subjects(PROJECT):
        for e in sb.study.sessions(s.id):
            if not since <= e.date <= until:
                continue
            files = [f for f in sb.study.files(e.id) if f.scan_id is not None]
            rows.append({
                "project": PROJECT, "subject": s.label, "subject_id": s.id,
                "session": e.label, "session_id": e.id, "date": e.date,
                "scans": len({f.scan_id for f in files}), "files": len(files),
                "size": sum(f.size for f in files)})
    return sorted(rows, key=lambda r: (r["subject"], r["date"], r["session_id"]))


def rows_of(res, type):
    assert all(r["status"] == "ok" and r["action"] == "fmrif-list" for r in res), res
    assert [r["row"] for r in res] == list(range(1, len(res) + 1))
    assert {r["type"] for r in res} == {type}
    keys = ("project", "subject", "subject_id") if type == "subject" else (
        "project", "subject", "subject_id", "session", "session_id", "date",
        "scans", "files", "size")
    return [{k: r[k] for k in keys} for r in res]


def session_dates(sb):
    return sorted(e.date for s in sb.study.subjects(PROJECT)
                  for e in sb.study.sessions(s.id))


def assert_dashboard_format(data: bytes):
    """The form of XNAT's Processing Dashboard export."""
    assert not data.endswith((b"\n", b"\r"))  # no final line end
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    lines = data.decode("utf-8").split("\r\n")
    assert all(QUOTED_LINE.fullmatch(line) for line in lines), lines
    return lines


def test_dashboard_fixture_has_the_form_we_write():
    # the real export (one project view, cross-project view) passes the check
    for name in ("processing_data.csv", "processing_data_cross.csv"):
        assert_dashboard_format((FIXTURES / name).read_bytes())


# -- the two listings ----------------------------------------------------------------


def test_subjects_one_listing_request(sb):
    sb.clear_requests()
    res = fmrif_list(sb)
    want = sorted(({"project": PROJECT, "subject": s.label, "subject_id": s.id}
                   for s in sb.study.subjects(PROJECT)), key=lambda r: r["subject"])
    assert rows_of(res, "subject") == want
    assert listings(sb) == [("GET", f"/data/projects/{PROJECT}/subjects")]
    assert len(sb.requests) == len(LOGIN) + 1 + len(LOGOUT)


def test_sessions_n_plus_one_requests(sb):
    sb.clear_requests()
    res = fmrif_list(sb, sessions=True)
    want = expected_sessions(sb)
    assert rows_of(res, "session") == want
    assert all(r["files"] > 0 and r["scans"] > 0 for r in want)
    got = listings(sb)
    assert got[0] == ("GET", f"/data/projects/{PROJECT}/experiments")
    assert sorted(got[1:]) == sorted(
        ("GET", f"/data/experiments/{r['session_id']}/scans/ALL/files") for r in want)
    assert len(got) == len(want) + 1
    assert sb.requests[len(LOGIN)].query["columns"] == \
        "ID,label,date,xsiType,subject_ID,subject_label"


def test_date_filters_are_inclusive(sb):
    dates = session_dates(sb)
    since, until = dates[1], dates[-2]
    assert since < until
    want = expected_sessions(sb, since, until)
    assert 0 < len(want) < len(dates)

    sb.clear_requests()
    res = fmrif_list(sb, sessions=True, since=since, until=until)
    assert rows_of(res, "session") == want
    assert len(listings(sb)) == len(want) + 1  # only sessions in range

    # subject mode: subjects with a session in range, ONE request still
    sb.clear_requests()
    res = fmrif_list(sb, since=since, until=until)
    subjects = sorted({r["subject"] for r in want})
    assert [r["subject"] for r in rows_of(res, "subject")] == subjects
    assert len(subjects) < len(sb.study.subjects(PROJECT))
    assert listings(sb) == [("GET", f"/data/projects/{PROJECT}/experiments")]

    # open ends
    res = fmrif_list(sb, sessions=True, since=dates[-1])
    assert [r["date"] for r in res] == [dates[-1]]
    res = fmrif_list(sb, sessions=True, until=dates[0])
    assert [r["date"] for r in res] == [dates[0]]


def test_nothing_in_range_writes_nothing(sb, tmp_path):
    out = tmp_path / "none.csv"
    res = fmrif_list(sb, since="2099-01-01", output=str(out))
    assert [(r["status"], r["type"]) for r in res] == [("notneeded", "project")]
    assert "no subjects with a session acquired from 2099-01-01" in res[0]["message"]
    assert not out.exists()


def test_bad_dates_are_refused_before_any_request(sb):
    sb.clear_requests()
    for kw in ({"since": "01/02/2020"}, {"until": "2020-13-01"},
               {"since": "2021-01-02", "until": "2021-01-01"}):
        with pytest.raises(ValueError):
            fmrif_list(sb, **kw)
    with pytest.raises(ValueError):
        fmrif_list(sb, project="17-M-0181/../x")
    assert sb.requests == []


# -- the CSV ---------------------------------------------------------------------------


def test_output_round_trips_through_the_parser(sb, tmp_path):
    subjects, sessions = tmp_path / "subjects.csv", tmp_path / "sessions.csv"
    fmrif_list(sb, output=str(subjects))
    fmrif_list(sb, sessions=True, output=str(sessions))

    parsed = parse_subject_list(subjects.read_bytes())
    assert not parsed.notes
    assert sorted((r.project, r.label, r.pseudonym, r.sessions)
                  for r in parsed.requests) == sorted(
        (PROJECT, s.label, None, ()) for s in sb.study.subjects(PROJECT))

    # the Session column is a session filter: exactly the sessions listed
    parsed = parse_subject_list(sessions.read_bytes())
    assert not parsed.notes
    want = {}
    for r in expected_sessions(sb):
        want.setdefault(r["subject"], []).append(r["session"])
    assert {r.label: list(r.sessions) for r in parsed.requests} == want
    assert {r.project for r in parsed.requests} == {PROJECT}


def test_file_is_private_and_never_overwritten(sb, tmp_path):
    out = tmp_path / "sessions.csv"
    res = fmrif_list(sb, sessions=True, output=str(out))
    assert [(r["status"], r["type"], r["path"], r["rows"]) for r in res] == [
        ("ok", "file", str(out), len(expected_sessions(sb)))]
    assert f"wrote {res[0]['rows']} rows to {out}" in res[0]["message"]
    assert "identifiers of study participants" in res[0]["message"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = assert_dashboard_format(out.read_bytes())
    assert lines[0] == ('"Project","Subject","Session","Accession ID","Date",'
                        '"Scans","Files","Size"')
    r = expected_sessions(sb)[0]
    assert lines[1] == (f'"{PROJECT}","{r["subject"]}","{r["session"]}",'
                        f'"{r["session_id"]}","{r["date"]}","{r["scans"]}",'
                        f'"{r["files"]}","{r["size"]}"')

    before = out.read_bytes()
    sb.clear_requests()
    res = fmrif_list(sb, output=str(out))
    assert [r["status"] for r in res] == ["impossible"]
    assert "exists" in res[0]["message"] and "not overwritten" in res[0]["message"]
    assert out.read_bytes() == before
    assert sb.requests == []


def test_list_then_download(sb, tmp_path):
    # subject list as written, labels accepted explicitly
    subjects = tmp_path / "s.csv"
    assert fmrif_list(sb, output=str(subjects))[0]["status"] == "ok"
    ds = dl.create(tmp_path / "study", result_renderer="disabled")
    res = dl.fmrif_download(str(subjects), dataset=ds.path, server=sb.url,
                            keep_labels=True, result_renderer="disabled",
                            on_failure="ignore", return_type="list")
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    done = [r for r in res if r.get("type") == "session" and r["status"] == "ok"]
    assert len(done) == len(expected_sessions(sb))
    assert {p.name for p in ds.pathobj.glob("sub-*")} == {
        "sub-" + re.sub(r"[^A-Za-z0-9]", "", s.label) for s in sb.study.subjects(PROJECT)}
    def annex_find(*args):
        return subprocess.run(["git", "annex", "find", *args], cwd=ds.path,
                              capture_output=True, text=True, check=True).stdout
    assert annex_find("--include", "*") and not annex_find("--not", "--in", "here")

    # sessions in a date range, with a Pseudonym column added: only those
    dates = session_dates(sb)
    sessions = tmp_path / "sessions.csv"
    fmrif_list(sb, sessions=True, since=dates[1], until=dates[-2],
               output=str(sessions))
    lines = sessions.read_bytes().decode().split("\r\n")
    pseudonyms = {}
    for i, line in enumerate(lines[1:]):
        pseudonyms.setdefault(line.split(",")[1], f'"P{len(pseudonyms) + 1:02d}"')
    edited = tmp_path / "pseudonymised.csv"
    edited.write_bytes("\r\n".join(
        [lines[0] + ',"Pseudonym"']
        + [line + "," + pseudonyms[line.split(",")[1]] for line in lines[1:]]).encode())
    ds2 = dl.create(tmp_path / "study2", result_renderer="disabled")
    res = dl.fmrif_download(str(edited), dataset=ds2.path, server=sb.url,
                            no_content=True, result_renderer="disabled",
                            on_failure="ignore", return_type="list")
    assert not [r for r in res if r["status"] in ("error", "impossible")], res
    manifests = {p.stem for p in (ds2.pathobj / ".datalad" / "fmrif"
                                  / "sessions").glob("*.json")}
    assert manifests == {r["session_id"] for r in expected_sessions(
        sb, dates[1], dates[-2])}
    assert all(p.name.startswith("sub-P") for p in ds2.pathobj.glob("sub-*"))


# -- the command line ------------------------------------------------------------------


def test_cli_stdout_is_the_dashboard_csv(sb, tmp_path):
    proc = cli("fmrif-list", "--server", sb.url, PROJECT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    labels = sorted(s.label for s in sb.study.subjects(PROJECT))
    assert proc.stdout == "\r\n".join(
        ['"Project","Subject"'] + [f'"{PROJECT}","{label}"' for label in labels]
    ).encode()
    assert_dashboard_format(proc.stdout)
    assert parse_subject_list(proc.stdout).requests

    proc = cli("fmrif-list", "--server", sb.url, "--sessions", PROJECT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = assert_dashboard_format(proc.stdout)
    assert len(lines) == len(expected_sessions(sb)) + 1

    # -o: the file gets the CSV, standard output none of it
    out = tmp_path / "out.csv"
    proc = cli("fmrif-list", "--server", sb.url, "-o", str(out), PROJECT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == b"\r\n".join(
        [b'"Project","Subject"']
        + [f'"{PROJECT}","{label}"'.encode() for label in labels])
    assert not any(label.encode() in proc.stdout + proc.stderr for label in labels)
    assert b"identifiers of study participants" in proc.stdout + proc.stderr


def test_cli_json_records(sb, tmp_path):
    proc = cli("-f", "json", "fmrif-list", "--server", sb.url, "--sessions",
               PROJECT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert rows_of(records, "session") == expected_sessions(sb)

    proc = cli("-f", "json", "fmrif-list", "--server", sb.url, PROJECT, cwd=tmp_path)
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["subject"] for r in rows_of(records, "subject")] == sorted(
        s.label for s in sb.study.subjects(PROJECT))


# -- errors ------------------------------------------------------------------------------


def assert_clean_failure(res, status, *words):
    assert [(r["status"], r["type"]) for r in res] == [(status, "project")], res
    message = res[0]["message"]
    for word in words:
        assert word in message, message
    return message


def test_unknown_and_forbidden_project(sb, tmp_path):
    labels = [s.label for p in sb.study.projects for s in sb.study.subjects(p)]
    res = fmrif_list(sb, project="99-M-9999")
    msg = assert_clean_failure(res, "impossible", "99-M-9999", sb.url, "404")
    res = fmrif_list(sb, project=FORBIDDEN, sessions=True)
    msg += assert_clean_failure(res, "impossible", FORBIDDEN, sb.url, "403")
    assert not any(label in msg for label in labels)

    proc = cli("fmrif-list", "--server", sb.url, FORBIDDEN, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stdout == b""  # standard output is for CSV only
    assert FORBIDDEN.encode() in proc.stderr and b"403" in proc.stderr


def test_rejected_credential(sb):
    name = default_credential_name(sb.url)
    CredentialStore().set(name, sb.user, "not-the-password", realm=sb.url)
    res = fmrif_list(sb)
    assert_clean_failure(res, "error", PROJECT, sb.url, "rejected", "fmrif-login")
    assert sb.failed_logins(sb.user) == 1
    # remembered: not sent again
    res = fmrif_list(sb)
    assert_clean_failure(res, "error", "not tried again")
    assert sb.failed_logins(sb.user) == 1


def test_no_stored_credential(sb, tmp_path):
    CredentialStore().remove(default_credential_name(sb.url))
    sb.clear_requests()
    res = fmrif_list(sb)
    assert_clean_failure(res, "impossible", PROJECT, sb.url, "no credential",
                         "fmrif-login")
    assert sb.requests == []
    proc = cli("fmrif-list", "--server", sb.url, PROJECT, cwd=tmp_path)
    assert proc.returncode != 0 and proc.stdout == b""
    assert b"no credential" in proc.stderr


def test_cli_on_a_terminal_ends_every_line(sb, tmp_path):
    """To a terminal: LF line ends and a final one, so the prompt starts on
    a line of its own (to a file or pipe it stays the export format)."""
    import os
    import pty
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)  # the bytes as written: no newline translation
    proc = subprocess.Popen(["datalad", "fmrif-list", "--server", sb.url, PROJECT],
                            stdout=slave, stderr=subprocess.PIPE, cwd=tmp_path)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait() == 0, proc.stderr.read()
    labels = sorted(s.label for s in sb.study.subjects(PROJECT))
    assert shown == "".join(
        line + "\n" for line in ['"Project","Subject"']
        + [f'"{PROJECT}","{label}"' for label in labels]).encode()
