"""The ways of getting a study into a DataLad dataset, one per process.

``run.py`` starts this script once per measured run, in a fresh process, so
that its wall time and the peak memory of its process tree (this process and
every git, git-annex, datalad and curl process below it) belong to that run
alone::

    python benchmarks/ways.py WAY JSON-ARGUMENTS

It prints one JSON line as its last line of output: ``{"ok": ..., "error":
..., "detail": {...}, "cpu_s": ...}`` (user + system CPU time of this
process and of every process below it that was waited for).

Nothing here imports datalad-fmrif: each way is what its users would run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class WayFailed(Exception):
    pass


def sh(argv, *, cwd=None, env=None, input=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env, input=input, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise WayFailed(f"{' '.join(map(str, argv[:4]))} ... exited with "
                        f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def curl_login(url: str, user: str, password: str) -> str:
    """One PUT /data/services/auth; XNAT answers with the JSESSIONID."""
    proc = sh(["curl", "-sS", "--fail", "-X", "PUT", "--data-urlencode", f"username={user}",
               "--data-urlencode", "password@-", f"{url}/data/services/auth"],
              input=password)
    return proc.stdout.strip()


# -- 1. the limit -----------------------------------------------------------------

def limit(a: dict) -> dict:
    """One zip per session (curl, 4 at a time), unzip, one `git annex add`, commit.

    No listing, no metadata, no verification: the session and scan IDs come
    from the benchmark, which knows the study.
    """
    ds = Path(a["dataset"])
    jsid = curl_login(a["url"], a["user"], a["password"])
    tmp = ds / ".git" / "bench-tmp"
    tmp.mkdir()

    def one(session):
        sid, scans = session["id"], ",".join(session["scans"])
        zpath = tmp / f"{sid}.zip"
        sh(["curl", "-sS", "--fail", "-b", f"JSESSIONID={jsid}", "-o", str(zpath),
            f"{a['url']}/data/experiments/{sid}/scans/{scans}/files?format=zip"])
        sh(["unzip", "-q", "-o", str(zpath), "-d", str(ds / sid)])
        zpath.unlink()

    t0 = time.monotonic()
    with ThreadPoolExecutor(a.get("jobs", 4)) as pool:
        list(pool.map(one, a["sessions"]))
    t1 = time.monotonic()
    shutil.rmtree(tmp)
    sh(["git", "annex", "add", "--quiet", "."], cwd=ds)
    t2 = time.monotonic()
    sh(["git", "commit", "-q", "-m", "limit: one zip per session"], cwd=ds)
    t3 = time.monotonic()
    return {"transfer_unzip_s": round(t1 - t0, 3), "annex_add_s": round(t2 - t1, 3),
            "commit_s": round(t3 - t2, 3), "files": annexed_count(ds)}


# -- 2. the tutorial's way ----------------------------------------------------------

def tutorial(a: dict) -> dict:
    """xnatpy as the FMRIF tutorial uses it: full connect, subject.download_dir
    for each label of the list, then `datalad save`."""
    import logging

    import xnat
    import yaml

    ds = Path(a["dataset"])
    creds = yaml.safe_load(Path(a["xnat_file"]).read_text())
    labels = [line.strip() for line in Path(a["labels"]).read_text().splitlines() if line.strip()]
    t0 = time.monotonic()
    with xnat.connect(a["url"], user=creds["username"], password=creds["password"],
                      loglevel=logging.ERROR) as session:
        project = session.projects[a["project"]]
        for label in labels:
            project.subjects[label].download_dir(str(ds), verbose=False)
    t1 = time.monotonic()
    sh(["datalad", "save", "-m", "tutorial: xnatpy download_dir"], cwd=ds)
    t2 = time.monotonic()
    return {"xnatpy_s": round(t1 - t0, 3), "datalad_save_s": round(t2 - t1, 3),
            "files": annexed_count(ds)}


# -- 3. datalad-xnat ----------------------------------------------------------------

def datalad_xnat(a: dict) -> dict:
    """`datalad xnat-init` + `datalad xnat-update` of datalad-xnat 0.2.1,
    installed in its own virtualenv (`a["venv"]`), default options."""
    ds = Path(a["dataset"])
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(a["venv"]) / "bin"), env["PATH"]])
    env.pop("VIRTUAL_ENV", None)
    # datalad's config maps these to datalad.credential.bench.{user,password}
    env["DATALAD_CREDENTIAL_BENCH_USER"] = a["user"]
    env["DATALAD_CREDENTIAL_BENCH_PASSWORD"] = a["password"]
    datalad = str(Path(a["venv"]) / "bin" / "datalad")
    t0 = time.monotonic()
    sh([datalad, "xnat-init", "--project", a["project"], "--credential", "bench",
        a["url"]], cwd=ds, env=env)
    t1 = time.monotonic()
    proc = sh([datalad, "-f", "json", "xnat-update"], cwd=ds, env=env, check=False)
    t2 = time.monotonic()
    records = _json_lines(proc.stdout)
    bad = [r for r in records if r.get("status") in ("error", "impossible")]
    if proc.returncode != 0 or bad:
        why = "; ".join(str(r.get("message")) for r in bad[:3]) or proc.stderr.strip()[-1500:]
        raise WayFailed(f"datalad xnat-update failed ({len(bad)} failed results): {why}")
    return {"init_s": round(t1 - t0, 3), "update_s": round(t2 - t1, 3),
            "files": annexed_count(ds)}


# -- 4. fmrif-download ----------------------------------------------------------------

def fmrif(a: dict) -> dict:
    """`datalad fmrif-download` with the benchmark's subject list (with a
    Pseudonym column), default options plus ``a["options"]``."""
    argv = ["datalad", "-f", "json", "fmrif-download", "-d", a["dataset"],
            "--server", a["url"], *a.get("options", []), a["subjects"]]
    t0 = time.monotonic()
    proc = sh(argv, cwd=a["dataset"], env=_env(a), check=False)
    t1 = time.monotonic()
    records = _json_lines(proc.stdout)
    sessions = [r for r in records if r.get("type") == "session" and "files_new" in r]
    bad = [r for r in records if r.get("status") in ("error", "impossible")]
    if proc.returncode != 0 or bad or not sessions:
        why = "; ".join(str(r.get("message")) for r in bad[:3]) or proc.stderr.strip()[-1500:]
        raise WayFailed(f"fmrif-download failed: {why}")
    return {"command_s": round(t1 - t0, 3),
            "files_new": sum(r["files_new"] for r in sessions),
            "files_present": sum(r["files_present"] for r in sessions),
            "files": annexed_count(Path(a["dataset"]))}


def get(a: dict) -> dict:
    """`datalad get -J N PATH` (through the fmrif special remote, or the
    remote named by ``a["source"]``)."""
    source = ["-s", a["source"]] if a.get("source") else []
    t0 = time.monotonic()
    proc = sh(["datalad", "-f", "json", "get", "-J", str(a.get("jobs", 4)), *source,
               a["path"]], cwd=a["dataset"], env=_env(a), check=False)
    t1 = time.monotonic()
    records = _json_lines(proc.stdout)
    ok = [r for r in records if r.get("type") == "file" and r.get("status") == "ok"]
    bad = [r for r in records if r.get("status") in ("error", "impossible")]
    if proc.returncode != 0 or bad:
        why = "; ".join(str(r.get("message")) for r in bad[:3]) or proc.stderr.strip()[-1500:]
        raise WayFailed(f"datalad get failed: {why}")
    return {"files": len(ok), "get_s": round(t1 - t0, 3)}


def curl_files(a: dict) -> dict:
    """The same files as `get`, by curl with N parallel keep-alive connections."""
    out = Path(a["out"])
    out.mkdir(parents=True, exist_ok=True)
    jsid = curl_login(a["url"], a["user"], a["password"])
    config = out / "curl.cfg"
    with open(config, "w") as fh:
        fh.writelines(f'url = "{a["url"]}{path}"\noutput = "{out}/{i}"\n' for i, path in enumerate(a["paths"]))
    sh(["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(a.get("jobs", 4)),
        "-b", f"JSESSIONID={jsid}", "-K", str(config)])
    config.unlink()
    n = sum(1 for _ in out.iterdir())
    if n != len(a["paths"]):
        raise WayFailed(f"curl fetched {n} of {len(a['paths'])} files")
    return {"files": n}


def wire(a: dict) -> dict:
    """The zip of every scan resource fmrif-download takes, by curl with N
    parallel keep-alive connections, to /dev/null: the transfer alone, the
    floor under anything that brings the study over the wire."""
    jsid = curl_login(a["url"], a["user"], a["password"])
    config = Path(a["dataset"]) / "curl.cfg"
    with open(config, "w") as fh:
        fh.writelines(f'url = "{a["url"]}{folder}/files?format=zip"\noutput = "/dev/null"\n'
                      for folder in a["zips"])
    proc = sh(["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(a.get("jobs", 4)),
               "-b", f"JSESSIONID={jsid}", "-K", str(config), "-w", "%{size_download}\n"])
    config.unlink()
    sizes = [int(n) for n in proc.stdout.split() if n.isdigit()]
    if len(sizes) != len(a["zips"]) or not all(sizes):
        raise WayFailed(f"curl fetched {len(sizes)} of {len(a['zips'])} zips")
    return {"zips": len(sizes), "bytes": sum(sizes)}


def _env(a: dict) -> dict | None:
    """A variant of datalad-fmrif (another checkout) on PYTHONPATH, if given:
    it then also provides the special remote and the DataLad extension."""
    if not a.get("pythonpath"):
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [a["pythonpath"],
                                                      env.get("PYTHONPATH")]))
    return env


def annexed_count(ds: Path) -> int:
    """Files committed as annexed symlinks (after the way's timed part)."""
    out = sh(["git", "ls-files", "-s"], cwd=ds).stdout
    return sum(1 for line in out.splitlines() if line.startswith("120000"))


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


#: the superdataset's commit as `fmrif-download --subdatasets` makes it, in
#: a process of its own (this script does not import datalad-fmrif)
SAVE_SUPERDATASET = """
import sys
from pathlib import Path
import datalad.api as dl
from datalad_fmrif.subdatasets import save_superdataset
root = Path(sys.argv[1])
paths = sorted(p.name for p in root.glob("sub-*") if (p / ".git").exists())
failure = save_superdataset(dl.Dataset(str(root)), paths, [p[4:] for p in paths], {},
                            "benchmark", "register the subdatasets")
sys.exit(failure["message"] if failure else 0)
"""


def sub_commit(a: dict) -> dict:
    """The superdataset's commit of its subdatasets, alone: the commit that
    `fmrif-download --subdatasets` made is undone (the subdatasets stay as
    they are, unregistered) and made again as fmrif-download makes it (its
    `save_superdataset`, in a process of its own: the time includes
    Python's and DataLad's start, about a second)."""
    ds = Path(a["dataset"])
    sh(["git", "reset", "-q", "--hard", "HEAD~1"], cwd=ds)
    t0 = time.monotonic()
    sh([sys.executable, "-c", SAVE_SUPERDATASET, str(ds)], cwd=ds, env=_env(a))
    t1 = time.monotonic()
    out = sh(["git", "ls-files", "-s"], cwd=ds).stdout
    return {"commit_s": round(t1 - t0, 3),
            "subdatasets": sum(1 for line in out.splitlines() if line.startswith("160000"))}


def fmrif_slurm(a: dict) -> dict:
    """`datalad fmrif-download --slurm` on the login node (after `datalad
    fmrif-login --token`), waiting for the job array, then `datalad
    fmrif-finish`: the whole protocol as on Biowulf."""
    ds = a["dataset"]
    sh(["datalad", "fmrif-login", "--server", a["url"], "--token"], env=_env(a))
    t0 = time.monotonic()
    proc = sh(["datalad", "-f", "json", "fmrif-download", "-d", ds, "--server", a["url"],
               "--slurm", "--subjects-per-task", str(a["per_task"]),
               "--max-running", str(a["max_running"]), *a.get("options", []),
               a["subjects"]], cwd=ds, env=_env(a), check=False)
    jobs = [r["job"] for r in _json_lines(proc.stdout) if r.get("job")]
    if not jobs:
        raise WayFailed(f"fmrif-download --slurm failed: {proc.stdout[-800:]} "
                        f"{proc.stderr[-800:]}")
    while sh(["squeue", "-h", "-j", jobs[0]], check=False).stdout.strip():
        time.sleep(0.5)
    t1 = time.monotonic()
    proc = sh(["datalad", "-f", "json", "fmrif-finish", "-d", ds], cwd=ds, env=_env(a),
              check=False)
    t2 = time.monotonic()
    bad = [r for r in _json_lines(proc.stdout) if r.get("status") in ("error", "impossible")]
    if proc.returncode != 0 or bad:
        why = "; ".join(str(r.get("message")) for r in bad[:3]) or proc.stderr.strip()[-1500:]
        raise WayFailed(f"fmrif-finish failed: {why}")
    out = sh(["git", "ls-files", "-s"], cwd=ds).stdout
    return {"array_s": round(t1 - t0, 3), "finish_s": round(t2 - t1, 3), "job": jobs[0],
            "subdatasets": sum(1 for line in out.splitlines() if line.startswith("160000"))}


WAYS = {"limit": limit, "tutorial": tutorial, "datalad-xnat": datalad_xnat,
        "fmrif": fmrif, "get": get, "curl": curl_files, "wire": wire,
        "sub-commit": sub_commit, "fmrif-slurm": fmrif_slurm}


def main() -> int:
    way, args = sys.argv[1], json.loads(sys.argv[2])
    result = {"way": way, "ok": True, "error": None, "detail": {}}
    try:
        result["detail"] = WAYS[way](args)
    except WayFailed as e:
        result.update(ok=False, error=str(e))
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        result.update(ok=False, error=f"{type(e).__name__}: {e}")
    # (ru_maxrss is no use here: a child's counts the memory of the process
    # that forked it; run.py samples the memory of the process tree instead)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = round(children.ru_utime + children.ru_stime + me.ru_utime + me.ru_stime, 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
