"""Tests for datalad_fmrif.annex against a real git-annex and DataLad.

Content is served by git-annex's own web remote from file:// URLs, so get()
really downloads and git-annex really verifies against the MD5E keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import datalad.api as dl

from datalad_fmrif.annex import Annex, AnnexError

pytestmark = pytest.mark.skipif(
    shutil.which("git-annex") is None, reason="git-annex not on PATH")


def git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def md5e_key(data: bytes, ext: str = ".dcm") -> str:
    return f"MD5E-s{len(data)}--{hashlib.md5(data).hexdigest()}{ext}"


@pytest.fixture
def ds(tmp_path) -> Path:
    path = tmp_path / "ds"
    dl.create(path, result_renderer="disabled")
    git(path, "config", "annex.security.allowed-url-schemes", "http https file")
    return path


@pytest.fixture
def server(tmp_path) -> Path:
    """A directory standing in for XNAT: files reachable by file:// URL."""
    path = tmp_path / "server"
    path.mkdir()
    return path


def make_files(server: Path, names: list[str], size: int = 1000):
    """Write content for each dataset path; return [(key, url, path, data)]."""
    out = []
    for i, name in enumerate(names):
        data = os.urandom(size) + str(i).encode()
        src = server / f"file{i:05d}.dcm"
        src.write_bytes(data)
        out.append((md5e_key(data), src.as_uri(), name, data))
    return out


def register(annex: Annex, files, metadata=None):
    reg = annex.registerurl((k, u) for k, u, _, _ in files)
    fk = annex.fromkey((k, p) for k, _, p, _ in files)
    md = annex.set_metadata(metadata) if metadata is not None else []
    return reg, fk, md


def assert_all_ok(results):
    failed = [r for r in results if not r["success"]]
    assert not failed, failed


@pytest.fixture
def annex_log(tmp_path, monkeypatch) -> Path:
    """Put a git-annex shim first on PATH that logs each invocation.

    Every start of a git-annex process by name goes through the shim, which
    appends its argv to the log and the process environment to env.log, then
    execs the real git-annex.
    """
    real = shutil.which("git-annex")
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    log = tmp_path / "annex.log"
    shim = shim_dir / "git-annex"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        f'env -0 > "{tmp_path}/env.log"\n'
        f'exec "{real}" "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def logged(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# --------------------------------------------------------------------------


def test_register_whereis_metadata_find_save(ds, server):
    names = [f"sub-01/ses-1/scan-{i % 4}/f{i:03d}.dcm" for i in range(200)]
    files = make_files(server, names)
    types = {p: ("T1w" if i % 4 == 0 else "bold")
             for i, (_, _, p, _) in enumerate(files)}
    annex = Annex(ds)
    reg, fk, md = register(annex, files, [
        (p, {"xnat_scan_type": types[p], "xnat_scan_id": str(i % 4)})
        for i, (_, _, p, _) in enumerate(files)])
    for results in (reg, fk, md):
        assert len(results) == 200
        assert_all_ok(results)
    # results come back in input order and identify their item
    assert [r["key"] for r in reg] == [k for k, _, _, _ in files]
    assert [r["url"] for r in reg] == [u for _, u, _, _ in files]
    assert [r["file"] for r in fk] == names
    assert [r["file"] for r in md] == names
    assert md[0]["fields"]["xnat_scan_type"] == ["T1w"]

    # URL is recorded for the web remote
    key, url, path, _ = files[7]
    where = annex.whereis(path)
    assert where["key"] == key
    assert any(url in loc.get("urls", []) for loc in where["whereis"])
    assert url in git(ds, "annex", "whereis", path)

    # metadata search finds exactly the T1w files (content not present)
    found = git(ds, "annex", "find", "--metadata",
                "xnat_scan_type=T1w").splitlines()
    assert sorted(found) == sorted(p for p, t in types.items() if t == "T1w")

    # fromkey stages the new symlinks in the index ...
    staged = git(ds, "diff", "--cached", "--name-only", "-z").split("\0")
    assert set(names) <= set(staged)
    # ... and datalad save commits them
    dl.save(dataset=ds, message="register", result_renderer="disabled")
    tracked = git(ds, "ls-files", "-z").split("\0")
    assert set(names) <= set(tracked)
    assert git(ds, "status", "--porcelain") == ""
    # nothing was downloaded
    assert annex.find_present(names) == set()


