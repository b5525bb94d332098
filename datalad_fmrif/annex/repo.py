"""The git-annex repository of a dataset, worked on in bulk.

Registering a study means thousands of files, so nothing here costs a
process, a journal file or a git object per file:

- git-annex's own commands run once per operation in ``--batch`` mode (one
  item per input line, one JSON answer per line), fed from a writer thread
  so that neither side can block on a full pipe;
- what git-annex records about the files (URLs, where content is, metadata)
  goes to its branch as one commit that git-annex merges
  (:meth:`Annex.write_logs`), the annex symlinks are made directly
  (:meth:`Annex.link`), and verified content moves into the annex under its
  key (:class:`Ingest`); where a repository needs git-annex to do these
  (a private repository, an adjusted branch, shared permissions), its own
  commands do them.

Behaviour of git-annex that this module relies on (verified with git-annex
10.20261026, see ``tests/test_annex.py``):

- Batch commands answer every input line with exactly one output line, in
  input order unless ``-J`` is given. The line is a JSON record, or empty when
  git-annex had nothing to do for the item (e.g. ``metadata`` for a path that
  is not an annexed file, ``get`` for a file whose content is already there).
- A per-item failure is a record with ``"success": false`` and, thanks to
  ``--json-error-messages``, git-annex's text in ``"error-messages"``.
- A malformed key or metadata field name does not fail the item, it kills the
  whole process ("Batch input parse failure"). Such input is therefore
  checked here first and reported as a failed item without being sent.
- ``fromkey --batch`` does not insist on the key's content being present (the
  one-shot ``fromkey KEY PATH`` refuses without ``--force`` even when a URL is
  registered), creates parent directories, and stages the new symlink in the
  index, so a following commit takes it.
- ``get --batch`` works together with ``-J``; answers then arrive in
  completion order and are matched to paths by their ``"input"`` field.

Batch input is line based. A path, key or URL that contains a newline or NUL
would corrupt the stream, so every item is checked before the process is
started; one bad item raises :class:`AnnexError` and nothing is written.

This layer never sees credentials: child processes inherit the environment
unchanged and get nothing added to it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ..annexlog import BranchLogs, field_problem
from .batch import (AnnexError, _Background, _BatchProcess, _check_line_safe, _check_path,
                    _check_url, _failure, _arg_chunks)
from .fastpath import FastPath
from .gitops import GitOps
from .keys import key_problem as _key_problem

lgr = logging.getLogger("datalad.fmrif.annex")

# The UUID git-annex gives its web remote (URLs no special remote claims).
WEB_UUID = "00000000-0000-0000-0000-000000000001"



class Annex(FastPath, GitOps):
    """Bulk operations on the git-annex repository at ``path``.

    Each method handles all the items it is given at once (one git-annex
    process, one commit), and validates all of them before it starts.
    Registration methods return one result record per item, in input order;
    the records are git-annex's own JSON (``"success"``, ``"error-messages"``,
    ``"file"``, ``"key"``, ``"input"``...), or records of the same shape made
    here for items git-annex was not asked about or did not answer for.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise AnnexError(f"no repository at {self.path}")
        self._where: dict[str, tuple[str, str]] = {}  # key -> see _examine

    def __repr__(self) -> str:
        return f"Annex({str(self.path)!r})"

    def _batch(self, args: Sequence[str], lines: Sequence[str]) -> _BatchProcess:
        return _BatchProcess(self.path, args, lines)

    def _run_ordered(
        self,
        args: Sequence[str],
        items: Sequence[tuple[str | None, dict]],
    ) -> list[dict]:
        """Run a batch command whose answers come in input order.

        ``items`` pairs each input line with fields that identify the item in
        its result record. A ``None`` line is not sent: its record is a
        failure already stored in the fields.
        """
        lines = [line for line, _ in items if line is not None]
        answers: list[dict | None] = []
        if lines:
            with self._batch(args, lines) as proc:
                answers = list(proc.records())
        command = args[0]
        results = []
        pending = iter(answers)
        for line, fields in items:
            if line is None:
                results.append(fields)
                continue
            record = next(pending)
            if record is None:
                record = _failure(
                    command, "git-annex did nothing for this item "
                    "(not an annexed file?)", input=[line])
            for k, v in fields.items():
                record.setdefault(k, v)
            results.append(record)
        return results

    def registerurl(self, pairs: Iterable[tuple[str, str]]) -> list[dict]:
        """Record that the content of each key can be downloaded from a URL.

        Nothing is downloaded. A URL that a special remote claims (CLAIMURL)
        is recorded for that remote, any other for git-annex's web remote.
        Returns one record per ``(key, url)`` pair with ``"key"`` and
        ``"url"`` added.
        """
        return self._keyed("registerurl", pairs, "url", _check_url)

    def _keyed(self, command: str, pairs, what: str, check) -> list[dict]:
        """``git annex COMMAND --batch`` over ``KEY VALUE`` lines, ``VALUE``
        (a URL or a path, named ``what`` in the records) checked by ``check``."""
        items = []
        for key, value in pairs:
            _check_line_safe("key", key)
            value = check(value)
            problem = _key_problem(key)
            if problem:
                items.append((None, _failure(command, problem, key=key, **{what: value})))
            else:
                items.append((f"{key} {value}", {"key": key, what: value}))
        return self._run_ordered([command, "--batch", "--json", "--json-error-messages"],
                                 items)

    def fromkey(self, pairs: Iterable[tuple[str, str | os.PathLike]]) -> list[dict]:
        """Create an annexed file at each path, pointing at the given key.

        The content is not needed (it is fetched later by :meth:`get`, and
        verified against the key then). Parent directories are created, and
        git-annex stages each new file in the index, ready to be committed.
        Re-registering a path with the same key succeeds; a
        path that exists with other content is a failed item. Paths are
        relative to the repository root.
        """
        return self._keyed("fromkey", pairs, "file", _check_path)

    def uuid(self, remote: str | None = None) -> str:
        """The git-annex UUID of this repository, or of a remote of it."""
        name = f"remote.{remote}.annex-uuid" if remote else "annex.uuid"
        value = self._config().get(name, "")
        if not value:
            raise AnnexError(f"git config has no {name}: is "
                             f"{'the remote ' + remote if remote else 'git-annex'} "
                             "set up here?")
        return value

    def set_metadata(
        self,
        items: Iterable[tuple[str | os.PathLike, dict[str, str | Sequence[str]]]],
        *,
        by_key: bool = False,
    ) -> list[dict]:
        """Set git-annex metadata fields on annexed files (or keys).

        Each given field is set to exactly the given value (or values, for a
        list); fields not mentioned keep theirs. A path that is not an annexed
        file is a failed item. With ``by_key``, the items name keys instead
        of paths: no file is looked up (faster), and the keys need no file
        yet, so this can run at the same time as :meth:`fromkey`.
        """
        what = "key" if by_key else "file"
        batch = []
        for target, fields in items:
            if by_key:
                target = _check_line_safe("key", str(target))
                problem = _key_problem(target)
            else:
                target = _check_path(target)
                problem = None
            values = {}
            for name, value in fields.items():
                problem = problem or field_problem(name)
                if isinstance(value, (list, tuple, set, frozenset)):
                    values[name] = [str(v) for v in value]
                else:
                    values[name] = [str(value)]
            if problem:
                batch.append((None, _failure("metadata", problem, **{what: target})))
            else:
                batch.append((json.dumps({what: target, "fields": values}),
                              {what: target}))
        return self._run_ordered(
            ["metadata", "--batch", "--json", "--json-error-messages"], batch)

    def register(
        self,
        items: Sequence[tuple[str, str | os.PathLike, str, dict]],
        *,
        remote: str | None = None,
    ) -> list[dict]:
        """Register files whose keys are known: file, URL and metadata.

        ``items`` are ``(key, path, url, metadata fields)``; ``remote`` is
        the special remote that claims the URLs (``None``: git-annex's web
        remote). The files are made by :meth:`link`. Their URLs, the
        remote's possession of the keys and the metadata are what ``git
        annex registerurl`` and ``git annex metadata`` record, written in
        one commit (:meth:`write_logs`, while the files are made) where the
        branch takes that, else by those two commands.

        Returns one record per item, in input order: ``{"file", "key",
        "url", "success", "error-messages", "metadata-error-messages"}``; an
        item fails when its file could not be made or its URL not recorded
        (metadata problems are reported but do not fail it).
        """
        items = [(key, _check_path(path), _check_url(url), fields)
                 for key, path, url, fields in items]
        if not items:
            return []
        writer = None
        if self.supported(remote):
            # the records are written while the files are made: both take
            # seconds for thousands of files, on different resources
            logs = BranchLogs()
            uuid = self.uuid(remote) if remote else WEB_UUID
            problems = {}
            for key, _, url, fields in items:
                if _key_problem(key):
                    continue  # link() reports it
                logs.add_present(key, uuid)
                logs.add_url(key, url, claimed=remote is not None)
                problems[key] = next(filter(None, map(field_problem, fields)), None)
                if problems[key] is None:
                    logs.add_metadata(key, fields)
            self._examine(logs.keys)  # once, for both
            writer = _Background(self.write_logs, logs)
        links = self.link([(k, p) for k, p, _, _ in items])
        made = [(item, fk) for item, fk in zip(items, links) if fk.get("success")]
        if writer is not None:
            writer.result()
            url_answers = [{"success": True}] * len(made)
            md_answers = [_failure("metadata", problems[key]) if problems[key]
                          else {"success": True} for (key, _, _, _), _ in made]
        else:
            url_answers = self.registerurl([(k, u) for (k, _, u, _), _ in made])
            md_answers = self.set_metadata([(k, f) for (k, _, _, f), _ in made],
                                           by_key=True)
        answers = {id(fk): (reg, md) for (_, fk), reg, md in zip(made, url_answers, md_answers)}
        out = []
        for (key, path, url, _), fk in zip(items, links):
            reg, md = answers.get(id(fk), ({"success": True}, {"success": True}))
            msgs = [m for r in (fk, reg) if not r.get("success", True)
                    for m in (r.get("error-messages") or ["failed"])]
            out.append({
                "command": "register", "file": path, "key": key, "url": url,
                "success": not msgs, "error-messages": msgs,
                "metadata-error-messages": [] if md.get("success", True)
                else (md.get("error-messages") or ["failed"]),
            })
        return out

    def addurls_unknown(
        self, items: Iterable[tuple[str, str | os.PathLike]],
    ) -> list[dict]:
        """Download files whose digest is unknown and annex them (MD5E keys).

        The content is downloaded by whichever remote claims the URL (our
        special remote for the server's URLs, else the web remote); the key
        is computed from what arrived, and the URL is recorded for it.
        """
        batch = []
        for url, path in items:
            _check_url(url)
            path = _check_path(path)
            batch.append((f"{url} {path}", {"url": url, "file": path}))
        return self._run_ordered(
            ["addurl", "--batch", "--with-files", "--json",
             "--json-error-messages", "--backend", "MD5E"], batch)

    def get(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        jobs: int = 4,
        progress: Callable[[dict], None] | None = None,
    ) -> Iterator[dict]:
        """Fetch the content of annexed files, ``jobs`` transfers at a time.

        Yields one final record per path, in completion order. git-annex
        verifies what it downloads against the key, so content that does not
        match (e.g. a wrong MD5 from the server) is a failed item
        ("Verification of content failed") and does not enter the annex.
        Paths must be files (batch mode does not recurse into directories).
        A path whose content is already present yields a successful record
        with ``"note": "already present"``; one that is not an annexed file
        yields a failed record.

        ``progress`` is called with git-annex's progress records:
        ``{"byte-progress", "total-size", "percent-progress",
        "action": {"command", "file", "key", "input", ...}}``.

        Paths are checked when this method is called; the process starts when
        iteration starts and is stopped if iteration is abandoned.
        """
        lines = [_check_path(p) for p in paths]
        if jobs < 1:
            raise AnnexError(f"jobs must be at least 1, not {jobs}")
        return self._get(lines, jobs, progress)

    def _get(self, lines, jobs, progress) -> Iterator[dict]:
        if not lines:
            return
        waiting = {}
        for line in lines:
            waiting[line] = waiting.get(line, 0) + 1
        args = ["get", "--batch", f"-J{jobs}", "--json", "--json-progress",
                "--json-error-messages"]
        with self._batch(args, lines) as proc:
            for record in proc.records():
                if record is None:
                    continue
                if "byte-progress" in record:
                    if progress is not None:
                        progress(record)
                    continue
                line = (record.get("input") or [record.get("file")])[0]
                if waiting.get(line):
                    waiting[line] -= 1
                yield record
        # empty answers cannot be told apart with -J: classify what is left
        unanswered = [p for p, n in waiting.items() for _ in range(n)]
        if unanswered:
            present = self.find_present(unanswered)
            for p in unanswered:
                if p in present:
                    yield {"command": "get", "file": p, "input": [p],
                           "success": True, "error-messages": [],
                           "note": "already present"}
                else:
                    yield _failure("get", "not an annexed file", file=p,
                                   input=[p])

    def reinject(self, files: Sequence[str | os.PathLike]) -> list[dict]:
        """Move files named by their key into the annex as that key's content.

        ``git annex reinject --guesskeys``: git-annex hashes each file, and
        only if it matches the key in its name moves it into
        ``.git/annex/objects`` and records that the content is here; a file
        that does not match is left where it is (a failed item). The file's
        symlink in the work tree may exist already (``fromkey``) or come
        later. This is how verified bulk downloads enter the annex: no file
        ever appears in the work tree, and the key stays XNAT's.

        Returns one record per file, in input order, with ``"input"``.
        reinject has no batch mode: one process per ~100 KB of arguments.
        """
        paths = [_check_path(os.path.abspath(os.fspath(f))) for f in files]
        results: dict[str, dict] = {}
        args = ["reinject", "--guesskeys", "--json", "--json-error-messages"]
        for chunk in _arg_chunks(paths, 100_000):
            proc = subprocess.run(
                ["git-annex", *args, "--", *chunk], cwd=self.path,
                capture_output=True, text=True, encoding="utf-8",
                errors="surrogateescape")
            for line in proc.stdout.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                for src in record.get("input") or []:
                    results[src] = record
            missing = [p for p in chunk if p not in results]
            if missing:
                why = proc.stderr.strip() or f"exit code {proc.returncode}"
                for p in missing:
                    results[p] = _failure("reinject", f"no answer from git-annex: {why}",
                                          input=[p])
        return [results[p] for p in paths]

    def find_present(self, paths: Sequence[str | os.PathLike]) -> set[str]:
        """Return those of ``paths`` that are annexed files with content here.

        An annex symlink has its content exactly when its target exists
        (git-annex's own test for a locked file), which the file system
        answers for thousands of files in milliseconds; any other path (an
        unlocked file, something else) is asked of ``git annex find``.
        """
        present, ask = set(), []
        root = str(self.path)
        for line in map(_check_path, paths):
            if self._link_key(line) is None:
                ask.append(line)
            elif os.path.exists(os.path.join(root, line)):
                present.add(line)
        if ask:
            with self._batch(["find", "--batch", "--json"], ask) as proc:
                answers = list(proc.records())
            present.update(line for line, rec in zip(ask, answers) if rec is not None)
        return present

    def whereis(self, path: str | os.PathLike) -> dict:
        """git-annex's whereis record for one file (locations and URLs)."""
        path = _check_path(path)
        with self._batch(["whereis", "--batch", "--json",
                          "--json-error-messages"], [path]) as proc:
            answers = list(proc.records())
        if not answers or answers[0] is None:
            return _failure("whereis", "not an annexed file", file=path)
        return answers[0]

    def lookupkey(self, paths: Sequence[str | os.PathLike]) -> list[str | None]:
        """The key of each annexed file (staged or committed), ``None`` if not
        annexed. One ``git annex lookupkey --batch`` process for all.

        A git-annex symlink that is not staged yet (``fromkey`` stages in
        batches: a run killed in the middle leaves some) counts too: git-annex
        does not look at it, so its key is read from the link target
        (``.../annex/objects/XX/YY/KEY/KEY``), as git-annex itself would.
        """
        lines = [_check_path(p) for p in paths]
        if not lines:
            return []
        proc = subprocess.run(
            ["git-annex", "lookupkey", "--batch"], cwd=self.path,
            input="".join(line + "\n" for line in lines), capture_output=True,
            text=True, encoding="utf-8", errors="surrogateescape")
        answers = proc.stdout.split("\n")[:len(lines)]
        if len(answers) < len(lines):
            raise AnnexError(
                f"git-annex lookupkey answered {len(answers)} of {len(lines)} "
                f"paths: {proc.stderr.strip() or '(no error output)'}")
        return [a.strip() or self._link_key(line) for a, line in zip(answers, lines)]

    def _link_key(self, path: str) -> str | None:
        try:
            target = os.readlink(os.path.join(self.path, path))
        except OSError:
            return None
        parts = target.replace(os.sep, "/").split("/")
        if (len(parts) >= 4 and parts[-1] == parts[-2] and parts[-6:-4] == ["annex", "objects"]
                and _key_problem(parts[-1]) is None):
            return parts[-1]
        return None
