"""A whole protocol: one DataLad subdataset per subject.

One dataset slows down past ~100k files (the DataLad handbook's "going
big"); a protocol of thousands of subjects of ~10,000 DICOMs each holds
tens of millions. So each subject goes in a subdataset of its own,
``sub-<name>/`` (named by its pseudonym), registered in the superdataset,
and each subdataset is what ``fmrif-download`` makes of one dataset: its own
``fmrif`` special remote, session manifests and run record. The
superdataset holds no file of XNAT's, only the subdatasets, and records in
ONE commit per run which subjects changed (by their names in the dataset,
never by label).

This module composes :class:`.pipeline.Download` (one run per subject, in
that subject's subdataset) and does not change its inside. The layout is
recorded in the superdataset's ``.datalad/config``
(``datalad.fmrif.layout = subdatasets``), so that a later run in the other
layout is refused instead of mixing both.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Mapping

from . import __version__
from .annex import Annex, AnnexError
from .pipeline import (
    ACTION,
    Download,
    DownloadOptions,
    commits_plainly,
    list_projects,
    now_iso,
)
from .plan import PlanError, sanitize_label
from .provenance import MANIFEST_DIR, run_record, run_record_message, subjects_digest
from .subjects import SubjectList, SubjectRequest

lgr = logging.getLogger("datalad.fmrif.subdatasets")

LAYOUT_KEY = "datalad.fmrif.layout"
SUBDATASETS = "subdatasets"
#: what the path template of the superdataset must start with: the
#: subdataset of the subject; the rest is the template inside it
SUBJECT_FOLDER = "sub-{subject}/"


class LayoutError(ValueError):
    """The dataset is in the other layout, or the template does not fit."""


def inner_template(template: str) -> str:
    """The path template inside a subject's subdataset: the template without
    its leading ``sub-{subject}/``, which is the subdataset itself (so paths
    stay what researchers expect: ``sub-P01/ses-01/...`` from the top)."""
    if not template.startswith(SUBJECT_FOLDER) or len(template) == len(SUBJECT_FOLDER):
        raise LayoutError(
            f"with --subdatasets the path template must start with "
            f"'{SUBJECT_FOLDER}' (the subject's subdataset) and go on inside "
            f"it; {template!r} does not")
    return template[len(SUBJECT_FOLDER):]


def is_subdatasets_layout(ds) -> bool:
    return ds.config.get(LAYOUT_KEY, None) == SUBDATASETS


def check_layout(ds, subdatasets: bool) -> None:
    """Refuse to switch layouts on a dataset that already has one."""
    root = Path(ds.path)
    has_sessions = any((root / MANIFEST_DIR).glob("*.json"))
    if subdatasets and has_sessions:
        raise LayoutError(
            f"{root} already holds downloaded sessions in one dataset; "
            "--subdatasets would mix both layouts. Run without "
            "--subdatasets here, or download into a new dataset")
    if not subdatasets and is_subdatasets_layout(ds):
        raise LayoutError(
            f"{root} keeps each subject in a subdataset of its own "
            f"({LAYOUT_KEY} = {SUBDATASETS}); add --subdatasets, or download "
            "into a subject's subdataset (-d sub-NAME) without it")


def subject_name(req: SubjectRequest) -> str:
    """The subject's name in the dataset, as :class:`.Download` gives it."""
    return req.pseudonym if req.pseudonym else sanitize_label(req.label)


def subject_path(req: SubjectRequest) -> str:
    return f"sub-{subject_name(req)}"


def has_sessions(path: Path) -> bool:
    """Does the subject's dataset hold a downloaded session (committed)?"""
    out = subprocess.run(["git", "ls-tree", "-d", "HEAD", MANIFEST_DIR], cwd=path,
                         capture_output=True, text=True)
    return bool(out.stdout.strip())


def one_subject(subjects: SubjectList, req: SubjectRequest) -> SubjectList:
    """The list of one subject; the run record keeps the whole list's digest."""
    return SubjectList(requests=(req,), notes=(), sha256=subjects.sha256)