def test_get_progress_and_verification(ds, server):
    names = [f"scan/f{i:02d}.dcm" for i in range(12)]
    files = make_files(server, names, size=300_000)
    # the server's file for the last one differs from what its key says
    bad_key, bad_url, bad_path, _ = files[-1]
    Path(bad_url[len("file://"):]).write_bytes(os.urandom(300_000))
    annex = Annex(ds)
    for results in register(annex, files):
        assert_all_ok(results)

    progress = []
    results = list(annex.get(names, jobs=2, progress=progress.append))
    assert sorted(r["file"] for r in results) == sorted(names)
    by_file = {r["file"]: r for r in results}
    bad = by_file.pop(bad_path)
    assert bad["success"] is False
    assert any("Verification" in m for m in bad["error-messages"]), bad
    assert all(r["success"] for r in by_file.values()), by_file
    for _, _, path, data in files[:-1]:
        assert (ds / path).read_bytes() == data
    assert not (ds / bad_path).exists()  # dangling symlink: no content
    assert annex.find_present(names) == set(names[:-1])

    assert progress, "no progress records"
    rec = progress[0]
    assert {"byte-progress", "total-size", "action"} <= set(rec)
    assert rec["action"]["command"] == "get"
    assert rec["action"]["file"] in names
    assert {r["action"]["file"] for r in progress} >= set(names[:-1])

    # second get: content present -> success without transfer; a path that
    # is not an annexed file -> per-item failure
    again = list(annex.get(names[:2] + [".datalad/config", "nonexistent"],
                           jobs=2))
    by_file = {r["file"]: r for r in again}
    assert by_file[names[0]]["success"] is True
    assert by_file[names[0]]["note"] == "already present"
    assert by_file[".datalad/config"]["success"] is False
    assert by_file["nonexistent"]["success"] is False


def test_special_paths(ds, server):
    names = [
        "sub 01/ses 1/T1 (MPRAGE)^2.dcm",
        "a^b/c(d)e.dcm",
        "ünï cödé/x.dcm",
        " leading and trailing .dcm ",
        "quote'\"back\\slash.dcm",
    ]
    files = make_files(server, names)
    annex = Annex(ds)
    reg, fk, md = register(annex, files, [(p, {"name": p}) for p in names])
    for results in (reg, fk, md):
        assert_all_ok(results)
    assert [r["file"] for r in fk] == names
    results = list(annex.get(names, jobs=2))
    assert all(r["success"] for r in results), results
    for _, _, path, data in files:
        assert (ds / path).read_bytes() == data
    dl.save(dataset=ds, result_renderer="disabled")
    assert set(names) <= set(git(ds, "ls-files", "-z").split("\0"))


@pytest.mark.parametrize("bad", ["new\nline.dcm", "nul\0.dcm", "cr\r.dcm"])
def test_unsafe_path_rejected_before_anything_is_written(ds, server, bad,
                                                         annex_log):
    files = make_files(server, ["ok1.dcm", bad, "ok2.dcm"])
    annex = Annex(ds)
    with pytest.raises(AnnexError, match="newline or NUL") as e:
        annex.fromkey((k, p) for k, _, p, _ in files)
    assert repr(bad) in str(e.value)
    with pytest.raises(AnnexError, match="newline or NUL"):
        annex.set_metadata([("ok1.dcm", {"a": "b"}), (bad, {"a": "b"})])
    with pytest.raises(AnnexError, match="newline or NUL"):
        annex.get(["ok1.dcm", bad])
    with pytest.raises(AnnexError, match="newline or NUL"):
        annex.addurls_unknown([(files[0][1], bad)])
    with pytest.raises(AnnexError, match="newline or NUL"):
        annex.registerurl([(files[0][0], files[0][1] + "\n")])
    assert logged(annex_log) == []  # no git-annex process was started
    assert git(ds, "status", "--porcelain") == ""
    assert not (ds / "ok1.dcm").exists()


def test_url_with_whitespace_rejected(ds):
    with pytest.raises(AnnexError, match="whitespace"):
        Annex(ds).registerurl([("MD5E-s1--0cc175b9c0f1b6a831c399e269772661",
                                "http://example.com/a b")])


