"""The fmrif special remote with real git-annex, DataLad and the sandbox XNAT.

Each test makes a dataset, sets up the remote as ``fmrif-download`` does
(``initremote ... autoenable=true server=URL``), registers sandbox files by
URL and MD5E key without their content, and then lets git-annex and DataLad
get, drop and verify them through ``git-annex-remote-fmrif``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import datalad.api as dl
import pytest
from annexremote import RemoteError

from datalad_fmrif.credentials import (
    CredentialStore,
    default_credential_name,
    env_names,
)
from datalad_fmrif.annex.keys import key_facts
from datalad_fmrif.sandbox import Fault, Sandbox, StudySpec

pytestmark = pytest.mark.skipif(
    shutil.which("git-annex") is None or shutil.which("git-annex-remote-fmrif") is None,
    reason="git-annex and git-annex-remote-fmrif must be on PATH")

SPEC = StudySpec(seed=0, subjects=3, scans_per_session=6, files_per_scan=4, file_size=8192)
LOGIN = "/data/services/auth"


@pytest.fixture(scope="module")
def sb():
    users = {"demo": "demo-password", "other": "other-password"}
    with Sandbox(SPEC, latency=0.0, users=users, session_timeout=900.0) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def isolated(sb, state_dir, monkeypatch):
    """Per test: fresh lockout memory, no credential in the environment."""
    for var in env_names(default_credential_name(sb.url)):
        monkeypatch.delenv(var, raising=False)
    yield
    sb.clear_faults()


@pytest.fixture
def env_credential(sb, monkeypatch):
    user_var, secret_var = env_names(default_credential_name(sb.url))
    monkeypatch.setenv(user_var, sb.user)
    monkeypatch.setenv(secret_var, sb.password)


# -- helpers ---------------------------------------------------------------------


def run(cwd, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def annex(cwd, *args, check=True) -> subprocess.CompletedProcess:
    return run(cwd, "git", "annex", *args, check=check)


def batch(cwd, args, lines) -> list[dict]:
    out = subprocess.run(["git", "annex", *args, "--batch", "--json"], cwd=cwd,
                         input="".join(f"{line}\n" for line in lines),
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def study_files(sb, count):
    found = []
    for project in sb.study.projects[:1]:
        for subject in sb.study.subjects(project):
            for session in sb.study.sessions(subject.id):
                found += [f for f in sb.study.files(session.id) if f.scan_id]
    assert len(found) >= count
    return found[:count]


def url_of(sb, f) -> str:
    return (f"{sb.url}/data/experiments/{f.session_id}/scans/{f.scan_id}"
            f"/resources/{f.resource_id}/files/{f.name}")


def key_of(f) -> str:
    return f"MD5E-s{f.size}--{f.md5}{Path(f.name).suffix}"


def make_dataset(path: Path, sb, files) -> dict[str, object]:
    """A dataset with ``files`` registered by URL and key, content not present."""
    dl.create(path, result_renderer="disabled")
    annex(path, "initremote", "fmrif", "type=external", "externaltype=fmrif",
          "encryption=none", "autoenable=true", f"server={sb.url}/")
    paths = {f"{f.session_id}/{f.scan_id}/{f.name}": f for f in files}
    registered = batch(path, ["registerurl"], [f"{key_of(f)} {url_of(sb, f)}" for f in files])
    assert all(r["success"] for r in registered)
    made = batch(path, ["fromkey"], [f"{key_of(f)} {p}" for p, f in paths.items()])
    assert all(r["success"] for r in made)
    dl.save(dataset=path, message="register files", result_renderer="disabled")
    return paths


def present(ds: Path) -> set[str]:
    return set(annex(ds, "find", "--in", "here").stdout.split())


def logins(sb, since) -> list:
    return [r for r in sb.requests[since:] if r.path == LOGIN]


def annexed_objects(ds: Path) -> list[Path]:
    objects = ds / ".git" / "annex" / "objects"
    return [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []


# -- the remote ----------------------------------------------------------------


def test_key_facts():
    md5 = "0123456789abcdef0123456789abcdef"
    assert key_facts(f"MD5E-s1234--{md5}.dcm") == (1234, md5)
    assert key_facts(f"MD5E-s1234--{md5}.nii.gz") == (1234, md5)
    assert key_facts(f"MD5-s5--{md5}") == (5, md5)
    assert key_facts(f"MD5E-s9-m1700000000--{md5}.1D") == (9, md5)
    assert key_facts("SHA256E-s7--" + "a" * 64 + ".dcm") == (7, None)
    assert key_facts(f"MD5E-s100-S10-C2--{md5}.dcm") == (None, None)
    assert key_facts("URL--http&c%%host%file") == (None, None)


def test_get_drop_get(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, sb, study_files(sb, 3))
    first, f = next(iter(paths.items()))

    whereis = json.loads(annex(ds, "whereis", "--json", first).stdout)
    (location,) = whereis["whereis"]
    assert location["description"] == "[fmrif]"
    assert location["urls"] == [url_of(sb, f)]

    annex(ds, "get", first)
    assert (ds / first).read_bytes() == f.content()

    dl.drop(ds / first, dataset=ds, result_renderer="disabled")
    assert first not in present(ds)
    since = len(sb.requests)
    dl.get(ds / first, dataset=ds, result_renderer="disabled")
    # one file: the login and its check, its bytes and the logout, nothing
    # else. No xnatpy set-up (GET /, the version): the remote never asks
    # for xnatpy's session (datalad_fmrif/xnat/session.py)
    assert [(r.method, r.path) for r in sb.requests[since:]] == [
        ("PUT", "/data/services/auth"), ("GET", "/data/auth"),
        ("GET", url_of(sb, f)[len(sb.url):]), ("DELETE", "/data/JSESSION")]
    assert (ds / first).read_bytes() == f.content()
    annex(ds, "fsck", "--fast", first)
    annex(ds, "fsck", first)


def test_records_written_directly_are_what_registerurl_writes(sb, env_credential, tmp_path):
    """fmrif-download records the URLs the fmrif remote claims itself
    (Annex.register): the same log lines registerurl writes (a claimed URL
    has a leading ':'), and git-annex gets and drops through them."""
    from datalad_fmrif.annex import Annex

    files = study_files(sb, 4)
    ds = tmp_path / "ds"
    paths = make_dataset(ds, sb, files[:2])  # by registerurl
    annex_ = Annex(ds)
    res = annex_.register([(key_of(f), f"direct/{f.name}", url_of(sb, f), {"xnat_file": f.name})
                           for f in files[2:]], remote="fmrif")
    assert all(r["success"] for r in res), res

    def logs(f):
        where = annex_._examine([key_of(f)])[key_of(f)][0] + key_of(f)
        return {suffix: [line.split(" ", 1)[1] for line in run(
            ds, "git", "cat-file", "-p", f"git-annex:{where}{suffix}").stdout.splitlines()]
            for suffix in (".log", ".log.web")}

    uuid = annex_.uuid("fmrif")
    for f in files:
        assert logs(f) == {".log": [f"1 {uuid}"], ".log.web": [f"1 :{url_of(sb, f)}"]}
    first = f"direct/{files[2].name}"
    whereis = json.loads(annex(ds, "whereis", "--json", first).stdout)
    assert [(w["description"], w["urls"]) for w in whereis["whereis"]] == [
        ("[fmrif]", [url_of(sb, files[2])])]
    dl.save(dataset=ds, message="direct", result_renderer="disabled")
    dl.get(ds / first, dataset=ds, result_renderer="disabled")
    assert (ds / first).read_bytes() == files[2].content()
    dl.drop(ds / first, dataset=ds, result_renderer="disabled")
    assert first not in present(ds) and next(iter(paths)) not in present(ds)


def test_parallel_get_logs_in_once_per_job(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, sb, study_files(sb, 24))
    since = len(sb.requests)
    annex(ds, "get", "-J", "4", ".")
    assert present(ds) == set(paths)
    for p, f in paths.items():
        assert (ds / p).read_bytes() == f.content()

    requests = sb.requests[since:]
    assert 1 <= len(logins(sb, since)) <= 4
    file_paths = {url_of(sb, f)[len(sb.url):] for f in paths.values()}
    fetched = [r.path for r in requests if r.path in file_paths]
    assert sorted(fetched) == sorted(file_paths)  # each file once
    # besides the logins and logouts: no catalog queries
    others = {r.path for r in requests if r.path not in file_paths}
    assert not [p for p in others if p.startswith(("/data/projects", "/data/subjects",
                                                   "/data/experiments"))]
    assert all(r.auth in ("cookie", "form") for r in requests)  # never basic auth


#: what the remote must not load on its way to the first transfer (issue
#: 18): xnatpy's model (with pydicom and numpy), and DataLad's command
#: machinery, which importing datalad_next patches
NOT_FOR_THE_REMOTE = ("xnat", "pydicom", "numpy", "datalad_next",
                      "datalad.interface.base", "datalad.core.local.save")


def test_credential_from_keyring(sb, secret_service, tmp_path, monkeypatch):
    """A keyring credential, and what the remote process imported to use it
    (Python's own -X importtime report, on the remote's stderr)."""
    name = default_credential_name(sb.url)
    store = CredentialStore()
    store.set(name, sb.user, sb.password, realm=sb.url)
    try:
        ds = tmp_path / "ds"
        paths = make_dataset(ds, sb, study_files(sb, 2))
        monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
        got = annex(ds, "get", ".")
        monkeypatch.delenv("PYTHONPROFILEIMPORTTIME")
        imported = {line.rsplit("|", 1)[1].strip()
                    for line in got.stderr.splitlines() if line.startswith("import time:")}
        assert "keyring" in imported and "datalad_fmrif.remote" in imported
        assert not imported & set(NOT_FOR_THE_REMOTE), sorted(imported & set(NOT_FOR_THE_REMOTE))
        assert present(ds) == set(paths)
    finally:
        store.remove(name)


def test_dataset_config_names_the_credential(sb, monkeypatch, tmp_path):
    """``datalad.fmrif.credential`` in the dataset's config counts."""
    user_var, secret_var = env_names("lab-xnat")
    monkeypatch.setenv(user_var, sb.user)
    monkeypatch.setenv(secret_var, sb.password)
    ds = tmp_path / "ds"
    paths = make_dataset(ds, sb, study_files(sb, 1))
    run(ds, "git", "config", "-f", ".datalad/config", "datalad.fmrif.credential", "lab-xnat")
    annex(ds, "get", ".")
    assert present(ds) == set(paths)