def head(path: Path) -> str | None:
    out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=path,
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def subject_dataset(path: Path):
    """The subject's dataset at ``path``, created (not registered: the
    superdataset's one commit does that) if it is not there yet."""
    from datalad.distribution.dataset import Dataset

    from datalad.utils import rmtree

    if path.is_dir() and head(path) is None and {
            p.name for p in path.iterdir()} <= {".git", ".datalad", ".gitattributes"}:
        # half made by a run killed while creating it: nothing of it is saved
        rmtree(str(path))
    sub = Dataset(str(path))
    if not sub.is_installed() and not create_plainly(path):
        sub.create(result_renderer="disabled", return_type="list")
    return sub


def create_plainly(path: Path) -> bool:
    """Make at ``path`` the dataset ``datalad create`` makes, with a few
    plain git and git-annex commands; False, with nothing made, where that
    would not be the same (``datalad create`` then does it, or says why not).

    ``datalad create`` was the largest single cost of a subject with
    ``--no-content`` (about 0.35 s on an idle machine, some 40 git and
    git-annex processes, most of them DataLad finding out the state of a
    repository it has just made), paid once per subject of a protocol.
    What it makes is git-annex initialised, ``.gitattributes`` (DataLad's backend, no
    annexing of ``.git*``), ``.datalad/.gitattributes`` (no annexing of its
    config) and ``.datalad/config`` (the dataset's ID), in one commit
    "[DATALAD] new dataset": this does the same with ``git init``, ``git
    annex init``, ``git add`` and ``git commit``, where annexed files are
    plain symlinks (no adjusted branch, no crippled file system: git-annex
    decides that at init) and DataLad is asked for nothing more (no fake
    dates, no repository version of its own, no global attributes).
    """
    import uuid

    from datalad import cfg
    from datalad.utils import rmtree

    if cfg.getbool("datalad", "fake-dates", default=False) or \
            cfg.get("datalad.repo.version") is not None or \
            (path.exists() and any(path.iterdir())):  # datalad create refuses it
        return False

    def git(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True)

    path.mkdir(parents=True, exist_ok=True)
    if git("init", "-q").returncode or git(
            "annex", "init", "-q", "-c", "annex.dotfiles=true").returncode:
        rmtree(str(path))
        return False
    # attributes of the user's (DataLad then writes none of its own)
    given = git("check-attr", "annex.backend", "annex.largefiles", "--",
                ".", ".git", ".datalad/config").stdout.splitlines()
    if any(not line.endswith(": unspecified") for line in given) or \
            not Annex(path).plain_links():  # git-annex chose another mode
        rmtree(str(path))
        return False
    (path / ".gitattributes").write_text(
        f"* annex.backend={cfg.obtain('datalad.repo.backend')}\n"
        "**/.git* annex.largefiles=nothing\n", encoding="utf-8")
    (path / ".datalad").mkdir()
    (path / ".datalad" / ".gitattributes").write_text(
        "config annex.largefiles=nothing\n", encoding="utf-8")
    (path / ".datalad" / "config").write_text(
        f'[datalad "dataset"]\n\tid = {uuid.uuid4()}\n', encoding="utf-8")
    files = [".gitattributes", ".datalad/.gitattributes", ".datalad/config"]
    # all three go to git as they are: neither git-annex's filter nor its
    # pre-commit hook has anything to do (each would start git-annex)
    no_filter = [f"filter.annex.{step}=" for step in ("process", "clean", "smudge")]
    return not (git(*(c for opt in no_filter for c in ("-c", opt)), "add", "--",
                    *files).returncode
                or git("commit", "-q", "--no-verify", "-m",
                       "[DATALAD] new dataset").returncode)


def fill_subject(sub, subjects: SubjectList, req: SubjectRequest,
                 options: DownloadOptions, xnat, projects: Mapping) -> Iterator[dict]:
    """Download one subject into its own dataset ``sub``: a plain
    :class:`.Download` with the path template inside the subdataset.
    ``projects`` (:func:`.pipeline.list_projects`) is listed once for all
    the subjects of a run: a project's listing grows with its subjects, and
    listing it again per subject would make a protocol quadratic."""
    inner = replace(options, plan=replace(options.plan,
                                          template=inner_template(options.plan.template)))
    yield from Download(sub, one_subject(subjects, req), inner, xnat, projects).run()