def test_bad_items_fail_alone(ds, server):
    files = make_files(server, ["a.dcm", "b.dcm", "c.dcm"])
    annex = Annex(ds)
    # a malformed key would kill git-annex's batch parser; it fails alone
    pairs = [(files[0][0], files[0][1]), ("MD5E-sX--nonsense", files[1][1]),
             (files[2][0], files[2][1])]
    reg = annex.registerurl(pairs)
    assert [r["success"] for r in reg] == [True, False, True]
    assert "not a valid git-annex key" in reg[1]["error-messages"][0]
    assert reg[1]["key"] == "MD5E-sX--nonsense"

    fk = annex.fromkey([(files[0][0], "a.dcm"), ("garbage", "b.dcm"),
                        (files[2][0], "c.dcm"),
                        # exists with other content: git-annex's own failure
                        (files[2][0], "a.dcm"),
                        # outside the repository
                        (files[2][0], "../outside.dcm"),
                        # same key and path again: idempotent
                        (files[0][0], "a.dcm")])
    assert [r["success"] for r in fk] == [True, False, True, False, False, True]
    assert fk[3]["error-messages"] and fk[3]["file"] == "a.dcm"
    assert fk[4]["error-messages"]

    md = annex.set_metadata([
        ("a.dcm", {"scan": "1"}),
        ("b.dcm", {"scan": "2"}),         # not an annexed file
        ("c.dcm", {"bad field": "x"}),    # would kill the batch parser
        ("c.dcm", {"scan": ["3", "4"], "series.desc": "T1 MPRAGE"}),
    ])
    assert [r["success"] for r in md] == [True, False, False, True]
    assert md[1]["file"] == "b.dcm"
    assert "field name" in md[2]["error-messages"][0]
    assert sorted(md[3]["fields"]["scan"]) == ["3", "4"]
    assert md[3]["fields"]["series.desc"] == ["T1 MPRAGE"]


def test_crashed_process_raises_with_stderr(tmp_path):
    notrepo = tmp_path / "plain"
    notrepo.mkdir()
    with pytest.raises(AnnexError) as e:
        Annex(notrepo).registerurl(
            [("MD5E-s1--0cc175b9c0f1b6a831c399e269772661", "http://x/a")])
    msg = str(e.value)
    assert "git-annex registerurl --batch" in msg
    assert "git repository" in msg.lower()  # git-annex's own words


def test_addurls_unknown(ds, server):
    (server / "u1.nii").write_bytes(b"some content\n")
    annex = Annex(ds)
    results = annex.addurls_unknown([
        ((server / "u1.nii").as_uri(), "derived/u 1.nii"),
        ((server / "missing.nii").as_uri(), "derived/missing.nii"),
    ])
    assert [r["success"] for r in results] == [True, False]
    assert results[0]["key"] == md5e_key(b"some content\n", ".nii")
    assert results[1]["error-messages"]
    assert results[1]["url"].endswith("missing.nii")
    assert (ds / "derived/u 1.nii").read_bytes() == b"some content\n"
    assert (server / "u1.nii").as_uri() in git(ds, "annex", "whereis",
                                                "derived/u 1.nii")


def test_abandoned_get_stops_process(ds, server):
    names = [f"f{i}.dcm" for i in range(6)]
    files = make_files(server, names, size=100_000)
    annex = Annex(ds)
    register(annex, files)
    it = annex.get(names, jobs=1)
    first = next(it)
    assert first["success"]
    it.close()  # terminates git-annex; must not hang or raise


def test_bounded_processes_and_clean_environment(ds, server, annex_log):
    n = 500
    names = [f"sub-{i // 100:02d}/scan {i % 7}/IM^{i:04d}.dcm" for i in range(n)]
    files = make_files(server, names, size=200)
    annex = Annex(ds)
    t0 = time.monotonic()
    reg, fk, md = register(annex, files, [
        (p, {"xnat_scan_type": "T1w", "xnat_file": Path(p).name})
        for p in names])
    t_register = time.monotonic() - t0
    for results in (reg, fk, md):
        assert len(results) == n
        assert_all_ok(results)
    t0 = time.monotonic()
    got = list(annex.get(names, jobs=4))
    t_get = time.monotonic() - t0
    assert len(got) == n and all(r["success"] for r in got)

    calls = logged(annex_log)
    commands = [c.split()[0] for c in calls]
    # one process per operation, whatever the number of files; git itself
    # starts git-annex's long-running filter process when fromkey stages
    # the files, once, not once per file
    assert [c for c in commands if c != "filter-process"] == [
        "registerurl", "fromkey", "metadata", "get"], calls
    assert commands.count("filter-process") <= 2, calls
    print(f"\n{n} files: registerurl+fromkey+metadata {t_register:.2f}s, "
          f"get -J4 {t_get:.2f}s, git-annex processes started: {len(calls)}")

    # the child environment is ours, unchanged: nothing added. Compare with
    # what any plain child of this process gets (the C-level environment can
    # differ from os.environ, e.g. COLUMNS/LINES set by a library).
    def parse(text):
        return dict(kv.split("=", 1) for kv in text.split("\0") if "=" in kv)

    child_env = parse((annex_log.parent / "env.log").read_text())
    plain_env = parse(subprocess.run(["sh", "-c", "env -0"], capture_output=True,
                                     text=True, check=True).stdout)
    ignore = {"PWD", "OLDPWD", "SHLVL", "_"}
    assert set(child_env) - ignore == set(plain_env) - ignore
    assert {k: v for k, v in child_env.items() if k not in ignore} == \
        {k: v for k, v in plain_env.items() if k not in ignore}