def test_clone_gets_without_setup(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, sb, study_files(sb, 2))
    clone = tmp_path / "clone"
    dl.clone(str(ds), str(clone), result_renderer="disabled")
    # autoenable: git-annex init in the clone enabled the special remote
    assert run(clone, "git", "config", "remote.fmrif.annex-externaltype").stdout.strip() == "fmrif"
    # origin has no content either, so this must come from XNAT
    dl.get(clone, dataset=clone, result_renderer="disabled")
    for p, f in paths.items():
        assert (clone / p).read_bytes() == f.content()


def test_wrong_password_is_tried_exactly_once(sb, monkeypatch, tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, sb, study_files(sb, 16))
    user_var, secret_var = env_names(default_credential_name(sb.url))
    monkeypatch.setenv(user_var, "other")
    monkeypatch.setenv(secret_var, "not-the-password")

    failed = annex(ds, "get", "-J", "8", ".", check=False)
    assert failed.returncode != 0
    assert sb.failed_logins("other") == 1
    assert "datalad fmrif-login" in failed.stderr + failed.stdout
    assert "not-the-password" not in failed.stderr + failed.stdout
    assert present(ds) == set()

    # a new run, a new set of remote processes: still never sent again
    again = annex(ds, "get", ".", check=False)
    assert again.returncode != 0
    assert sb.failed_logins("other") == 1
    assert "datalad fmrif-login" in again.stderr + again.stdout
    assert not sb.locked("other")
    assert len(paths) == 16


