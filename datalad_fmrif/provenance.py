"""What a dataset records about where its files came from.

Two records, both in git so that they travel with every clone:

- a manifest per XNAT session, ``.datalad/fmrif/sessions/<session ID>.json``:
  accession IDs, the names the subject and session got in the dataset, and
  per file its scan, resource, XNAT name, dataset path, size, MD5, URL and
  when it was recorded. Keys are sorted and unchanged entries keep their
  time, so ``git diff`` of a re-run shows exactly what changed on the server.
  Manifests are also the memory of earlier runs: session names given under
  pseudonyms are read back from them and never change;
- a DataLad run record in the commit message of every run, so that
  ``datalad rerun`` repeats the download (incrementally).

Under pseudonyms neither holds a subject label, session label or date.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import AbstractSet as Set, Mapping

from .plan import PlanOptions, SessionPlan

MANIFEST_DIR = ".datalad/fmrif/sessions"
MANIFEST_FORMAT = "datalad-fmrif/session/1"


def manifest_path(session_id: str) -> str:
    return f"{MANIFEST_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '_', session_id)}.json"


def load_manifests(dataset: Path) -> dict[str, dict]:
    """Manifests of the dataset by XNAT session accession ID."""
    folder = Path(dataset) / MANIFEST_DIR
    manifests = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                manifests[doc["session"]["id"]] = doc
            except (OSError, ValueError, KeyError, TypeError):
                raise ValueError(
                    f"{path.relative_to(dataset)} is not a readable session "
                    "manifest; restore it from git (git checkout -- PATH)"
                ) from None
    return manifests


def assigned_names(manifests: Mapping[str, dict]) -> dict[str, tuple[str, str]]:
    """Session ID -> (subject name, session name) given on earlier runs."""
    return {
        sid: (doc["subject"]["name"], doc["session"]["name"])
        for sid, doc in manifests.items()
    }


def session_manifest(
    plan: SessionPlan,
    *,
    server: str,
    project: str,
    time: str,
    subject_label: str | None,
    previous: dict | None,
    changed: Mapping[str, str] = {},
    left_out: Set[str] = frozenset(),
    removed: Set[str] = frozenset(),
    options: PlanOptions,
) -> dict:
    """The manifest of a session after this run.

    ``previous`` is the manifest of the last run: files it lists keep their
    entry (and time) unless the server changed them; files the server no
    longer lists stay (the dataset still has them) and are marked.
    ``changed`` maps dataset paths whose digest changed on the server to the
    server's new MD5: the dataset keeps its content, the manifest says so.
    ``left_out`` are new files this run could not add (their transfer
    failed); they are not in the dataset, so not in the manifest.
    ``removed`` are files the user took out of the dataset (``git rm``):
    marked ``removed`` (since when), so that a later run neither fetches
    nor reports them again. A file XNAT lists again loses its
    ``missing_on_server`` mark; one back in the dataset its ``removed``.
    ``options`` shaped the plan; they are recorded so that a later check
    (``fmrif-status``) can plan the session again exactly the same way.
    """
    session = plan.catalog.session
    old = {f["path"]: f for f in (previous or {}).get("files", [])}
    files = {}
    for pf in plan.files:
        if pf.path in left_out:
            continue
        scan = pf.scan
        entry = {
            "path": pf.path,
            "scan_id": pf.file.scan_id or "",
            "scan_type": scan.type if scan else "",
            "series_description": scan.series_description if scan else "",
            "resource": pf.file.resource,
            "resource_id": pf.file.resource_id,
            "name": pf.file.name,
            "size": pf.size,
            "md5": pf.md5,
            "url": server + pf.url_path,
            "recorded": time,
        }
        before = old.get(pf.path)
        if pf.path in changed and before:
            entry = dict(before, server_md5=changed[pf.path])
        elif before and all(before.get(k) == v for k, v in entry.items()
                            if k != "recorded"):
            entry = dict(before)
        entry.pop("missing_on_server", None)  # listed (again)
        if pf.path in removed:
            entry["removed"] = (before or {}).get("removed", time)
        else:
            entry.pop("removed", None)
        files[pf.path] = entry
    for path, entry in old.items():
        if path not in files:
            files[path] = dict(entry, missing_on_server=entry.get(
                "missing_on_server", time))
    subject = {"id": session.subject_id, "name": plan.subject}
    sess = {"id": session.id, "name": plan.session, "xsi_type": session.xsi_type}
    if subject_label is not None:  # the user chose --keep-labels
        subject["label"] = subject_label
        sess["label"] = session.label
        sess["date"] = session.date
    return {
        "format": MANIFEST_FORMAT,
        "server": server,
        "project": project,
        "options": options_record(options),
        "subject": subject,
        "session": sess,
        "files": [files[p] for p in sorted(files)],
    }


def common_dir(paths: list[str]) -> str:
    """The folder that holds all of a session's files; "" (the dataset)
    when there are none."""
    if not paths:
        return ""
    if len(paths) == 1:
        return os.path.dirname(paths[0])
    return os.path.commonpath(paths)


def options_record(options: PlanOptions) -> dict:
    return {
        "path": options.template,
        "include_series": options.include_series,
        "exclude_series": options.exclude_series,
        "resources": list(options.resources),
    }


def options_from_record(record: dict) -> PlanOptions:
    return PlanOptions(
        template=record["path"],
        include_series=record.get("include_series"),
        exclude_series=record.get("exclude_series"),
        resources=tuple(record.get("resources") or ("DICOM",)),
    )


def write_manifest(dataset: Path, manifest: dict) -> str:
    """Write atomically; returns the path relative to the dataset."""
    rel = manifest_path(manifest["session"]["id"])
    path = Path(dataset) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    attributes = path.parent.parent / ".gitattributes"
    if not attributes.exists():
        # manifests are small text: keep them in git, never in the annex
        attributes.write_text("* annex.largefiles=nothing\n")
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return rel


def remove_unfinished_manifests(dataset: Path) -> None:
    """Remove the half-written manifests (``*.json.tmp``) of a killed run;
    :func:`write_manifest` writes the whole file again."""
    for tmp in (Path(dataset) / MANIFEST_DIR).glob("*.json.tmp"):
        tmp.unlink(missing_ok=True)


def subjects_digest(requests, *, keep_labels: bool) -> str:
    """SHA-256 that identifies the subjects a run was asked for, made only of
    what the dataset shows anyway: per subject its project and its name in
    the dataset (the pseudonym; the label only under ``--keep-labels``,
    where the dataset holds labels), and how many sessions the list names
    (their labels are accession numbers, so only their number). A plain
    hash of the list itself would let anyone who tries every possible MRN
    find the labels of a short list. Sorted: the order of the list does not
    matter."""
    lines = sorted(
        f"{r.project}\t{r.label if keep_labels else r.pseudonym}\t{len(r.sessions)}"
        for r in requests)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def run_record_message(message: str, record: dict) -> str:
    """A commit message DataLad's ``rerun`` understands (a RUNCMD record)."""
    body = json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False)
    return (f"[DATALAD RUNCMD] {message}\n\n=== Do not change lines below ===\n"
            f"{body}\n^^^ Do not change lines above ^^^\n")


