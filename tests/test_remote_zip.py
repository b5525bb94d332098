"""The fmrif special remote fetches whole scan resources as one zip.

Real git-annex, DataLad and the sandbox XNAT: a dataset made by
``fmrif-download`` (with its session manifests), its content dropped, then
got back through ``git-annex-remote-fmrif``. The sandbox's request log shows
how the content came: per file or per resource zip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import ZIP_PATH, assert_fsck, download, file_gets, manifests, \
    pseudonymous_list, zip_gets

from datalad_fmrif.content.remote_zip import cache_root
from datalad_fmrif.sandbox import Fault

pytestmark = pytest.mark.skipif(
    shutil.which("git-annex") is None or shutil.which("git-annex-remote-fmrif") is None,
    reason="git-annex and git-annex-remote-fmrif must be on PATH")


def annex(ds, *args, check=True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", "annex", *args], cwd=ds.path, capture_output=True,
                            text=True, check=False, **kw)
    if check and result.returncode:
        raise AssertionError(f"git annex {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def present(ds) -> set[str]:
    return set(annex(ds, "find", "--in", "here").stdout.split())


def resources(ds) -> dict[str, list[dict]]:
    """Resource folder -> manifest entries of its files."""
    out: dict[str, list[dict]] = {}
    for doc in manifests(ds).values():
        for entry in doc["files"]:
            folder = entry["url"].partition("/files/")[0]
            if "/scans/" in folder:
                out.setdefault(folder, []).append(entry)
    return out


def no_cache_left(ds) -> bool:
    root = cache_root(Path(ds.path) / ".git")
    return not root.exists() or not any(root.iterdir())


@pytest.fixture
def got(sb, ds, tmp_path):
    """A downloaded dataset whose content is dropped again."""
    csv, _subs = pseudonymous_list(tmp_path, sb, n=2)
    download(ds, sb, csv)
    annex(ds, "drop", "--force", ".")
    assert present(ds) == set()
    sb.clear_requests()
    return ds


def scan_dir(ds) -> tuple[str, list[dict]]:
    """The dataset directory holding the files of one scan resource, and them."""
    folder, entries = next((f, e) for f, e in sorted(resources(ds).items()) if len(e) >= 3)
    return os.path.dirname(entries[0]["path"]), entries


def test_a_scan_comes_as_one_zip(got, sb):
    ds = got
    where, entries = scan_dir(ds)
    annex(ds, "get", where)
    assert {e["path"] for e in entries} <= present(ds)
    # the first key alone, then one zip for the rest
    assert len(file_gets(sb)) == 1 and len(zip_gets(sb)) == 1
    assert_fsck(ds, where)
    assert no_cache_left(ds)


def test_one_file_stays_one_request(got, sb):
    ds = got
    _where, entries = scan_dir(ds)
    annex(ds, "get", entries[0]["path"])
    assert present(ds) == {entries[0]["path"]}
    assert len(file_gets(sb)) == 1 and zip_gets(sb) == []
    assert no_cache_left(ds)


def test_many_scans_with_four_jobs(got, sb):
    ds = got
    annex(ds, "get", "-J4", ".")
    wanted = {e["path"] for es in resources(ds).values() for e in es}
    assert wanted <= present(ds)
    zips = Counter(r.path for r in zip_gets(sb))
    assert zips and max(zips.values()) == 1  # no resource zipped twice
    # per file: the first key of each resource only
    assert len(file_gets(sb)) == len(resources(ds))
    assert len(file_gets(sb)) + len(zips) < len(wanted)
    assert_fsck(ds)
    assert no_cache_left(ds)


def test_truncated_zip_falls_back_per_file(got, sb):
    ds = got
    where, entries = scan_dir(ds)
    sb.add_fault(Fault("reset", path=ZIP_PATH, after_bytes=4096 + 300, times=None))
    annex(ds, "get", where)
    assert {e["path"] for e in entries} <= present(ds)
    assert len(zip_gets(sb)) == 1  # not asked again for every key
    assert len(file_gets(sb)) >= len(entries) - 1
    assert_fsck(ds, where)
    assert no_cache_left(ds)


@pytest.mark.parametrize("change", ["corrupt", "missing"])
def test_a_bad_entry_never_enters_the_annex(got, sb, change):
    """An entry whose content is not its key's (the file changed on XNAT),
    or no entry at all (renamed on XNAT): the other files come from the
    zip, that one fails on its own too, and nothing of it is kept."""
    ds = got
    where, entries = scan_dir(ds)
    bad = entries[-1]
    session_id = bad["url"].split("/experiments/")[1].split("/")[0]
    if change == "corrupt":
        sb.study.change_file(session_id, bad["scan_id"], bad["name"])
    else:
        sb.study.rename_file(session_id, bad["scan_id"], bad["name"], "renamed.dcm")
    result = annex(ds, "get", where, check=False)
    assert result.returncode != 0
    if change == "corrupt":
        assert "does not match" in result.stdout + result.stderr
    assert present(ds) == {e["path"] for e in entries} - {bad["path"]}
    assert len(zip_gets(sb)) == 1
    assert_fsck(ds, where)
    assert no_cache_left(ds)


def test_killed_during_the_zip(got, sb):
    ds = got
    where, entries = scan_dir(ds)
    sb.add_fault(Fault("slow", path=ZIP_PATH, delay=30))
    proc = subprocess.Popen(["git", "annex", "get", where], cwd=ds.path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        root = cache_root(Path(ds.path) / ".git")
        for _ in range(600):  # the zip's lock: the remote is waiting for the zip
            if list(root.glob("*/*/lock")) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert list(root.glob("*/*/lock")), "the zip was never asked for"
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert present(ds) <= {entries[0]["path"]}  # only the per-file first key, if at all
    assert_fsck(ds, where)
    sb.clear_faults()
    annex(ds, "get", where)  # the next run
    assert {e["path"] for e in entries} <= present(ds)
    assert no_cache_left(ds), [str(p) for p in cache_root(Path(ds.path) / ".git").rglob("*")]


def test_cost_and_availability(got):
    """A local clone (100) or a RIA store (200) is tried before XNAT."""
    info = annex(got, "info", "fmrif").stdout
    assert "cost: 250" in info
    proto = subprocess.run(["git-annex-remote-fmrif"], input="GETCOST\nGETAVAILABILITY\n",
                           capture_output=True, text=True, cwd=got.path, timeout=60)
    assert proto.stdout.splitlines()[1:] == ["COST 250", "AVAILABILITY GLOBAL"]


def test_a_clone_holding_the_content_is_asked_before_xnat(got, sb, tmp_path):
    """What the cost is for: a clone that has the files serves them, and
    XNAT is not asked for any (a cost under the clone's would send the
    first request to XNAT)."""
    import datalad.api as dl

    where, entries = scan_dir(got)
    annex(got, "get", where)
    clone = dl.clone(got.path, str(tmp_path / "clone"), result_renderer="disabled")
    sb.clear_requests()
    annex(clone, "get", where)
    assert {e["path"] for e in entries} <= present(clone)
    assert file_gets(sb) == [] and zip_gets(sb) == []


def test_testremote_read_only(got):
    ds = got
    _where, entries = scan_dir(ds)
    annex(ds, "get", entries[0]["path"])
    result = annex(ds, "testremote", "fmrif", f"--test-readonly={entries[0]['path']}",
                   check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# -- the rule and the bound, in this process (the remote's own object) ----------


def _zips_of(ds, sb):
    from datalad_fmrif.content.remote_zip import ResourceZips

    return ResourceZips(sb.url, Path(ds.path) / ".git")


def _ask(zips, xnat, entry, dest):
    path = entry["url"].partition("/data/")[2]
    key = os.path.basename(os.readlink(Path(zips.gitdir).parent / entry["path"]))
    # as the remote asks: the run's cache first, then the resource's zip
    return zips.cached(key, dest) or zips.retrieve(key, ["/data/" + path], dest,
                                                   lambda: xnat)


@pytest.fixture
def xnat(sb, tmp_path):
    from datalad_fmrif.credentials import Credential, Rejections
    from datalad_fmrif.xnat.session import XnatSession

    cred = Credential("sandbox", sb.user, sb.password, "environment")
    with XnatSession(sb.url, cred, rejections=Rejections(tmp_path / "rejected")) as session:
        yield session


def test_missing_here_follows_the_manifest_and_the_annex(got, sb):
    ds = got
    where, entries = scan_dir(ds)
    zips = _zips_of(ds, sb)
    folder = entries[0]["url"][len(sb.url):].partition("/files/")[0]
    assert {f.path for f in zips.missing_here(folder)} == {e["path"] for e in entries}
    annex(ds, "get", entries[0]["path"])
    assert {f.path for f in zips.missing_here(folder)} == {e["path"] for e in entries[1:]}


def test_the_second_key_takes_the_zip_the_rest_come_from_the_cache(got, sb, xnat, tmp_path):
    ds = got
    _where, entries = scan_dir(ds)
    zips = _zips_of(ds, sb)
    try:
        assert not _ask(zips, xnat, entries[0], tmp_path / "0")  # the first: alone
        assert zip_gets(sb) == []
        for i, entry in enumerate(entries[1:], 1):
            assert _ask(zips, xnat, entry, tmp_path / str(i))
            assert hashlib.md5((tmp_path / str(i)).read_bytes()).hexdigest() == entry["md5"]
        assert len(zip_gets(sb)) == 1
    finally:
        zips.close()
    assert no_cache_left(ds)


def test_a_zip_that_would_overfill_the_cache_is_not_taken(got, sb, xnat, tmp_path,
                                                          monkeypatch):
    from datalad_fmrif.content import remote_zip

    ds = got
    _where, entries = scan_dir(ds)
    monkeypatch.setattr(remote_zip, "MAX_CACHE_BYTES", sum(e["size"] for e in entries) - 1)
    zips = _zips_of(ds, sb)
    try:
        assert not _ask(zips, xnat, entries[0], tmp_path / "0")
        assert not _ask(zips, xnat, entries[1], tmp_path / "1")
        assert zip_gets(sb) == []
    finally:
        zips.close()
    assert no_cache_left(ds)


def test_the_zip_path_leaves_the_count_of_failed_requests_alone(tmp_path):
    """A key that goes to its own request after the zip path looked at it
    must not reset the count that makes the remote give up on a failing
    server (remote.GIVE_UP_AFTER)."""
    from datalad_fmrif.remote import FmrifRemote
    from datalad_fmrif.content.remote_zip import ResourceZips

    remote = FmrifRemote(annex=None)
    remote._server = "http://127.0.0.1:9"
    remote._zips = ResourceZips(remote._server, tmp_path / ".git")
    remote._failures_in_a_row = 2
    url = remote._server + "/data/experiments/E1/scans/1/resources/1/files/a.dcm"
    try:
        assert not remote._from_zip("MD5E-s1--" + "0" * 32 + ".dcm", [url], tmp_path / "a")
    finally:
        remote._zips.close()
    assert remote._failures_in_a_row == 2