def registered_subdatasets(root: Path) -> dict[str, str]:
    """Path -> commit of each subdataset the superdataset's index registers:
    read once per run (once per subject, the index of a protocol would be
    read thousands of times)."""
    out = subprocess.run(["git", "ls-files", "--stage", "-z"], cwd=root,
                         capture_output=True, text=True, encoding="utf-8",
                         errors="surrogateescape").stdout
    registered = {}
    for entry in out.split("\0"):
        if entry.startswith("160000 "):
            info, _, path = entry.partition("\t")
            registered[path] = info.split()[1]
    return registered


def record_layout(ds) -> bool:
    """Write the layout into ``.datalad/config``; True if that changed it."""
    if is_subdatasets_layout(ds):
        return False
    ds.config.set(LAYOUT_KEY, SUBDATASETS, scope="branch", reload=True)
    return True


def save_superdataset(ds, paths: list[str], names: list[str], extra: dict,
                      command: str, message: str | None) -> dict | None:
    """ONE commit of the superdataset: the subdatasets that changed (new
    ones registered), with a run record naming them by their names in the
    dataset. Nothing changed: no commit. Returns a failure result or None."""
    if not paths:
        return None
    record = run_record(command, ds.id or "", dict(extra, subjects=sorted(names),
                                                   datalad_fmrif_version=__version__,
                                                   layout=SUBDATASETS))
    text = message or (f"Download {len(names)} subjects into their subdatasets: "
                       + ", ".join(f"sub-{n}" for n in sorted(names)[:10])
                       + (", ..." if len(names) > 10 else ""))
    text = run_record_message(text, record)
    root = Path(ds.path)
    annex = Annex(root)
    subdatasets = [p for p in paths if (root / p / ".git").exists()]
    if commits_plainly(ds, annex) and all(_registers_plainly(root / p) for p in subdatasets):
        try:
            annex.commit(paths + register_subdatasets(root, subdatasets), text)
        except AnnexError as e:
            bad = [str(e)]
        else:
            return None
    else:
        res = ds.save(path=paths, message=text, result_renderer="disabled",
                      return_type="list", on_failure="ignore")
        bad = [str(r.get("message")) for r in res if r.get("status") not in ("ok", "notneeded")]
    if bad:
        return {"action": ACTION, "status": "error", "type": "dataset",
                "path": ds.path, "refds": ds.path,
                "message": "saving the superdataset failed: " + "; ".join(bad)}
    return None


def register_subdatasets(root: Path, paths: list[str]) -> list[str]:
    """What ``datalad save`` writes to register new subdatasets, for
    :meth:`.Annex.commit` to commit with them (git's ``update-index`` records
    each one's HEAD as a gitlink): their sections of ``.gitmodules`` (path,
    URL ``./PATH``, ``datalad-id``) and of ``.git/config`` (active, URL).
    Returns ``[".gitmodules"]`` if it wrote any, else nothing.

    ``datalad save`` of N new subdatasets costs a few git processes per
    subdataset (measured on a loaded 2-CPU machine: 6.4 s for 250, so half
    a minute for a protocol of 1,000 subjects); this is one ``git config``
    and one ``git rev-parse`` for all, and no process per subdataset. Subdatasets DataLad would record
    otherwise (:func:`_registers_plainly`) are left to ``datalad save``.
    """
    from datalad.config import write_config_section

    gitmodules = root / ".gitmodules"
    known = set()
    if gitmodules.exists():
        out = subprocess.run(["git", "config", "-z", "-f", ".gitmodules", "--get-regexp",
                              r"^submodule\..*\.path$"], cwd=root, capture_output=True,
                             text=True, encoding="utf-8", errors="surrogateescape").stdout
        known = {entry.partition("\n")[2] for entry in out.split("\0") if entry}
    new = [p for p in paths if p not in known]
    if not new:
        return []
    common = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.strip()
    with gitmodules.open("a", encoding="utf-8") as gmf, \
            (root / common / "config").open("a", encoding="utf-8") as gcf:
        for path in new:
            props = {"path": path, "url": f"./{path}"}
            dsid = _dataset_id(root / path)
            if dsid:
                props["datalad-id"] = dsid
            write_config_section(gmf, "submodule", path, props)
            write_config_section(gcf, "submodule", path, {"active": "true", "url": f"./{path}"})
    return [".gitmodules"]


