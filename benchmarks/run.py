"""Benchmark: getting an XNAT study into a DataLad dataset, side by side.

    make bench                                 # the reference study
    make bench BENCH_ARGS="--size small"       # a quick run
    python benchmarks/run.py --help

Starts the sandbox XNAT (in this process, on 127.0.0.1, 20 ms per request by
default) with a study and measures, interleaved round by round
(A B C ... A B C ...), these ways of getting it into a DataLad dataset:

limit         one zip per session (curl, 4 at a time), unzip, one
              `git annex add`, commit: the irreducible work on this machine
wire          the zip of every scan resource fmrif-download takes (curl, 4
              at a time) to /dev/null: the transfer alone
tutorial      the FMRIF tutorial: xnatpy `subject.download_dir()` per label,
              then `datalad save`
datalad-xnat  `datalad xnat-init` + `datalad xnat-update` (0.2.1, own venv)
fmrif         `datalad fmrif-download` with default options
fmrif-nc      `datalad fmrif-download --no-content`

and the extras: a re-run with nothing new (after every fmrif run), `datalad
get -J 4` of a dropped session against curl with 4 parallel connections,
`--no-content` at 10/100/1,000 subjects, and peak memory at 1x and 10x the
file count.

Each run is a fresh process (benchmarks/ways.py) in a fresh dataset. Recorded
per run: wall time, CPU time of its process tree (getrusage), the requests
the sandbox saw, the peak memory of its process tree (summed PSS of all its
processes, sampled every 100 ms) and of its largest process (RSS, sampled),
and the 1-minute load average when it started. The table is printed and
written, with the machine it ran on, to benchmarks/results/<size>.txt and
<size>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROJECT = "17-M-0181"
EXCLUDED = ("REQUISITION", "SCREEN-SAVE", "SAVE")  # fmrif-download's default
DATALAD_XNAT = "datalad-xnat==0.2.1"

# A scratch HOME before anything reads git or DataLad configuration: the
# credential's properties go to the global git config, and nothing of the
# user's own configuration should change what is measured.
_HOME = Path(tempfile.mkdtemp(prefix="fmrif-bench-home-"))
os.environ["HOME"] = str(_HOME)
for _var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "GIT_CONFIG_GLOBAL"):
    os.environ.pop(_var, None)
(_HOME / ".gitconfig").write_text(
    "[user]\n\tname = FMRIF Bench\n\temail = bench@example.invalid\n"
    "[init]\n\tdefaultBranch = main\n")
# An installed package has its bytecode cached; with PYTHONDONTWRITEBYTECODE
# (set in some environments) every datalad and special-remote process would
# compile the modules it imports, every time. main() compiles them once.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# git-annex, datalad and the special remote come from this virtualenv, the
# floor's special remote (bin/git-annex-remote-fmrif-bench-floor) from here
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(HERE / "bin"),
                                      os.environ.get("PATH", "")])

import psutil

from datalad_fmrif.sandbox import Sandbox, StudySpec
from datalad_fmrif.sandbox.dicom import ByteLRU

# ====================================================================== studies

SIZES = {
    # subjects, sessions per subject, scans per session (the last one is a
    # REQUISITION/SAVE series of one file, left out by default), files per
    # scan, bytes per file
    "small": dict(subjects=2, sessions=1, scans=6, files=20, file_size=100 * 1024),
    "medium": dict(subjects=2, sessions=1, scans=6, files=200, file_size=100 * 1024),
    "reference": dict(subjects=4, sessions=2, scans=6, files=200, file_size=100 * 1024),
    "large": dict(subjects=16, sessions=2, scans=6, files=200, file_size=100 * 1024),
}
# subject counts of the --no-content scale test, and the files per scan of
# the memory test (1x and 10x that, one subject)
SCALE_SUBJECTS = {"small": (10, 50), "medium": (10, 100), "reference": (10, 100, 1000), "large": (10, 100, 1000)}
MEMORY_FILES = {"small": 10, "medium": 20, "reference": 50, "large": 100}


def spec_for(subjects, sessions, scans, files, file_size) -> StudySpec:
    return StudySpec(seed=7, subjects=subjects, sessions_per_subject=(sessions, sessions),
                     scans_per_session=scans, files_per_scan=files, file_size=file_size)


@dataclass
class StudyFacts:
    subjects: list  # sandbox Subject records of the main project
    sessions: list  # {"id", "scans": [scan IDs fmrif-download takes]}
    zips: list  # server paths of the scan resources fmrif-download takes
    files: int  # files fmrif-download takes
    bytes: int


def study_facts(sb: Sandbox) -> StudyFacts:
    """What the study holds. Every file's bytes are generated now and kept
    (the sandbox's own cache is made big enough), so that no way pays for
    the sandbox making up DICOM files."""
    study = sb.study
    subjects = study.subjects(PROJECT)
    every = [f for s in subjects for e in study.sessions(s.id) for f in study.files(e.id)]
    study._content_cache = ByteLRU(int(sum(f.size for f in every) * 1.1) + (64 << 20))
    for f in every:
        f.md5  # noqa: B018 - generates and caches the bytes
    sessions, zips, n, size = [], [], 0, 0
    for s in subjects:
        for e in study.sessions(s.id):
            scans = [sc.id for sc in study.scans(e.id) if sc.type not in EXCLUDED]
            sessions.append({"id": e.id, "scans": scans})
            for sc in scans:
                zips += [f"/data/experiments/{e.id}/scans/{sc}/resources/{r.id}"
                         for r in study.scan_resources(e.id, sc)]
                for f in study.scan_files(e.id, sc):
                    n += 1
                    size += f.size
    return StudyFacts(subjects, sessions, zips, n, size)


# ====================================================================== measuring one run

@dataclass
class Run:
    way: str
    round: int
    ok: bool
    error: str | None
    wall_s: float
    timed_out: bool = False
    cpu_s: float | None = None  # user + system CPU of the process tree
    requests: dict = field(default_factory=dict)
    request_kinds: dict = field(default_factory=dict)  # "GET /data/.../{E}/..." -> count
    tree_mb: float | None = None  # peak of the summed PSS of the process tree
    largest_mb: float | None = None  # peak RSS of its largest process
    largest_process: str | None = None  # its command line (the start of it)
    load1: float | None = None  # 1-minute load average at the start
    detail: dict = field(default_factory=dict)


_IDS = [(re.compile(r"FMRIF_E\d+"), "{E}"), (re.compile(r"FMRIF_S\d+"), "{S}"),
        (re.compile(r"/scans/(?!ALL/)[^/]+"), "/scans/{scan}"),
        (re.compile(r"/resources/[^/]+"), "/resources/{R}"),
        (re.compile(r"/files/[^/]+"), "/files/{name}"),
        (re.compile(r"/subjects/[^/]+"), "/subjects/{label}")]


def classify(records) -> tuple[dict, dict]:
    """Requests by kind, and by pattern (IDs and names replaced).

    auth: login and session set-up; metadata: listings and items;
    file: a single file's content (GET); file-meta: anything else about a
    single file (HEAD, ?format=json): per-file metadata; zip: zip streams.
    """
    kinds = {"total": 0, "auth": 0, "metadata": 0, "file": 0, "file-meta": 0, "zip": 0}
    patterns: Counter = Counter()
    for r in records:
        kinds["total"] += 1
        p = r.path
        single_file = re.search(r"/files/[^/]+$", p) is not None
        if r.query.get("format") == "zip":
            kind = "zip"
        elif single_file:
            kind = "file" if r.method == "GET" and not r.query.get("format") else "file-meta"
        elif (p in ("/", "/data/JSESSION", "/data/auth", "/data/version")
              or p.startswith(("/xapi/", "/data/search/", "/app/", "/data/services/"))):
            kind = "auth"
        else:
            kind = "metadata"
        kinds[kind] += 1
        for rx, repl in _IDS:
            p = rx.sub(repl, p)
        query = "&".join(f"{k}={v}" for k, v in sorted(r.query.items()) if k == "format")
        patterns[f"{r.method} {p}{'?' + query if query else ''}"] += 1
    return kinds, dict(patterns.most_common())


class TreeSampler(threading.Thread):
    """Peak memory of a process and all its descendants, sampled.

    The tree counts each process with its proportional set size (PSS: its
    private pages plus its share of pages shared with others), so that the
    pages of the git-annex binary, shared by every git-annex process, count
    once. Also the peak RSS of the largest single process.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.tree = self.largest = 0
        self.largest_name = None
        self._done = threading.Event()

    def run(self):
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    full = p.memory_full_info()
                except psutil.Error:
                    continue
                total += getattr(full, "pss", full.rss)
                if full.rss > self.largest:
                    self.largest = full.rss
                    try:
                        self.largest_name = " ".join(p.cmdline()[:3])[:80]
                    except psutil.Error:
                        pass
            self.tree = max(self.tree, total)
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self.join()


def run_way(sb: Sandbox, way: str, args: dict, label: str | None = None, round_no: int = 1,
            timeout: float | None = None) -> Run:
    """One run of ``ways.py WAY`` in a process group of its own, measured."""
    label = label or way
    sb.clear_requests()
    load1 = os.getloadavg()[0]
    argv = [sys.executable, str(HERE / "ways.py"), way, json.dumps(args)]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the way and everything it started
        out, err = proc.communicate()
    wall = time.monotonic() - start
    sampler.stop()
    if timed_out:
        res = {"ok": False, "error": f"timed out after {timeout:.0f} s, stopped", "detail": {}}
    else:
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = {"ok": False, "error": f"worker died: {err.strip()[-1500:]}", "detail": {}}
    kinds, patterns = classify(sb.requests)
    run = Run(way=label, round=round_no, ok=res["ok"], error=res["error"], wall_s=round(wall, 3),
              timed_out=timed_out, cpu_s=res.get("cpu_s"), requests=kinds,
              request_kinds=patterns, tree_mb=round(sampler.tree / 2**20, 1),
              largest_mb=round(sampler.largest / 2**20, 1), largest_process=sampler.largest_name,
              load1=round(load1, 2),
              detail=res.get("detail") or {})
    status = "ok" if run.ok else f"FAILED: {run.error}"
    print(f"  {label:<14} round {round_no}: {run.wall_s:8.2f} s  cpu {run.cpu_s or 0:7.1f} s"
          f"  {kinds['total']:>6} requests  load {load1:4.1f}  {status}", flush=True)
    return run


# ====================================================================== set-up

class Bench:
    def __init__(self, opts):
        self.opts = opts
        self.work = Path(opts.workdir or tempfile.mkdtemp(prefix="fmrif-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.counter = 0
        self.credential_names: list[str] = []

    def new_dataset(self, tag: str) -> Path:
        self.counter += 1
        path = self.work / f"{self.counter:03d}-{tag}"
        proc = subprocess.run(["datalad", "create", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"datalad create failed: {proc.stderr.strip()}")
        return path

    def drop_dataset(self, path: Path):
        if not self.opts.keep:
            subprocess.run(["chmod", "-R", "u+w", str(path)], capture_output=True)
            shutil.rmtree(path, ignore_errors=True)

    def inputs(self, sb: Sandbox, facts: StudyFacts, tag: str) -> dict:
        """Subject list with pseudonyms (fmrif), label list and ~/.xnat (tutorial)."""
        d = self.work / f"inputs-{tag}"
        d.mkdir(exist_ok=True)
        rows = ['"Project","Subject","Pseudonym"']
        rows += [f'"{PROJECT}","{s.label}","P{i:04d}"' for i, s in enumerate(facts.subjects, 1)]
        (d / "processing_data.csv").write_bytes("\r\n".join(rows).encode())
        (d / "labels.txt").write_text("".join(s.label + "\n" for s in facts.subjects))
        xnat_file = d / "xnat.yaml"
        xnat_file.write_text(f"username: {sb.user}\npassword: {sb.password}\n")
        xnat_file.chmod(0o600)
        return {"subjects": str(d / "processing_data.csv"), "labels": str(d / "labels.txt"),
                "xnat_file": str(xnat_file)}

    def store_credential(self, sb: Sandbox):
        """The sandbox password in the keyring, as `datalad fmrif-login` stores it."""
        from datalad_fmrif.credentials import CredentialStore, default_credential_name

        name = default_credential_name(sb.url)
        try:
            CredentialStore().set(name, sb.user, sb.password, realm=sb.url)
        except Exception as e:  # noqa: BLE001 - say what is missing
            raise SystemExit(f"benchmark: cannot store the sandbox credential ({e}); run it "
                             "with `make bench`, which provides a private keyring") from e
        self.credential_names.append(name)

    def cleanup(self):
        from datalad_fmrif.credentials import CredentialStore

        for name in self.credential_names:
            try:
                CredentialStore().remove(name)
            except Exception:  # noqa: BLE001 - a scratch keyring; nothing to save
                pass
        if not self.opts.keep:
            subprocess.run(["chmod", "-R", "u+w", str(self.work)], capture_output=True)
            shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(_HOME, ignore_errors=True)

    def xnat_venv(self) -> tuple[Path | None, str | None]:
        """datalad-xnat 0.2.1 in a virtualenv of its own: (venv, None) or (None, why not)."""
        venv = Path(self.opts.xnat_venv)
        if (venv / "bin" / "datalad").exists() and (venv / ".bench-installed").exists():
            return venv, None
        print(f"installing {DATALAD_XNAT} into {venv} ...", flush=True)
        base = getattr(sys, "_base_executable", None) or shutil.which("python3")
        for cmd in ([base, "-m", "venv", "--clear", str(venv)],
                    [str(venv / "bin" / "pip"), "install", "-q", DATALAD_XNAT]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                return None, (f"could not install {DATALAD_XNAT}: "
                              f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        (venv / ".bench-installed").touch()
        return venv, None


# ====================================================================== the experiments

def main_rounds(bench: Bench, sb: Sandbox, facts: StudyFacts, inputs: dict) -> list[Run]:
    """The ways, interleaved, ``--rounds`` times; a re-run after every fmrif
    run (in its dataset); then get against curl in the last fmrif dataset."""
    o = bench.opts
    common = {"url": sb.url, "user": sb.user, "password": sb.password, "project": PROJECT}
    ways = list(o.ways)
    for label in o.variants:
        ways += [f"fmrif@{label}", f"fmrif-nc@{label}"]
    xnat_venv, xnat_problem = bench.xnat_venv() if "datalad-xnat" in ways else (None, None)
    runs: list[Run] = []
    last_fmrif = None
    for rnd in range(1, o.rounds + 1):
        print(f"round {rnd} of {o.rounds}", flush=True)
        for way in ways:
            if rnd > 1 and way in o.once:
                continue
            if way == "datalad-xnat" and xnat_problem:
                print(f"  datalad-xnat cannot run: {xnat_problem}", flush=True)
                runs.append(Run(way, rnd, False, xnat_problem, 0.0))
                continue
            ds = bench.new_dataset(way)
            kind, _, variant = way.partition("@")
            args = dict(common, dataset=str(ds))
            timeout = None
            if kind == "limit":
                args.update(sessions=facts.sessions, jobs=o.jobs)
            elif kind == "wire":
                args.update(zips=facts.zips, jobs=o.jobs)
            elif kind == "tutorial":
                args.update(labels=inputs["labels"], xnat_file=inputs["xnat_file"])
            elif kind == "datalad-xnat":
                args.update(venv=str(xnat_venv))
                timeout = o.xnat_timeout or None
            else:  # fmrif, fmrif-nc
                args.update(subjects=inputs["subjects"], pythonpath=o.variants.get(variant),
                            options=["--no-content"] if kind == "fmrif-nc" else [])
            runs.append(run_way(sb, kind.replace("fmrif-nc", "fmrif"), args, label=way,
                                round_no=rnd, timeout=timeout))
            if kind == "fmrif" and runs[-1].ok:
                if "rerun" in o.extras:
                    runs.append(run_way(sb, "fmrif", args, label=f"{way}-rerun", round_no=rnd))
                if not variant:
                    if last_fmrif:
                        bench.drop_dataset(last_fmrif)
                    last_fmrif = ds
                    continue  # kept for get-vs-curl
            bench.drop_dataset(ds)
    if "get" in o.extras and last_fmrif:
        runs += get_vs_curl(bench, sb, last_fmrif, facts, common)
    if last_fmrif:
        bench.drop_dataset(last_fmrif)
    return runs


def get_vs_curl(bench: Bench, sb: Sandbox, ds: Path, facts: StudyFacts,
                common: dict) -> list[Run]:
    """`datalad get -J N` of one dropped session (through the fmrif special
    remote) against the same files by curl with N connections, and through
    the floor remote (bin/git-annex-remote-fmrif-bench-floor, which copies
    each file from a local directory: what git-annex and DataLad spend per
    file through any external special remote), interleaved."""
    o = bench.opts
    print("get -J4 of one dropped session / curl, 4 connections / the floor remote",
          flush=True)
    first = facts.sessions[0]
    target = "sub-P0001/ses-01"
    paths = [f"/data/experiments/{f.session_id}/scans/{f.scan_id}/resources/"
             f"{f.resource_id}/files/{f.name}"
             for sc in first["scans"] for f in sb.study.scan_files(first["id"], sc)]
    floor = setup_floor(ds, target, bench.work / "floor-store")
    runs = []
    for rnd in range(1, o.rounds + 1):
        for label, source in (("get-session", "fmrif"), ("get-floor", floor)):
            subprocess.run(["datalad", "drop", target], cwd=ds, check=True,
                           capture_output=True)
            runs.append(run_way(sb, "get", dict(common, dataset=str(ds), path=target,
                                                jobs=o.jobs, source=source),
                                label=label, round_no=rnd))
        out = bench.work / f"curl-{rnd}"
        runs.append(run_way(sb, "curl", dict(common, out=str(out), paths=paths, jobs=o.jobs),
                            label="curl-session", round_no=rnd))
        shutil.rmtree(out, ignore_errors=True)
    return runs


def setup_floor(ds: Path, target: str, store: Path) -> str:
    """The floor remote in ``ds``, holding a copy of the content of ``target``."""
    store.mkdir(parents=True, exist_ok=True)
    listing = subprocess.run(["git", "annex", "find", "--format=${key} ${file}\n", target],
                             cwd=ds, check=True, capture_output=True, text=True).stdout
    keys = []
    for line in listing.splitlines():
        key, file = line.split(" ", 1)
        shutil.copyfile(ds / file, store / key)  # through the annex symlink
        keys.append(key)
    name = "bench-floor"
    subprocess.run(["git", "annex", "initremote", name, "type=external",
                    "externaltype=fmrif-bench-floor", "encryption=none", "autoenable=false",
                    f"directory={store}"], cwd=ds, check=True, capture_output=True)
    uuid = subprocess.run(["git", "config", f"remote.{name}.annex-uuid"], cwd=ds, check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "annex", "setpresentkey", "--batch"], cwd=ds, check=True,
                   capture_output=True, text=True,
                   input="".join(f"{key} {uuid} 1\n" for key in keys))
    return name


def scale(bench: Bench, subdatasets: bool = False) -> list[Run]:
    """--no-content for 10, 100, 1,000 subjects: one session of 6 scans with
    one 4 KiB file each (5 taken), so that the time per subject is about
    subjects and sessions (listings, planning, registration), not files.
    Subject counts above 100 run once. With ``subdatasets`` (`sub-scale-N`):
    each subject in a subdataset of its own, once per count, and then the
    superdataset's commit of all of them alone (`sub-commit-N`)."""
    o = bench.opts
    tag = "sub-scale" if subdatasets else "scale"
    options = ["--subdatasets", "--no-content"] if subdatasets else ["--no-content"]
    runs = []
    for n in o.scale:
        with Sandbox(spec_for(n, 1, 6, 1, 4096), latency=o.latency) as sb:
            bench.store_credential(sb)
            facts = study_facts(sb)
            inputs = bench.inputs(sb, facts, f"{tag}{n}")
            rounds = 1 if subdatasets or n > 100 else o.rounds
            for rnd in range(1, rounds + 1):
                ds = bench.new_dataset(f"{tag}{n}")
                args = {"url": sb.url, "dataset": str(ds), "subjects": inputs["subjects"],
                        "options": options}
                run = run_way(sb, "fmrif", args, label=f"{tag}-{n}", round_no=rnd)
                run.detail.update(subjects=n, sessions=len(facts.sessions))
                runs.append(run)
                if subdatasets and run.ok:
                    runs.append(run_way(sb, "sub-commit", {"dataset": str(ds)},
                                        label=f"sub-commit-{n}"))
                bench.drop_dataset(ds)
    return runs


def slurm(bench: Bench) -> list[Run]:
    """A whole protocol of N subjects (one session of 6 scans x 5 files of
    4 KiB each) with content: one process (`sub-single-N`: fmrif-download
    --subdatasets) against a Slurm job array on a one-node cluster of this
    machine (`slurm-N`: tasks of 10 subjects, --max-running of the CPUs,
    then fmrif-finish). Needs root and Debian's slurm-wlm and munge
    (tools/ensure-slurm); skipped with the reason otherwise."""
    sys.path.insert(0, str(REPO / "tests"))
    from slurm_cluster import one_node_cluster, unavailable

    why = unavailable()
    if why:
        print(f"slurm: skipped: {why}", flush=True)
        return []
    o = bench.opts
    runs = []
    n = o.slurm_subjects
    with one_node_cluster(), Sandbox(spec_for(n, 1, 6, 5, 4096), latency=o.latency) as sb:
        bench.store_credential(sb)
        facts = study_facts(sb)
        inputs = bench.inputs(sb, facts, f"slurm{n}")
        for way, label, extra in (
                ("fmrif", f"sub-single-{n}", {"options": ["--subdatasets"]}),
                ("fmrif-slurm", f"slurm-{n}",
                 {"per_task": 10, "max_running": os.cpu_count() or 1})):
            ds = bench.new_dataset(label)
            args = {"url": sb.url, "dataset": str(ds), "subjects": inputs["subjects"],
                    **extra}
            run = run_way(sb, way, args, label=label)
            run.detail.update(subjects=n)
            runs.append(run)
            bench.drop_dataset(ds)
    return runs


def memory(bench: Bench) -> list[Run]:
    """fmrif-download, default options, at 1x and 10x the files: one
    subject, 2 sessions of 6 scans, N and 10 N files of 4 KiB per scan."""
    o = bench.opts
    runs = []
    for factor in (1, 10):
        files = MEMORY_FILES[o.size] * factor
        with Sandbox(spec_for(1, 2, 6, files, 4096), latency=o.latency) as sb:
            bench.store_credential(sb)
            facts = study_facts(sb)
            inputs = bench.inputs(sb, facts, f"mem{factor}")
            ds = bench.new_dataset(f"mem{factor}")
            args = {"url": sb.url, "dataset": str(ds), "subjects": inputs["subjects"]}
            runs.append(run_way(sb, "fmrif", args, label=f"memory-{factor}x"))
            bench.drop_dataset(ds)
    return runs


# ====================================================================== report

def machine() -> dict:
    cpu, mem = platform.processor() or "", None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        mem = next(round(int(line.split()[1]) / 2**20, 1) for line in
                   Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    annex = subprocess.run(["git", "annex", "version", "--raw"], capture_output=True, text=True)
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": mem,
            "os": platform.platform(), "python": platform.python_version(),
            "git_annex": annex.stdout.strip()}


def package_state() -> str:
    """Which datalad-fmrif the fmrif ways run: the commit, whether the
    package has uncommitted changes (the venv is an editable install), and a
    digest of its files, so that a change during the run shows."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "datalad_fmrif")
    digest = hashlib.sha1()
    for f in sorted((REPO / "datalad_fmrif").rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return (commit + (" + uncommitted changes in datalad_fmrif/" if dirty else "")
            + f" (files {digest.hexdigest()[:10]})")


def summarize(runs: list[Run]) -> dict:
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.way, []).append(r)
    out = {}
    for way, rs in by.items():
        good = [r for r in rs if r.ok]
        if not good:
            s = {"ok": False, "error": rs[0].error, "runs": len(rs)}
            if all(r.timed_out for r in rs):  # a lower bound, with what it got done
                s.update(timed_out_s=min(r.wall_s for r in rs), requests=rs[0].requests,
                         tree_mb=rs[0].tree_mb, largest_mb=rs[0].largest_mb,
                         cpu_s=rs[0].cpu_s)
            out[way] = s
            continue
        median_run = sorted(good, key=lambda r: r.wall_s)[(len(good) - 1) // 2]
        out[way] = {
            "ok": True, "runs": len(good), "failed_runs": len(rs) - len(good),
            "median_s": round(statistics.median(r.wall_s for r in good), 3),
            "min_s": min(r.wall_s for r in good), "max_s": max(r.wall_s for r in good),
            "cpu_s": round(statistics.median(r.cpu_s or 0 for r in good), 2),
            "requests": median_run.requests,  # the same in every round
            "tree_mb": max(r.tree_mb or 0 for r in good),
            "largest_mb": max(r.largest_mb or 0 for r in good),
            "detail": median_run.detail,
        }
    return out


# ways measured on the main study, for which a ratio to the limit means something
def _main_study(way: str) -> bool:
    return way.split("@")[0].removesuffix("-rerun") in (
        "limit", "wire", "tutorial", "datalad-xnat", "fmrif", "fmrif-nc")


def shown(value: float, limit: float) -> float:
    """*value* to 2 decimals, or to 3 where 2 would hide on which side of
    *limit* it is (0.103 is not "0.1 NOT MET" against 0.10)."""
    short = round(value, 2)
    return short if (short <= limit) == (value <= limit) else round(value, 3)


def targets(summary: dict, opts) -> list[dict]:
    """The targets of issue 7, each with the measured value and a verdict."""
    t = []

    def add(name, value, goal, ok):  # ok None: the measurement cannot tell
        t.append({"target": name, "measured": value, "goal": goal,
                  "met": None if ok is None else bool(ok)})

    def med(way):
        s = summary.get(way) or {}
        return s.get("median_s")

    lim = med("limit")
    for suffix in [""] + [f"@{v}" for v in opts.variants]:
        fmrif, nc = f"fmrif{suffix}", f"fmrif-nc{suffix}"
        fm, ncm = med(fmrif), med(nc)
        if lim and fm:
            add(f"{fmrif} / limit", shown(fm / lim, 1.25), "<= 1.25", fm / lim <= 1.25)
        for other in ("tutorial", "datalad-xnat"):
            s = summary.get(other) or {}
            if fm and s.get("median_s"):
                add(f"{fmrif} / {other}", shown(fm / s["median_s"], 0.8), "<= 0.8",
                    fm / s["median_s"] <= 0.8)
            elif fm and s.get("timed_out_s"):  # the other way took longer than this
                r = fm / s["timed_out_s"]
                add(f"{fmrif} / {other} (stopped at {s['timed_out_s']:.0f} s)",
                    f"< {r:.2f}", "<= 0.8", True if r <= 0.8 else None)
        if lim and ncm:
            add(f"{nc} / limit", shown(ncm / lim, 0.10), "<= 0.10", ncm / lim <= 0.10)
        if summary.get(nc, {}).get("ok"):
            q = summary[nc]["requests"]
            add(f"{nc}: file requests (file + zip)", q["file"] + q["zip"], "0",
                q["file"] + q["zip"] == 0)
        if summary.get(fmrif, {}).get("ok"):
            q = summary[fmrif]["requests"]
            n = opts.n_subjects + opts.n_sessions
            add(f"{fmrif}: metadata requests ({opts.n_subjects} subjects + "
                f"{opts.n_sessions} sessions)", q["metadata"], f"O(S + E): <= 1 + 2 x {n}",
                q["metadata"] <= 1 + 2 * n)
            add(f"{fmrif}: per-file metadata requests", q["file-meta"], "0",
                q["file-meta"] == 0)
            mb = summary[fmrif]["tree_mb"]
            add(f"{fmrif}: peak memory of the process tree, MB", mb, "< 300", mb < 300)
        rerun = med(f"{fmrif}-rerun")
        if fm and rerun:
            q = summary[f"{fmrif}-rerun"]["requests"]
            add(f"{fmrif}-rerun / {fmrif}", shown(rerun / fm, 0.05), "<= 0.05 (issue 18)",
                rerun / fm <= 0.05)
            add(f"{fmrif}-rerun: file requests (file + zip)", q["file"] + q["zip"], "0",
                q["file"] + q["zip"] == 0)
    if med("get-session") and med("curl-session"):
        r = med("get-session") / med("curl-session")
        add("get-session / curl-session", shown(r, 1.0), "<= 1.0", r <= 1.0)
        if med("get-floor"):
            add("  (get-floor / curl-session: the floor itself)",
                round(med("get-floor") / med("curl-session"), 2), "-", None)
            f = med("get-session") / med("get-floor")
            add("get-session / get-floor (the least any external special remote takes)",
                shown(f, 1.2), "<= 1.2", f <= 1.2)
    if med("wire") and med("fmrif"):  # not a target: how far above the transfer alone
        w = med("fmrif") / med("wire")
        add("  (fmrif / wire: fmrif-download against the transfer alone)", round(w, 2),
            "-", None)
    for prefix in ("scale-", "sub-scale-"):
        per = {int(k[len(prefix):]): v["median_s"] / int(k[len(prefix):])
               for k, v in summary.items() if k.startswith(prefix) and v.get("ok")}
        if len(per) >= 2:
            lo, hi = min(per), max(per)
            add(f"{prefix.rstrip('-')}: time per subject at {hi} / at {lo} subjects",
                shown(per[hi] / per[lo], 1.5), "<= 1.5", per[hi] / per[lo] <= 1.5)
    commits = {int(k[11:]): v for k, v in summary.items()
               if k.startswith("sub-commit-") and v.get("ok")}
    if commits:
        n = max(commits)
        took = commits[n]["detail"]["commit_s"]
        add(f"superdataset commit of {n} subdatasets, s", round(took, 2), "<= 10",
            took <= 10)
    single = {k[11:]: v for k, v in summary.items() if k.startswith("sub-single-") and v.get("ok")}
    for n, one in single.items():
        arr = summary.get(f"slurm-{n}") or {}
        if arr.get("ok"):  # not a target: one node of 2 CPUs shows the overhead
            add(f"  (slurm-{n} / sub-single-{n}: job array on this one node)",
                shown(arr["median_s"] / one["median_s"], 1.0), "-", None)
    m1, m10 = summary.get("memory-1x") or {}, summary.get("memory-10x") or {}
    if m1.get("ok") and m10.get("ok"):
        a, b = m1["tree_mb"], m10["tree_mb"]
        add(f"memory: peak at 10x / 1x files ({b:.0f} / {a:.0f} MB)", shown(b / a, 1.5),
            "flat (<= 1.5) and < 300 MB", b / a <= 1.5 and b < 300)
        q1, q10 = m1["requests"], m10["requests"]
        add("memory: metadata requests at 10x - 1x files (per-file metadata)",
            q10["metadata"] + q10["file-meta"] - q1["metadata"] - q1["file-meta"], "0",
            q10["metadata"] + q10["file-meta"] == q1["metadata"] + q1["file-meta"])
    return t


def table(summary: dict, tgts: list[dict], meta: dict) -> str:
    m, st = meta["machine"], meta["study"]
    lines = [
        f"{meta['size']} study: {st['subjects']} subjects, {st['sessions']} sessions, "
        f"{st['files']} files ({st['bytes'] / 1e6:.0f} MB) taken by fmrif-download; sandbox "
        f"latency {meta['latency'] * 1000:.0f} ms/request; medians of {meta['rounds']} "
        f"interleaved rounds",
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB RAM, {m['os']}, "
        f"Python {m['python']}, git-annex {m['git_annex']}",
        f"load average (1 min): {meta['load_start']:.2f} at start, {meta['load_end']:.2f} at end, "
        f"{meta['load_min']:.2f}-{meta['load_max']:.2f} at the starts of runs; "
        f"{meta['duration_s'] / 60:.0f} min in all",
        f"datalad-fmrif: {meta['package']}" + (  # [-18:]: the digest of its files
            "" if meta["package"][-18:] == meta["package_at_start"][-18:] else
            f"; its files CHANGED DURING THE RUN, at its start: {meta['package_at_start']}"),
        "",
    ]
    head = (f"{'way':<17} {'median s':>9} {'x limit':>7} {'CPU s':>6} {'runs':>4} {'files':>6} "
            f"{'requests':>8} {'meta':>5} {'file':>5} {'f-meta':>6} {'zip':>4} {'auth':>4} "
            f"{'tree MB':>7} {'max MB':>6}")
    lines += [head, "-" * len(head)]
    lim = (summary.get("limit") or {}).get("median_s")
    for way, s in summary.items():
        if not s.get("ok") and not s.get("timed_out_s"):
            lines.append(f"{way:<17} FAILED: {s.get('error')}")
            continue
        q = s["requests"]
        secs = s.get("median_s") or s["timed_out_s"]
        shown = f"{secs:.2f}" if s.get("ok") else f"> {secs:.0f}"
        ratio = "-"
        if lim and _main_study(way):
            ratio = f"{secs / lim:.2f}" if s.get("ok") else f"> {secs / lim:.1f}"
        files = (s.get("detail") or {}).get("files", "-")
        cpu = "-" if s.get("cpu_s") is None else f"{s['cpu_s']:.1f}"
        lines.append(
            f"{way:<17} {shown:>9} {ratio:>7} {cpu:>6} {s['runs']:>4} "
            f"{files!s:>6} {q['total']:>8} {q['metadata']:>5} {q['file']:>5} "
            f"{q['file-meta']:>6} {q['zip']:>4} {q['auth']:>4} {s['tree_mb'] or 0:>7.0f} "
            f"{s['largest_mb'] or 0:>6.0f}")
        if not s.get("ok"):
            lines.append(f"{'':<17} ({s['error']}; requests and memory up to then)")
    lines += ["", "targets (issues 7, 17 and 18):"]
    for t in tgts:
        verdict = {True: "met", False: "NOT MET", None: "unknown"}[t["met"]]
        lines.append(f"  {t['target']:<66} {t['measured']!s:>7}  goal {t['goal']:<28} "
                     f"{verdict}")
    return "\n".join(lines)


# ====================================================================== main

def parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="reference")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--once", default="datalad-xnat",
                   help="comma-separated ways that run in the first round only "
                        "(default: datalad-xnat, which takes minutes)")
    p.add_argument("--xnat-timeout", type=float, default=300,
                   help="stop a datalad-xnat run after this many seconds and report it as "
                        "a lower bound (default 300; 0: no limit)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per request (0.02)")
    p.add_argument("--jobs", type=int, default=4, help="parallel streams of limit, get and curl")
    p.add_argument("--ways", default="limit,wire,tutorial,datalad-xnat,fmrif,fmrif-nc",
                   help="comma-separated subset of the ways")
    p.add_argument("--extras", default="rerun,get,scale,memory,subdatasets,slurm",
                   help="comma-separated: rerun,get,scale,memory,subdatasets,slurm "
                        "(or 'none')")
    p.add_argument("--slurm-subjects", type=int, default=None,
                   help="subjects of the slurm test (default 100; small: 10)")
    p.add_argument("--scale", default=None,
                   help="subject counts of the scale test (default: 10,100,1000; small: 10,50)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR",
                   help="also run fmrif and fmrif-nc with the datalad_fmrif package found in "
                        "DIR (put first on PYTHONPATH; e.g. a `git worktree` of another "
                        "commit), as ways fmrif@LABEL and fmrif-nc@LABEL")
    p.add_argument("--xnat-venv", default=os.path.join(tempfile.gettempdir(),
                                                       "datalad-fmrif-bench", "datalad-xnat-0.2.1"),
                   help="where datalad-xnat gets its own virtualenv")
    p.add_argument("--workdir", help="scratch directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep datasets and the workdir")
    p.add_argument("--out", default=str(HERE / "results"), help="where the JSON and table go")
    opts = p.parse_args(argv)
    opts.ways = [w for w in opts.ways.split(",") if w]
    opts.once = [w for w in opts.once.split(",") if w]
    opts.extras = [] if opts.extras == "none" else [e for e in opts.extras.split(",") if e]
    opts.scale = ([int(n) for n in opts.scale.split(",")] if opts.scale
                  else list(SCALE_SUBJECTS[opts.size]))
    if opts.slurm_subjects is None:
        opts.slurm_subjects = 10 if opts.size == "small" else 100
    opts.variants = {}
    for v in opts.variant:
        label, _, path = v.partition("=")
        if not (Path(path) / "datalad_fmrif" / "__init__.py").is_file():
            p.error(f"--variant {v}: no datalad_fmrif package in {path!r}")
        opts.variants[label] = str(Path(path).resolve())
    return opts


def main(argv=None) -> int:
    opts = parse(argv)
    missing = [t for t in ("curl", "unzip", "git", "git-annex", "datalad") if not shutil.which(t)]
    if missing:
        print(f"benchmark: needs {', '.join(missing)} on PATH", file=sys.stderr)
        return 2
    import compileall
    for d in [REPO / "datalad_fmrif", *(Path(v) / "datalad_fmrif" for v in opts.variants.values())]:
        compileall.compile_dir(str(d), quiet=1)
    bench = Bench(opts)
    size = SIZES[opts.size]
    started, load_start, package_at_start = time.time(), os.getloadavg()[0], package_state()
    try:
        with Sandbox(spec_for(**size), latency=opts.latency) as sb:
            bench.store_credential(sb)
            print(f"sandbox at {sb.url}; generating the {opts.size} study ...", flush=True)
            facts = study_facts(sb)
            opts.n_subjects, opts.n_sessions = len(facts.subjects), len(facts.sessions)
            inputs = bench.inputs(sb, facts, "main")
            print(f"{facts.files} files, {facts.bytes / 1e6:.0f} MB in "
                  f"{len(facts.sessions)} sessions of {len(facts.subjects)} subjects", flush=True)
            runs = main_rounds(bench, sb, facts, inputs)
        if "scale" in opts.extras:
            print("scale: --no-content at " + ", ".join(map(str, opts.scale)) + " subjects",
                  flush=True)
            runs += scale(bench)
        if "memory" in opts.extras:
            print("memory: default options at 1x and 10x the files (4 KiB each)", flush=True)
            runs += memory(bench)
        if "subdatasets" in opts.extras:
            print("subdatasets: --subdatasets --no-content at "
                  + ", ".join(map(str, opts.scale)) + " subjects", flush=True)
            runs += scale(bench, subdatasets=True)
        if "slurm" in opts.extras:
            print(f"slurm: {opts.slurm_subjects} subjects, one process against a job "
                  "array on a one-node cluster", flush=True)
            runs += slurm(bench)
    finally:
        bench.cleanup()
    summary = summarize(runs)
    tgts = targets(summary, opts)
    loads = [r.load1 for r in runs if r.load1 is not None]
    meta = {
        "size": opts.size, "latency": opts.latency, "rounds": opts.rounds, "jobs": opts.jobs,
        "study": {"files": facts.files, "bytes": facts.bytes, "subjects": len(facts.subjects),
                  "sessions": len(facts.sessions), "spec": size},
        "machine": machine(), "package": package_state(), "package_at_start": package_at_start,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "load_start": load_start, "load_end": os.getloadavg()[0],
        "load_min": min(loads, default=0.0), "load_max": max(loads, default=0.0),
        "command": "benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    text = table(summary, tgts, meta)
    print()
    print(text)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summary, "targets": tgts, "runs": [asdict(r) for r in runs]}
    (out / f"{opts.size}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"{opts.size}.txt").write_text(text + "\n")
    print(f"\nwritten: {out / (opts.size + '.txt')} and .json")
    return 0 if all(r.ok or r.timed_out for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
