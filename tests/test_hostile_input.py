"""Hostile and broken input: subject lists, and server answers that lie.

A subject list is refused with a message that names the line, through the
command line, before any request to XNAT and without touching the dataset
(the corpus is in tests/data/hostile/, see its README). A server answer that
is not what it claims -- malformed JSON, missing fields, file names and
series descriptions with path traversal, URIs and redirects to another host
-- is never followed off the configured server and never written outside
the dataset.
"""

from __future__ import annotations

import codecs
import contextlib
import http.server
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import PROJECT, git, keyring_sandbox, manifests, subjects_csv

from datalad_fmrif.sandbox import Fault, Sandbox, StudySpec

HOSTILE = Path(__file__).parent / "data" / "hostile"
DATALAD = str(Path(sys.executable).parent / "datalad")

# file -> (what the message says, the line it names or None)
CORPUS = {
    "empty.csv": ("the subject list is empty", None),
    "blank_lines.csv": ("the subject list is empty", None),
    "header_only.csv": ("a header without rows", None),
    "no_subject_column.csv": ("no Subject column", 1),
    "too_many_cells.csv": ("more cells (3) than the header has columns (2)", 2),
    "unbalanced_quote.csv": ("unbalanced quotes", 3),
    "unclosed_quote.csv": ("is never closed", 3),
    "text_after_quote.csv": ("unbalanced quotes", 2),
    "formula_cmd.csv": ("looks like a spreadsheet formula", 3),
    "formula_hyperlink.csv": ("looks like a spreadsheet formula", 2),
    "formula_plus.csv": ("looks like a spreadsheet formula", 2),
    "formula_at.csv": ("looks like a spreadsheet formula", 2),
    "formula_minus.csv": ("looks like a spreadsheet formula", 2),
    "formula_after_tab.csv": ("looks like a spreadsheet formula", 2),
    "label_traversal.csv": ("contains '/'", 2),
    "label_slash.csv": ("contains '/'", 2),
    "label_dotdot.csv": ("is not an XNAT label", 2),
    "label_backslash.csv": ("contains '\\\\'", 2),
    "label_long.csv": ("longer than 256 characters", 2),
    "label_ansi_escape.csv": ("control character", 2),
    "label_bidi_override.csv": ("control character", 2),
    "label_homoglyph.csv": ("contains U+0410", 2),
    "pseudonym_traversal.csv": ("pseudonyms become BIDS labels", 2),
    "pseudonym_absolute.csv": ("pseudonyms become BIDS labels", 2),
    "pseudonym_dot.csv": ("is not an XNAT label", 2),
    "pseudonym_duplicate.csv": ("same pseudonym as line 2", 3),
    "pseudonym_case_clash.csv": ("differs only in letter case", 3),
    "project_traversal.csv": ("XNAT project IDs use only", 2),
    "session_traversal.csv": ("contains '/'", 2),
    "mapping_traversal.csv": ("pseudonyms become BIDS labels", 2),
    "mapping_formula.csv": ("looks like a spreadsheet formula", 2),
}