@pytest.mark.parametrize("keyring", ["empty", "none"])
def test_missing_credential_says_what_to_do(sb, tmp_path, monkeypatch, keyring):
    if keyring == "none":
        monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    elif not os.environ.get("PYTHON_KEYRING_BACKEND"):
        pytest.skip("needs the Secret Service")
    ds = tmp_path / "ds"
    make_dataset(ds, sb, study_files(sb, 2))
    since = len(sb.requests)
    failed = annex(ds, "get", ".", check=False)
    assert failed.returncode != 0
    output = failed.stderr + failed.stdout
    assert "fmrif-login" in output
    user_var, secret_var = env_names(default_credential_name(sb.url))
    assert user_var in output and secret_var in output
    if keyring == "none":
        assert "Secret Service" in output
    assert sb.requests[since:] == []


def test_remote_gives_up_on_a_failing_server():
    """After GIVE_UP_AFTER failed requests in a row, the rest fail at once."""
    from datalad_fmrif.remote import GIVE_UP_AFTER, FmrifRemote
    from datalad_fmrif.xnat.errors import TransientError

    remote = FmrifRemote(annex=None)
    for _ in range(GIVE_UP_AFTER):
        with pytest.raises(RemoteError, match="503"), remote._errors():
            raise TransientError("GET https://x/data/f failed after 5 attempts: HTTP 503")
    with pytest.raises(RemoteError, match="requests in a row"):
        remote._xnat()