def run_record(cmd: str, dsid: str, extra: dict) -> dict:
    """DataLad's run record fields; ``cmd`` is str.format-escaped by us.

    No ``outputs``: ``datalad rerun`` would unlock them before running the
    command, which needs every file's content. The command saves its own
    changes, and the sessions it touched are listed under ``fmrif``.
    """
    return {
        "chain": [],
        "cmd": cmd.replace("{", "{{").replace("}", "}}"),
        "dsid": dsid,
        "exit": 0,
        "extra_inputs": [],
        "inputs": [],
        "outputs": [],
        "pwd": ".",
        "fmrif": extra,
    }


def compare_session(manifest: dict, plan: SessionPlan) -> list[tuple[str, str, str]]:
    """How a session on the server differs from its manifest.

    Returns ``(path, state, detail)`` for each difference, in DataLad's
    words: ``modified`` (another MD5 on the server), ``deleted`` (no longer
    listed), ``untracked`` (listed, not in the dataset). ``plan`` must be
    made with the manifest's own options and names.
    """
    every = {f["path"]: f for f in manifest.get("files", [])}
    # a file the user removed from the dataset is the user's decision
    recorded = {p: f for p, f in every.items() if not f.get("removed")}
    listed = {pf.path: pf for pf in plan.files}
    out = []
    for path, entry in sorted(recorded.items()):
        pf = listed.get(path)
        if pf is None:
            since = entry.get("missing_on_server")
            out.append((path, "deleted", "no longer listed by XNAT"
                        + (f" (since {since})" if since else "")))
        elif pf.md5 != entry.get("md5"):
            out.append((path, "modified",
                        f"MD5 {entry.get('md5') or '(none)'} in the dataset, "
                        f"{pf.md5 or '(none)'} on XNAT"))
    for path in sorted(set(listed) - set(every)):
        out.append((path, "untracked", "on XNAT, not in the dataset"))
    return out