def _generated() -> dict[str, tuple[bytes, str, int | None]]:
    """Lists too big or too binary to keep in the repository."""
    rng = random.Random(6)
    header = '"Subject","Pseudonym"\r\n'
    return {
        "binary.bin": (bytes(rng.randrange(256) for _ in range(4096)),
                       "does not look like a text file", None),
        "workbook.xlsx": (b"PK\x03\x04\x14\x00\x06\x00" + bytes(200),
                          "Excel workbook", None),
        "nul_in_label.csv": ((header + '"4000\x000001","P01"').encode(),
                             "NUL bytes", None),
        "utf16_no_bom.csv": ((header + '"40000001","P01"').encode("utf-16-le"),
                             "NUL bytes", None),
        "utf32.csv": (codecs.BOM_UTF32_LE + (header + '"40000001","P01"').encode("utf-32-le"),
                      "NUL characters", None),
        "latin1.csv": ((header + '"40000001","P01"\r\n"DO\xc9^JANE","P02"').encode("cp1252"),
                       "not UTF-8 or UTF-16", 3),
        "shift_jis.csv": ((header + '"40000001","P01"\r\n"\u5c71\u7530\u592a\u90ce","P02"')
                          .encode("shift_jis"), "UTF-8", 3),
        "huge.csv": (b"Subject\n" + b"40000001\n" * (51 * 1024 * 1024 // 9 + 1),
                     "too large", None),
        "many_rows.csv": (b"Subject\n" + b"".join(b"4%07d\n" % i for i in range(100_002)),
                          "more than 100000 rows", None),
        "one_long_line.csv": (b"Subject\n" + b"4" * (1 << 20), "longer than 256", 2),
        "runaway_quote.csv": ((header + '"40000001,P01\r\n' + "40000002\r\n" * 20_000)
                              .encode(), "never closed", 2),
    }


# The command line, many times: one process loads DataLad and the extension
# once, then forks a child per case that runs datalad's own CLI entry point
# (what the `datalad` script runs) with its output in a file. A real
# `datalad` process per case would cost seconds each.
_DRIVER = r"""
import json, os, sys
import datalad.cli.main as cli
from datalad.support.entrypoints import load_extensions
load_extensions()
import datalad_fmrif.commands.download  # noqa: F401
codes = []
for argv, out in json.load(open(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def run_cli_cases(workdir: Path, cases: list[list[str]]) -> list[tuple[int, str]]:
    """(exit code, output) of ``datalad ARGS`` for each list of ARGS."""
    driver = workdir / "driver.py"
    driver.write_text(_DRIVER)
    plan = [(["datalad", *args], str(workdir / f"out-{n}.txt"))
            for n, args in enumerate(cases)]
    (workdir / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run([sys.executable, str(driver), str(workdir / "plan.json")],
                          capture_output=True, text=True, timeout=600, check=True)
    codes = json.loads(proc.stdout.splitlines()[-1])
    return [(code, Path(out).read_text(errors="replace")) for code, (_, out) in zip(codes, plan)]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, size and modification time."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


sandbox = keyring_sandbox


# -- subject lists --------------------------------------------------------------------------


def test_corpus_is_documented():
    readme = (HOSTILE / "README.md").read_text()
    for name in sorted(CORPUS) + sorted(_generated()) + ["valid_list.txt"]:
        assert f"`{name}`" in readme, name
    on_disk = {p.name for p in HOSTILE.iterdir()} - {"README.md", ".gitattributes"}
    assert on_disk == set(CORPUS) | {"valid_list.txt"}


def test_hostile_subject_lists_are_refused(tmp_path, tmp_path_factory, sb, ds):
    """Through the command line: exit non-zero, a message naming the line, no
    request to XNAT, the dataset and everything around it untouched."""
    lists = tmp_path / "lists"
    lists.mkdir()
    expected = {}
    for name, (text, line) in CORPUS.items():
        expected[name] = (HOSTILE / name, text, line)
    for name, (data, text, line) in _generated().items():
        (lists / name).write_bytes(data)
        expected[name] = (lists / name, text, line)
    cases = []
    for name, (path, _, _) in expected.items():
        args = ["fmrif-download", "-d", ds.path, "--server", sb.url, "--project", PROJECT]
        if name.startswith("mapping_"):
            args += ["--pseudonyms", str(path), str(HOSTILE / "valid_list.txt")]
        else:
            args.append(str(path))
        cases.append(args)
    head = git(ds, "rev-parse", "HEAD")
    before = snapshot(tmp_path)
    sb.clear_requests()

    outcomes = run_cli_cases(tmp_path_factory.mktemp("cli"), cases)

    for (name, (_, text, line)), (code, output) in zip(expected.items(), outcomes):
        assert code == 1, (name, code, output)
        assert text in output, (name, output)
        if line is not None:
            assert f"line {line}:" in output, (name, output)
        assert "Traceback" not in output, (name, output)
    assert sb.requests == []
    assert snapshot(tmp_path) == before  # nothing written, in or around the dataset
    assert git(ds, "rev-parse", "HEAD") == head
    assert git(ds, "status", "--porcelain", "--ignored") == ""
    assert not Path("/tmp/pwned").exists()


def test_the_real_command_line_agrees(tmp_path, tmp_path_factory, sb, ds):
    """The forking driver above is the CLI: the same exit status and message
    from a `datalad` process of its own."""
    bad = tmp_path / "bad.bin"
    bad.write_bytes(_generated()["binary.bin"][0])
    for path in (HOSTILE / "formula_cmd.csv", bad):
        args = ["fmrif-download", "-d", ds.path, "--server", sb.url, "--project", PROJECT,
                str(path)]
        proc = subprocess.run([DATALAD, *args], capture_output=True, text=True, timeout=120)
        ((code, output),) = run_cli_cases(tmp_path_factory.mktemp("cli"), [args])
        assert proc.returncode == code == 1
        real = proc.stdout + proc.stderr
        assert real.strip() == output.strip()
    assert sb.requests == []


# -- a server that lies ----------------------------------------------------------------------


class _Evil(http.server.BaseHTTPRequestHandler):
    """Another host: records every request, answers 200 with something."""

    def _any(self):
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        body = b"<html>you should not be here</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def evil():
    """A second loopback HTTP server, on another address: 'another host'."""
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Evil)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address
    server.url = f"http://{host}:{port}"
    yield server
    server.shutdown()
    server.server_close()


def _rewrite_rows(change):
    """A body fault that edits the rows of a real listing."""
    def rewrite(body: bytes) -> bytes:
        doc = json.loads(body)
        doc["ResultSet"]["Result"] = change(doc["ResultSet"]["Result"])
        return json.dumps(doc).encode()
    return rewrite


def test_a_lying_server(tmp_path, secret_service, state_dir, evil):
    """One run against a server whose every session lies differently."""
    spec = StudySpec(seed=9, subjects=1, sessions_per_subject=(7, 7), scans_per_session=3,
                     files_per_scan=2, file_size=4096)
    with sandbox(spec) as sb:
        import datalad.api as dl

        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        subject = sb.study.subjects(PROJECT)[0]
        csv = subjects_csv(tmp_path, [(PROJECT, subject.label, "P01")])
        e = sb.study.sessions(subject.id)
        files = {s.id: [f for f in sb.study.files(s.id)
                        if f.scan_id and sb.study.scan(s.id, f.scan_id).type not in
                        ("REQUISITION", "SCREEN-SAVE", "SAVE")] for s in e}

        def at(s, rest):
            return f"^/data/experiments/{s.id}{rest}$"

        # 1: malformed JSON
        sb.add_fault(Fault("body", path=at(e[0], "/scans/ALL/files"),
                           body=b'{"ResultSet": {"Result": [{"Name": '))
        # 2: rows that point elsewhere or lack what they need, among good ones
        f2 = files[e[1].id][0]
        good_uri = (f"/data/experiments/{e[1].id}/scans/{f2.scan_id}/resources/"
                    f"{f2.resource_id}/files/")

        def lies(rows):
            template = dict(rows[0])
            extra = [
                dict(template, Name="evil.dcm", URI=f"{evil.url}{good_uri}evil.dcm"),
                dict(template, Name="evil2.dcm",
                     URI=f"//{evil.url.split('//')[1]}{good_uri}evil2.dcm"),
                dict(template, Name="other.dcm", URI=(
                    f"/data/experiments/{e[0].id}/scans/1/resources/1/files/other.dcm")),
                {k: v for k, v in template.items() if k != "URI"},
                dict(template, Name="neg.dcm", URI=good_uri + "neg.dcm", Size="-5"),
                dict(template, Name="lots.dcm", URI=good_uri + "lots.dcm", Size="lots"),
            ]
            return rows + extra
        sb.add_fault(Fault("body", path=at(e[1], "/scans/ALL/files"), body=_rewrite_rows(lies)))
        # 3: file names that leave their resource
        def escape(rows):
            rows[0]["URI"] = rows[0]["URI"].rsplit("/files/", 1)[0] + \
                "/files/../../../../../../../../tmp/pwned.dcm"
            rows[1]["URI"] = rows[1]["URI"].rsplit("/files/", 1)[0] + \
                "/files/..%2F..%2F..%2F..%2Ftmp%2Fpwned2.dcm"
            return rows
        sb.add_fault(Fault("body", path=at(e[2], "/scans/ALL/files"), body=_rewrite_rows(escape)))
        # 4: series descriptions and types that try the same
        sb.add_fault(Fault("body", path=at(e[3], "/scans"), body=_rewrite_rows(
            lambda rows: [dict(r, series_description="../../../../tmp/pwned",
                               type="..\\..\\evil") if r["ID"] == "2" else
                          dict(r, series_description="\u202e/.git/hooks") if r["ID"] == "1"
                          else r for r in rows])))
        # 5: a download answered with a redirect to another host
        f5 = files[e[4].id][0]
        sb.add_fault(Fault("status", path=f"/files/{f5.name}$", status=302, times=None,
                           headers={"Location": f"{evil.url}/steal/{f5.name}"}))
        # ... and so is the zip of its scan
        sb.add_fault(Fault("status", path=at(e[4], f"/scans/{f5.scan_id}/resources/[^/]+/files"),
                           status=302, times=None,
                           headers={"Location": f"{evil.url}/steal/scan.zip"}))
        # 6: a Name with traversal (the URI is what counts) and a garbage digest
        f6 = files[e[5].id][0]
        sb.add_fault(Fault("body", path=at(e[5], "/scans/ALL/files"), body=_rewrite_rows(
            lambda rows: [dict(r, Name="../../../etc/passwd", digest="<script>")
                          if r["Name"] == f6.name else r for r in rows])))
        # 7: an experiment whose ID tries to walk the server's paths
        sb.add_fault(Fault("body", path=f"/subjects/{subject.id}/experiments$",
                           body=_rewrite_rows(lambda rows: rows + [dict(
                               rows[-1], ID=f"{e[6].id}/../../../projects/{PROJECT}",
                               label="../../x", date="2099-01-01")])))
        outside = snapshot(tmp_path.parent)

        res = dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, jobs=2,
                                result_renderer="disabled", on_failure="ignore",
                                return_type="list")

        by_session = {}
        for r in res:
            by_session.setdefault(r.get("xnat_session_id"), []).append(r)
        msgs = {sid: " ".join(r["message"] for r in rs if r["status"] != "ok")
                for sid, rs in by_session.items()}
        assert "malformed JSON" in msgs[e[0].id]
        assert "leaves its resource" in msgs[e[2].id]
        assert "302" in msgs[e[4].id]
        docs = manifests(ds)
        # the lies were refused (not even tried), the truth was taken
        assert msgs[e[1].id] == ""
        assert {f["name"] for f in docs[e[1].id]["files"]} == {f.name for f in files[e[1].id]}
        tried = {r.path.rsplit("/", 1)[1] for r in sb.requests if "/files/" in r.path}
        assert not tried & {"evil.dcm", "evil2.dcm", "other.dcm", "neg.dcm", "lots.dcm"}
        assert e[0].id not in docs and e[2].id not in docs
        assert {f["name"] for f in docs[e[5].id]["files"]} == {f.name for f in files[e[5].id]}
        assert {p.split("/")[2] for p in (f["path"] for f in docs[e[3].id]["files"])} == {
            "1-git_hooks", "2-tmp_pwned"}  # series descriptions made harmless
        for doc in docs.values():
            for entry in doc["files"]:
                assert ".." not in entry["path"].split("/")
                assert not entry["path"].startswith((".git", "/"))
                assert (ds.pathobj / entry["path"]).resolve().is_relative_to(ds.pathobj)
        # nothing ever went to the other host, nothing was written outside
        assert evil.seen == []
        assert not Path("/tmp/pwned.dcm").exists() and not Path("/tmp/pwned2.dcm").exists()
        assert not (ds.pathobj / ".git" / "hooks" / f6.name).exists()
        after = snapshot(tmp_path.parent)
        changed = {p for p in set(outside) | set(after) if outside.get(p) != after.get(p)}
        ours = (f"{tmp_path.name}/study", f"{tmp_path.name}/state")
        assert all(p.startswith(ours) for p in changed), sorted(changed)[:20]
        assert git(ds, "status", "--porcelain") == ""


@pytest.mark.parametrize("where", [
    "^/$", "^/data/auth$", "^/data/JSESSION$", "^/xapi/siteConfig/buildInfo$",
    "^/data/services/auth$", "^/data/projects/[^/]+/subjects$",
])
def test_redirects_are_never_followed(secret_service, state_dir, evil, where):
    """Logging in (xnatpy's part included) and listing: a redirect to
    another host is an answer, not an instruction."""
    from datalad_fmrif.credentials import Credential, Rejections
    from datalad_fmrif.xnat.errors import XnatError
    from datalad_fmrif.xnat.session import XnatSession

    with Sandbox(StudySpec(seed=9, subjects=1)) as sb:
        sb.add_fault(Fault("status", path=where, status=302, times=None,
                           headers={"Location": f"{evil.url}/steal"}))
        cred = Credential("sandbox", sb.user, sb.password, "environment")
        with contextlib.suppress(XnatError), \
                XnatSession(sb.url, cred, rejections=Rejections()) as xnat:
            xnat.result_set(f"/data/projects/{PROJECT}/subjects")
            assert xnat.server == sb.url
        assert evil.seen == []


def test_hostile_labels_with_keep_labels(tmp_path, secret_service, state_dir):
    """With --keep-labels, XNAT's labels name folders: a label that leaves
    nothing to name gives an error for that subject, never a path."""
    import datalad.api as dl

    with sandbox(StudySpec(seed=9, subjects=3, sessions_per_subject=(2, 2),
                           scans_per_session=2, files_per_scan=1)) as sb:
        ds = dl.create(tmp_path / "study", result_renderer="disabled")
        first, second, third = sb.study.subjects(PROJECT)[:3]
        csv = subjects_csv(tmp_path, [(PROJECT, first.label), (PROJECT, second.label),
                                      (PROJECT, "___")], header=("Project", "Subject"))
        sb.add_fault(Fault("body", path=f"/subjects/{first.id}/experiments$",
                           body=_rewrite_rows(lambda rows: [dict(r, label="../..")
                                                            for r in rows])))
        sb.add_fault(Fault("body", path=f"/projects/{PROJECT}/subjects$",
                           body=_rewrite_rows(lambda rows: [
                               dict(r, label="___") if r["ID"] == third.id else r
                               for r in rows])))
        res = dl.fmrif_download(str(csv), dataset=ds.path, server=sb.url, keep_labels=True,
                                result_renderer="disabled", on_failure="ignore",
                                return_type="list")
        bad = [r for r in res if r["status"] in ("error", "impossible")]
        assert {r["message"][:len("subject on line 2")] for r in bad} == {
            "subject on line 2", "subject on line 4"}, res
        assert {r.get("xnat_session_id") for r in res if r["status"] == "ok"} == {
            s.id for s in sb.study.sessions(second.id)}
        assert git(ds, "status", "--porcelain") == ""
