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
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Mapping

from . import __version__
from .pipeline import ACTION, Download, DownloadOptions, list_projects, now_iso
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
        if path.exists():  # git-annex chose another mode: DataLad knows it
            rmtree(str(path))
        sub.create(result_renderer="disabled", return_type="list")
    return sub


def create_plainly(path: Path) -> bool:
    """Make at ``path`` the dataset ``datalad create`` makes, with a few
    plain git and git-annex commands; False (and ``path`` left to
    :func:`subject_dataset` to remove) where that would not be the same.

    ``datalad create`` was the largest single cost of a subject with
    ``--no-content`` (about 0.35 s on an idle machine, some 40 git and
    git-annex processes, most of them DataLad finding out the state of a
    repository it has just made), paid once per subject of a protocol. What it makes is
    git-annex initialised, ``.gitattributes`` (DataLad's backend, no
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

    from .annex import Annex

    if cfg.getbool("datalad", "fake-dates", default=False) or \
            cfg.get("datalad.repo.version") is not None:
        return False

    def git(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True)

    path.mkdir(parents=True, exist_ok=True)
    if git("init", "-q").returncode or git(
            "annex", "init", "-q", "-c", "annex.dotfiles=true").returncode:
        return False
    # attributes of the user's (DataLad then writes none of its own)
    given = git("check-attr", "annex.backend", "annex.largefiles", "--",
                ".", ".git", ".datalad/config").stdout.splitlines()
    if any(not line.endswith(": unspecified") for line in given) or \
            not Annex(path).plain_links():
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
    res = ds.save(path=paths, message=run_record_message(text, record),
                  result_renderer="disabled", return_type="list", on_failure="ignore")
    bad = [r for r in res if r.get("status") not in ("ok", "notneeded")]
    if bad:
        return {"action": ACTION, "status": "error", "type": "dataset",
                "path": ds.path, "refds": ds.path,
                "message": "saving the superdataset failed: "
                + "; ".join(str(r.get("message")) for r in bad)}
    return None


class SubdatasetDownload:
    """``fmrif-download --subdatasets``: each subject of the list into its
    subdataset, one after the other with one XNAT session, then one commit
    of the superdataset."""

    def __init__(self, ds, subjects: SubjectList, options: DownloadOptions, xnat):
        self.ds = ds
        self.root = Path(ds.path)
        self.subjects = subjects
        self.options = options
        self.xnat = xnat

    def run(self) -> Iterator[dict]:
        changed: list[tuple[str, str]] = []  # (path, name)
        projects = list_projects(self.xnat, (r.project for r in self.subjects.requests))
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
            if head(where) != before or not self._registered(path):
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

    def _registered(self, path: str) -> bool:
        out = subprocess.run(["git", "ls-files", "--stage", "--", path], cwd=self.root,
                             capture_output=True, text=True).stdout
        return out.startswith("160000")