def test_lookupkey_reports_keys_and_non_annexed(tmp_path):
    import datalad.api as dl

    ds = dl.create(tmp_path / "ds", result_renderer="disabled")
    (ds.pathobj / "big.dat").write_bytes(b"x" * 100)
    (ds.pathobj / "plain.txt").write_text("in git")
    ds.save(to_git=False, path="big.dat", result_renderer="disabled")
    ds.save(to_git=True, path="plain.txt", result_renderer="disabled")
    from datalad_fmrif.annex import Annex

    keys = Annex(ds.path).lookupkey(["big.dat", "plain.txt", "missing"])
    assert keys[0] and keys[0].startswith("MD5E-s100--")
    assert keys[1:] == [None, None]


def test_link_makes_what_fromkey_makes(ds, server):
    names = [f"sub-01/scan-{i % 3}/f{i:02d}.dcm" for i in range(30)]
    files = make_files(server, names)
    annex = Annex(ds)
    # fromkey and link side by side, for the same keys at other paths
    by_fromkey = annex.fromkey((k, "fk/" + p) for k, _, p, _ in files)
    by_link = annex.link((k, p) for k, _, p, _ in files)
    assert_all_ok(by_fromkey + by_link)
    assert [r["file"] for r in by_link] == names
    for (key, _, path, _), r in zip(files, by_link):
        assert r["key"] == key
        # the same link git-annex makes, relative to its own directory
        assert os.readlink(ds / path) == os.readlink(ds / "fk" / path).replace("../", "", 1)
    assert annex.lookupkey(names) == [k for k, _, _, _ in files]
    staged = git(ds, "diff", "--cached", "--name-only", "-z").split("\0")
    assert set(names) <= set(staged)
    # the same link again succeeds; another file in the way is a failed item
    (ds / "other.dcm").write_text("mine")
    again = annex.link([(files[0][0], names[0]), (files[1][0], "other.dcm"),
                        ("not a key", "x.dcm")])
    assert [r["success"] for r in again] == [True, False, False]
    assert (ds / "other.dcm").read_text() == "mine"
    # content fetched later lands behind the link and verifies
    annex.registerurl((k, u) for k, u, _, _ in files)
    assert_all_ok(annex.get(names[:3]))
    assert (ds / names[0]).read_bytes() == files[0][3]
    dl.save(dataset=ds, path=[str(ds / n) for n in names], message="link",
            result_renderer="disabled")
    fsck = subprocess.run(["git", "annex", "fsck", "--fast", *names[:3]], cwd=ds,
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_link_is_fromkey_where_files_are_no_plain_links(ds, server, annex_log):
    git(ds, "config", "annex.crippledfilesystem", "true")
    files = make_files(server, ["a.dcm"])
    assert_all_ok(Annex(ds).link((k, p) for k, _, p, _ in files))
    assert any(" fromkey " in f" {line} " for line in logged(annex_log))


# -- records written to the git-annex branch directly ------------------------------------

# values git-annex and annexlog write alike (a tab git-annex leaves as it is,
# annexlog writes it in base64: both read back the same)
TRICKY = ["3 Plane Loc", "!bang", "ü-umlaut", "+plus", "line\nbreak", "a=b", "-1"]


def branch_logs(repo) -> dict[str, list[str]]:
    """Every per-key log file on the git-annex branch: lines without timestamps."""
    out = {}
    for path in git(repo, "ls-tree", "-r", "--name-only", "git-annex").splitlines():
        if ".log" in path and path.count("/") == 2:
            lines = git(repo, "cat-file", "-p", f"git-annex:{path}").splitlines()
            out[path] = sorted(line.split(" ", 1)[1] for line in lines)
    return out


def test_records_are_what_git_annex_writes(tmp_path, server):
    """The same records, once by git-annex's own commands, once by write_logs:
    the same log files, line for line (but for the time)."""
    files = make_files(server, ["a.dcm", "b.dcm"])
    other = "0c1b2a39-0000-4000-8000-0123456789ab"
    fields = {"xnat_series_description": TRICKY, "xnat_scan_id": "3"}
    by_git_annex, by_us = tmp_path / "a", tmp_path / "b"
    for repo in (by_git_annex, by_us):
        dl.create(repo, result_renderer="disabled")
    theirs = Annex(by_git_annex)
    assert_all_ok(theirs.registerurl((k, u) for k, u, _, _ in files))
    assert_all_ok(theirs.set_metadata([(k, fields) for k, _, _, _ in files], by_key=True))
    subprocess.run(["git-annex", "setpresentkey", "--batch"], cwd=by_git_annex, check=True,
                   input="".join(f"{k} {other} 1\n" for k, _, _, _ in files), text=True,
                   capture_output=True)
    git(by_git_annex, "annex", "merge")  # setpresentkey leaves its journal uncommitted

    from datalad_fmrif.annex import WEB_UUID
    from datalad_fmrif.annexlog import BranchLogs

    logs = BranchLogs()
    for key, url, _, _ in files:
        logs.add_present(key, WEB_UUID)
        logs.add_url(key, url, claimed=False)
        logs.add_present(key, other)
        logs.add_metadata(key, fields)
    Annex(by_us).write_logs(logs)
    expected = branch_logs(by_git_annex)
    assert len(expected) == 3 * len(files)
    assert branch_logs(by_us) == expected
    # and git-annex reads back every value as it was given
    logs = BranchLogs()
    logs.add_metadata(files[0][0], {"xnat_note": ["tab\there", "cr\rhere", " lead"]})
    Annex(by_us).write_logs(logs)
    meta = json.loads(git(by_us, "annex", "metadata", "--json", "--key", files[0][0]))
    assert sorted(meta["fields"]["xnat_series_description"]) == sorted(TRICKY)
    assert sorted(meta["fields"]["xnat_note"]) == sorted(["tab\there", "cr\rhere", " lead"])
    where = json.loads(git(by_us, "annex", "whereis", "--json", "--key", files[0][0]))
    assert {w["uuid"] for w in where["whereis"]} == {WEB_UUID, other}
    assert files[0][1] in [u for w in where["whereis"] for u in w.get("urls", [])]
    # the records came in one commit on top of the branch, and their ref is gone
    assert git(by_us, "for-each-ref", "refs/fmrif/") == ""
    assert "records of 1 annexed keys" in git(by_us, "log", "-1", "--format=%s", "git-annex")


def test_records_add_to_what_is_there(ds, server):
    (key, url, _, _), (_, url2, _, _) = make_files(server, ["a.dcm", "b.dcm"])
    annex = Annex(ds)
    assert_all_ok(annex.registerurl([(key, url)]))
    assert_all_ok(annex.set_metadata([(key, {"kept": "1"})], by_key=True))
    from datalad_fmrif.annexlog import BranchLogs

    logs = BranchLogs()
    logs.add_url(key, url2, claimed=False)
    logs.add_metadata(key, {"added": "2", "kept": "3"})
    annex.write_logs(logs)
    where = json.loads(git(ds, "annex", "whereis", "--json", "--key", key))
    assert sorted(u for w in where["whereis"] for u in w.get("urls", [])) == sorted([url, url2])
    meta = json.loads(git(ds, "annex", "metadata", "--json", "--key", key))["fields"]
    assert meta["added"] == ["2"] and sorted(meta["kept"]) == ["1", "3"]


def test_records_survive_what_git_annex_has_not_committed(ds, server):
    """A record git-annex holds in its journal (a killed git-annex, or
    annex.alwayscommit=false) and one of ours for the same key: both count."""
    (key, _, _, _), = make_files(server, ["a.dcm"])
    theirs, ours = "11111111-0000-4000-8000-000000000001", "22222222-0000-4000-8000-000000000002"
    git(ds, "-c", "annex.alwayscommit=false", "annex", "setpresentkey", key, theirs, "1")
    assert any((ds / ".git" / "annex" / "journal").iterdir())
    from datalad_fmrif.annexlog import BranchLogs

    logs = BranchLogs()
    logs.add_present(key, ours)
    Annex(ds).write_logs(logs)
    where = json.loads(git(ds, "annex", "whereis", "--json", "--key", key))
    assert {w["uuid"] for w in where["whereis"]} == {theirs, ours}


def test_a_ref_left_by_a_killed_run_is_merged_and_removed(ds, server):
    (key, _, _, _), (key2, _, _, _) = make_files(server, ["a.dcm", "b.dcm"])
    annex = Annex(ds)
    where = annex._examine([key])[key][0]
    lost = "33333333-0000-4000-8000-000000000003"
    line = f"1700000000s 1 {lost}\n".encode()
    subprocess.run(["git", "fast-import", "--quiet"], cwd=ds, check=True, input=(
        b"commit refs/fmrif/killed/git-annex\ncommitter x <x@example.invalid> 1700000000 +0000\n"
        b"data 4\nlost\nM 100644 inline " + f"{where}{key}.log".encode()
        + b"\ndata %d\n%s\n" % (len(line), line)))
    from datalad_fmrif.annexlog import BranchLogs

    logs = BranchLogs()
    logs.add_metadata(key2, {"a": "b"})
    annex.write_logs(logs)
    assert git(ds, "for-each-ref", "refs/fmrif/") == ""
    where = json.loads(git(ds, "annex", "whereis", "--json", "--key", key))
    assert [w["uuid"] for w in where["whereis"]] == [lost]


def test_register_writes_the_branch_in_one_commit(ds, server, annex_log):
    names = [f"sub-01/scan-{i % 3}/f{i:03d}.dcm" for i in range(150)]
    files = make_files(server, names)
    annex = Annex(ds)
    res = annex.register([(k, p, u, {"xnat_file": Path(p).name, "bad field": "x"})
                          for k, u, p, _ in files])
    assert [r["file"] for r in res] == names
    assert all(r["success"] and r["metadata-error-messages"] for r in res)
    calls = [c.split()[0] for c in logged(annex_log) if c.strip()]
    calls = [c for c in calls if c != "filter-process"]
    assert "registerurl" not in calls and "metadata" not in calls[:-1], calls
    # no loose object per file: the links' blobs and the records are packed
    # (git fast-import packs 100 objects or more)
    loose = int(git(ds, "count-objects").split()[0])
    assert loose < 20, loose
    assert_all_ok(annex.get(names[:5]))  # the URLs are there for git-annex
    assert (ds / names[0]).read_bytes() == files[0][3]


@pytest.mark.parametrize("setting", ["\tprivate = true", "\tprivate"])
def test_private_repository_records_through_git_annex(ds, server, annex_log, setting):
    # "private" alone, without a value, is true for git and git-annex alike
    with open(ds / ".git" / "config", "a") as config:
        config.write(f"[annex]\n{setting}\n")
    assert git(ds, "config", "--type=bool", "annex.private").strip() == "true"
    files = make_files(server, ["a.dcm"])
    annex = Annex(ds)
    res = annex.register([(k, p, u, {"xnat_file": "a.dcm"}) for k, u, p, _ in files])
    assert_all_ok(res)
    calls = [c.split()[0] for c in logged(annex_log) if c.strip()]
    assert "registerurl" in calls and "metadata" in calls, calls
    assert git(ds, "for-each-ref", "refs/fmrif/") == ""
    assert files[0][1] in git(ds, "annex", "whereis", "a.dcm")


# -- verified content into the annex -----------------------------------------------------


def verified(tmp_path, n=3, size=5000):
    src = tmp_path / "verified"
    src.mkdir()
    out = []
    for i in range(n):
        data = os.urandom(size)
        md5 = hashlib.md5(data).hexdigest()
        key = f"MD5E-s{size}--{md5}.dcm"
        (src / key).write_bytes(data)
        out.append((key, src / key, size, md5))
    return out


def test_ingest_moves_verified_content_in(ds, tmp_path, annex_log):
    files = verified(tmp_path)
    annex = Annex(ds)
    annex.link([(k, f"f{i}.dcm") for i, (k, _, _, _) in enumerate(files)])
    with annex.ingest(k for k, _, _, _ in files) as ingest:
        for key, path, size, md5 in files:
            ingest.add(key, path, size=size, md5=md5)
        # wrong promises are refused, and the file stays where it is
        ingest.add(files[0][0], tmp_path / "other", size=1, md5="0" * 32)
    assert ingest.results == {k: None for k, _, _, _ in files}
    assert not any(p.exists() for _, p, _, _ in files)
    assert not annex.unrecorded_keys().exists()
    assert (ds / "f1.dcm").read_bytes() == (ds / "f1.dcm").resolve().read_bytes()
    obj = (ds / "f1.dcm").resolve()
    assert not obj.stat().st_mode & 0o222 and not obj.parent.stat().st_mode & 0o222
    assert "reinject" not in " ".join(logged(annex_log))
    assert sorted(annex.find_present([f"f{i}.dcm" for i in range(3)])) == [
        "f0.dcm", "f1.dcm", "f2.dcm"]
    here = annex.uuid()
    where = json.loads(git(ds, "annex", "whereis", "--json", "--key", files[2][0]))
    assert [w["uuid"] for w in where["whereis"]] == [here]
    fsck = subprocess.run(["git", "annex", "fsck", "--json"], cwd=ds, capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_ingest_refuses_content_that_is_not_the_key(ds, tmp_path):
    (key, path, size, md5), = verified(tmp_path, n=1)
    with Annex(ds).ingest([key]) as ingest:
        ingest.add(key, path, size=size, md5="f" * 32)
    assert "is not the content of" in ingest.results[key]
    assert path.exists()


def test_ingest_through_reinject_where_the_annex_needs_git_annex(ds, tmp_path, annex_log):
    git(ds, "config", "core.sharedRepository", "group")
    files = verified(tmp_path, n=2)
    annex = Annex(ds)
    with annex.ingest(k for k, _, _, _ in files) as ingest:
        for key, path, size, md5 in files:
            ingest.add(key, path, size=size, md5=md5)
    assert ingest.results == {k: None for k, _, _, _ in files}
    assert any(c.startswith("reinject") for c in logged(annex_log))
    where = json.loads(git(ds, "annex", "whereis", "--json", "--key", files[0][0]))
    assert [w["uuid"] for w in where["whereis"]] == [annex.uuid()]


def test_content_moved_in_by_a_killed_run_is_recorded_later(ds, tmp_path):
    (key, path, size, md5), = verified(tmp_path, n=1)
    annex = Annex(ds)
    annex.link([(key, "a.dcm")])
    ingest = annex.ingest([key])
    ingest.add(key, path, size=size, md5=md5)  # killed before close()

    def holders():
        out = subprocess.run(["git", "annex", "whereis", "--json", "--key", key], cwd=ds,
                             capture_output=True, text=True).stdout
        return [w["uuid"] for w in json.loads(out)["whereis"]]

    assert annex.find_present(["a.dcm"]) == {"a.dcm"}
    assert holders() == []  # there, but not recorded
    assert annex.unrecorded_keys().read_text().split() == [key]
    Annex(ds).record_unrecorded()  # the next run
    assert holders() == [annex.uuid()]
    assert not annex.unrecorded_keys().exists()
    fsck = subprocess.run(["git", "annex", "fsck", "--json", "a.dcm"], cwd=ds,
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_find_present_agrees_with_git_annex_find(ds, server):
    """The file-system answer for annex symlinks, git-annex's for the rest."""
    files = make_files(server, ["here.dcm", "absent.dcm"])
    annex = Annex(ds)
    assert_all_ok(annex.register([(k, p, u, {}) for k, u, p, _ in files]))
    assert_all_ok(annex.get(["here.dcm"]))
    (ds / "unlocked.dat").write_bytes(b"unlocked content")
    git(ds, "annex", "add", "unlocked.dat")
    git(ds, "annex", "unlock", "unlocked.dat")
    (ds / "in-git.txt").write_text("plain")
    git(ds, "add", "in-git.txt")
    (ds / "mine").write_text("a file of the user's")
    os.symlink("mine", ds / "my-link.dcm")
    paths = ["here.dcm", "absent.dcm", "unlocked.dat", "in-git.txt", "my-link.dcm",
             "missing.dcm"]
    by_git_annex = set(subprocess.run(["git", "annex", "find", "--", *paths[:-1]], cwd=ds,
                                      capture_output=True, text=True).stdout.split())
    assert annex.find_present(paths) == by_git_annex == {"here.dcm", "unlocked.dat"}


def test_commit_takes_exactly_the_given_paths(ds, server):
    files = make_files(server, ["a.dcm", "b.dcm"])
    annex = Annex(ds)
    assert_all_ok(annex.link((k, p) for k, _, p, _ in files))
    record = ds / ".datalad" / "fmrif" / "record.json"
    record.parent.mkdir(parents=True)
    (record.parent / ".gitattributes").write_text("* annex.largefiles=nothing\n")
    record.write_text('{"big": "' + "x" * 5000 + '"}\n')
    (ds / "theirs.txt").write_text("staged by the user")
    git(ds, "add", "theirs.txt")
    head = git(ds, "rev-parse", "HEAD").strip()
    annex.commit(["a.dcm", ".datalad/fmrif/record.json", ".datalad/fmrif/.gitattributes"],
                 "first line\n\n{\"json\": 1}\n")
    assert git(ds, "log", "-1", "--format=%B").strip() == 'first line\n\n{"json": 1}'
    assert sorted(git(ds, "diff", "--name-only", head, "HEAD").split()) == [
        ".datalad/fmrif/.gitattributes", ".datalad/fmrif/record.json", "a.dcm"]
    # the record went to git (its attributes say so), the user's file stays staged
    assert git(ds, "show", "HEAD:.datalad/fmrif/record.json").startswith('{"big"')
    assert sorted(git(ds, "diff", "--cached", "--name-only").split()) == ["b.dcm", "theirs.txt"]
    # nothing new: no commit, no error
    annex.commit(["a.dcm"], "nothing")
    assert git(ds, "log", "-1", "--format=%s") == "first line\n"
    # nothing else staged: the whole index is committed, which is just that
    git(ds, "reset", "-q", "theirs.txt")
    annex.commit(["b.dcm"], "second")
    assert git(ds, "diff", "--name-only", "HEAD~1", "HEAD").split() == ["b.dcm"]
    assert git(ds, "status", "--porcelain").split() == ["??", "theirs.txt"]
    with pytest.raises(AnnexError, match="git update-index of 1 files failed"):
        annex.commit(["no-such-file.dcm"], "never")


def test_records_win_over_a_clock_that_was_ahead(ds, tmp_path):
    """A location log written on a machine whose clock was ahead says the
    content is gone, a minute from now; content moved in here now must still
    count as here (git-annex takes the newest line)."""
    (key, path, size, md5), = verified(tmp_path, n=1)
    annex = Annex(ds)
    annex.link([(key, "a.dcm")])
    from datalad_fmrif.annexlog import BranchLogs

    logs = BranchLogs()
    logs.add_present(key, annex.uuid())
    annex.write_logs(logs)
    where = annex._examine([key])[key][0]
    ahead = f"{int(time.time()) + 60}s 0 {annex.uuid()}\n".encode()
    subprocess.run(["git", "fast-import", "--quiet"], cwd=ds, check=True, input=(
        b"commit refs/fmrif/ahead/git-annex\ncommitter x <x@example.invalid> 1700000000 +0000\n"
        b"data 5\nahead\nfrom refs/heads/git-annex\nM 100644 inline "
        + f"{where}{key}.log".encode() + b"\ndata %d\n%s\n" % (len(ahead), ahead)))
    git(ds, "annex", "merge")
    with annex.ingest([key]) as ingest:
        ingest.add(key, path, size=size, md5=md5)
    assert ingest.results == {key: None}
    out = json.loads(git(ds, "annex", "whereis", "--json", "--key", key))
    assert [w["uuid"] for w in out["whereis"]] == [annex.uuid()]


def test_a_failing_fast_import_is_an_error_and_imports_nothing(ds):
    annex = Annex(ds)
    refs = git(ds, "for-each-ref")
    with pytest.raises(AnnexError, match="git fast-import failed: fatal"):
        annex._fast_import([b"commit refs/fmrif/x/git-annex\n", b"garbage\n"])
    # its crash report is not left behind (the message has its error)
    assert not list((Path(ds) / ".git").glob("fast_import_crash_*"))
    # a stream that just ends (a killed run) is no commit either: "done" is missing
    proc = subprocess.run(["git", "fast-import", "--quiet"], cwd=ds, capture_output=True,
                          input=b"feature done\nblob\ndata 1\nx\n")
    assert proc.returncode != 0
    assert git(ds, "for-each-ref") == refs