def test_transient_faults_are_retried(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    files = study_files(sb, 4)
    paths = make_dataset(ds, sb, files)
    sb.add_fault(Fault("status", path=files[0].name, status=503))
    sb.add_fault(Fault("reset", path=files[1].name))
    sb.add_fault(Fault("truncate", path=files[2].name, after_bytes=3000))
    sb.add_fault(Fault("reset", path=files[3].name, after_bytes=5000))
    annex(ds, "get", ".")
    for p, f in paths.items():
        assert (ds / p).read_bytes() == f.content()


def test_html_page_is_never_content(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    files = study_files(sb, 1)
    (path,) = make_dataset(ds, sb, files)
    sb.add_fault(Fault("html200", path=files[0].name, times=None))
    failed = annex(ds, "get", path, check=False)
    assert failed.returncode != 0
    assert "HTML" in failed.stderr + failed.stdout
    assert present(ds) == set()
    assert annexed_objects(ds) == []
    # nothing of the page was kept to be "resumed" later
    sb.clear_faults()
    annex(ds, "get", path)
    assert (ds / path).read_bytes() == files[0].content()


def test_file_changed_on_server(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    files = study_files(sb, 24)[-2:]  # files no other test fetches after this
    paths = make_dataset(ds, sb, files)
    (got, f_got), (missing, f_missing) = paths.items()
    annex(ds, "get", got)
    good = f_got.content()
    for f in files:
        sb.study.change_file(f.session_id, f.scan_id, f.name)

    failed = annex(ds, "get", missing, check=False)
    assert failed.returncode != 0
    assert "does not match" in failed.stderr + failed.stdout
    assert f_missing.md5 in failed.stderr + failed.stdout  # the new digest
    assert missing not in present(ds)
    assert not (ds / missing).exists()  # a dangling link: no content
    annex(ds, "fsck", missing)  # nothing bad to find

    # XNAT no longer has this content, so the last good copy must not go
    refused = annex(ds, "drop", got, check=False)
    assert refused.returncode != 0
    assert got in present(ds)
    assert (ds / got).read_bytes() == good != f_got.content()


def test_session_expiry_mid_run_logs_in_again(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    files = study_files(sb, 3)
    paths = make_dataset(ds, sb, files)
    sb.add_fault(Fault("expire", path=files[1].name))
    since = len(sb.requests)
    annex(ds, "get", ".")  # one process, three files, the second one expires
    assert present(ds) == set(paths)
    assert len(logins(sb, since)) == 2


def test_read_only(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, sb, study_files(sb, 1))
    (ds / "notes.txt").write_text("local only\n")
    dl.save(dataset=ds, path=ds / "notes.txt", to_git=False, result_renderer="disabled")
    copied = annex(ds, "copy", "--to", "fmrif", "notes.txt", check=False)
    assert copied.returncode != 0
    assert "read-only" in copied.stderr + copied.stdout
    removed = annex(ds, "drop", "--from", "fmrif", *paths, check=False)
    assert removed.returncode != 0
    assert annex(ds, "whereis", *paths).stdout.count("[fmrif]") == 1


def test_addurl_uses_checkurl(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    dl.create(ds, result_renderer="disabled")
    annex(ds, "initremote", "fmrif", "type=external", "externaltype=fmrif",
          "encryption=none", "autoenable=true", f"server={sb.url}")
    f = study_files(sb, 1)[0]
    annex(ds, "addurl", "--fast", "--file", "a.dcm", url_of(sb, f))
    key = annex(ds, "lookupkey", "a.dcm").stdout.strip()
    assert key.split("-")[0] in ("URL", "VURL") and f"-s{f.size}--" in key  # size from CHECKURL
    annex(ds, "get", "a.dcm")
    assert (ds / "a.dcm").read_bytes() == f.content()
    missing = annex(ds, "addurl", "--fast", "--file", "b.dcm", url_of(sb, f) + "x", check=False)
    assert missing.returncode != 0


def test_no_secret_in_the_dataset(sb, env_credential, tmp_path):
    ds = tmp_path / "ds"
    make_dataset(ds, sb, study_files(sb, 2))
    annex(ds, "get", ".")
    remote_log = run(ds, "git", "show", "git-annex:remote.log").stdout
    (line,) = remote_log.splitlines()
    fields = dict(item.split("=", 1) for item in line.split()[1:])
    assert set(fields) == {"autoenable", "encryption", "externaltype", "name",
                           "server", "type", "timestamp"}
    assert fields["server"] == sb.url  # normalised: no trailing slash
    history = run(ds, "git", "log", "--all", "-p").stdout
    config = (ds / ".git" / "config").read_text()
    for text in (remote_log, history, config):
        assert sb.password not in text
        assert f"={sb.user}" not in text


def test_bad_server_url_is_refused(tmp_path):
    ds = tmp_path / "ds"
    dl.create(ds, result_renderer="disabled")
    refused = annex(ds, "initremote", "fmrif", "type=external", "externaltype=fmrif",
                    "encryption=none", "server=https://demo:secret@xnat.example.org",
                    check=False)
    assert refused.returncode != 0
    assert "must not contain a user name or password" in refused.stderr + refused.stdout
    assert "secret" not in run(ds, "git", "show", "git-annex:remote.log", check=False).stdout