def _dataset_id(path: Path) -> str | None:
    """``datalad.dataset.id`` of the dataset at ``path``, from its
    ``.datalad/config`` (read here: a git process per subdataset is what
    registering them in bulk saves)."""
    try:
        lines = (path / ".datalad" / "config").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    section = None
    for line in (raw.strip() for raw in lines):
        if line.startswith("["):
            section = line.replace(" ", "").lower()
        elif section == '[datalad"dataset"]' and line.partition("=")[0].strip() == "id":
            return line.partition("=")[2].strip()
    return None


def _registers_plainly(path: Path) -> bool:
    """Would ``datalad save`` register the subdataset at ``path`` as
    :func:`register_subdatasets` does: with its HEAD (not on an adjusted
    branch, whose corresponding branch DataLad records) and the URL
    ``./PATH``? DataLad records another URL only when the subdataset's
    branch tracks a remote (``branch.NAME.remote``: DataLad's
    ``_save_add_submodules`` takes that remote's URL); the ``fmrif``
    special remote's ``[remote "fmrif"]`` section, which every subject's
    dataset has, tracks nothing and has no URL."""
    try:
        config = (path / ".git" / "config").read_text(encoding="utf-8")
        head = (path / ".git" / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:  # .git is a file (a worktree, an absorbed submodule)
        return False
    if "refs/heads/adjusted/" in head:
        return False
    branch = head.removeprefix("ref: refs/heads/")
    section = re.search(r'^\s*\[branch "' + re.escape(branch) + r'"\]\s*$(.*?)(?=^\s*\[|\Z)',
                        config, re.M | re.S)
    return not (section and re.search(r"^\s*remote\s*=", section.group(1), re.M))


class SubdatasetDownload:
    """``fmrif-download --subdatasets``: each subject of the list into its
    subdataset, one after the other with one XNAT session, then one commit
    of the superdataset."""

    def __init__(self, ds, subjects: SubjectList, options: DownloadOptions, xnat):
        self.ds = ds
        self.root = Path(ds.path)
        self.subjects = subjects
        # each subdataset's record is the superdataset's, as with datalad run
        self.options = replace(options, superdataset_id=ds.id)
        self.xnat = xnat

    def run(self) -> Iterator[dict]:
        changed: list[tuple[str, str]] = []  # (path, name)
        projects = list_projects(self.xnat, (r.project for r in self.subjects.requests))
        registered = registered_subdatasets(self.root)
        for req in self.subjects.requests:
            try:
                path = subject_path(req)
            except PlanError as e:
                yield {"action": ACTION, "status": "error", "type": "subject",
                       "path": str(self.root), "refds": str(self.root),
                       "message": f"subject on line {req.line} of the list: {e}"}
                continue
            where = self.root / path
            if self.options.dry_run and not (where / ".git").exists():
                yield {"action": ACTION, "status": "ok", "type": "subject",
                       "path": str(where), "refds": str(self.root),
                       "message": f"{path}: a new subdataset, not made in a dry run"}
                continue
            created = not (where / ".git").exists()
            sub = subject_dataset(where)
            before = head(where)
            for res in fill_subject(sub, self.subjects, req, self.options, self.xnat,
                                    projects):
                res["refds"] = str(self.root)
                yield res
            if not has_sessions(where):
                # nothing of XNAT's (the subject failed, or has no sessions):
                # no empty subdataset in the superdataset
                if created:
                    from datalad.utils import rmtree

                    rmtree(str(where))
                continue
            if head(where) != before or path not in registered:
                changed.append((path, subject_name(req)))
        if self.options.dry_run:
            return
        paths = [p for p, _ in changed]
        # the layout is recorded with the first subdatasets, not without any
        if changed and record_layout(self.ds):
            paths.append(".datalad/config")
        failure = save_superdataset(
            self.ds, paths, [n for _, n in changed],
            {"server": self.options.server, "time": now_iso(),
             "subjects_sha256": subjects_digest(
                 self.subjects.requests, keep_labels=self.options.keep_labels)},
            self.options.command, self.options.message)
        if failure:
            yield failure
