"""Batched git-annex calls: one long-running process per operation.

Registering a study means thousands of files. Starting git-annex once per
file costs a process start (and a Python wrapper, for the PyPI build) every
time; git-annex's ``--batch`` mode takes one item per input line and answers
with one JSON line per item instead. Every public method here starts exactly
one ``git-annex <command> --batch --json`` process, streams all items into it
from a writer thread (so neither side can block on a full pipe) and reads the
answers as they come.

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
  index, so a following ``datalad save`` commits it.
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
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

lgr = logging.getLogger("datalad.fmrif.annex")

__all__ = ["Annex", "AnnexError", "Registration"]

# Key syntax git-annex accepts in batch input: BACKEND, optional fields
# (-s size, -m mtime, -S chunk size, -C chunk number), "--", name.
# Stricter than git-annex on the name (no whitespace: it would shift the
# "KEY URL" / "KEY PATH" split; no "/": never a sensible key name).
_KEY_RE = re.compile(r"[A-Za-z0-9_]+(?:-[smSC][0-9]+)*--[^\s/]+")

# Keep this much of a process's stderr for error messages.
_STDERR_KEEP = 64 * 1024


class AnnexError(RuntimeError):
    """A git-annex command failed as a whole, or was refused before it ran.

    The message names the command and carries git-annex's own error text.
    Failures of single items are not exceptions; they are result records with
    ``"success": False``.
    """


def _check_line_safe(what: str, value: str) -> str:
    """Refuse values that would break a line-based batch protocol."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise AnnexError(
            f"{what} {value!r} contains a newline or NUL character, which "
            "git-annex's batch input cannot carry; nothing was registered")
    return value


def _check_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not path:
        raise AnnexError("empty path given; nothing was registered")
    return _check_line_safe("path", path)


def _check_url(url: str) -> str:
    _check_line_safe("URL", url)
    if not url or any(c.isspace() for c in url):
        raise AnnexError(
            f"URL {url!r} is empty or contains whitespace (percent-encode it); "
            "nothing was registered")
    return url


def _key_problem(key: str) -> str | None:
    if _KEY_RE.fullmatch(key):
        return None
    return f"not a valid git-annex key: {key!r}"


def _field_problem(name: str) -> str | None:
    # git-annex allows letters, digits and "_-." in metadata field names
    if name and all(c.isalnum() or c in "_-." for c in name):
        return None
    return (f"not a valid git-annex metadata field name: {name!r} "
            "(letters, digits, '_', '-', '.' only)")


def _arg_chunks(items: Sequence[str], max_chars: int) -> Iterator[list[str]]:
    """Split command-line arguments into runs of at most ``max_chars``."""
    chunk, size = [], 0
    for item in items:
        if chunk and size + len(item) + 1 > max_chars:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield chunk


def _failure(command: str, message: str, **fields) -> dict:
    """A result record shaped like git-annex's own failure records."""
    return {"command": command, "success": False,
            "error-messages": [message], **fields}


class _BatchProcess:
    """One ``git-annex <command> --batch`` process.

    Input lines are written by a thread while the caller reads the answers,
    and stderr is drained by another, so a large batch cannot deadlock on a
    full pipe. Use as a context manager: leaving the block early (an exception
    in the caller, a generator that is not exhausted) terminates the process;
    leaving it normally waits for it and raises :class:`AnnexError` if it died
    before answering every line.
    """

    def __init__(self, repo: Path, args: Sequence[str], lines: Sequence[str]):
        self.command = args[0]
        self.argv = ["git-annex", *args]
        self.expected = len(lines)
        self.answered = 0
        self._lines = lines
        self._stderr: list[str] = []
        lgr.debug("starting %s for %d items", " ".join(self.argv), len(lines))
        try:
            self._proc = subprocess.Popen(
                self.argv, cwd=repo,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True, bufsize=1,
                encoding="utf-8", errors="surrogateescape",
            )
        except OSError as e:
            raise AnnexError(
                f"cannot run {' '.join(self.argv)}: {e}") from e
        self._threads = [
            threading.Thread(target=self._write, daemon=True),
            threading.Thread(target=self._drain_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _write(self) -> None:
        stdin = self._proc.stdin
        try:
            for line in self._lines:
                stdin.write(line + "\n")
        except (BrokenPipeError, OSError, ValueError):
            # the process died; __exit__ reports it with its stderr
            pass
        finally:
            try:
                stdin.close()
            except (BrokenPipeError, OSError):
                pass

    def _drain_stderr(self) -> None:
        size = 0
        for line in self._proc.stderr:
            if size < _STDERR_KEEP:
                self._stderr.append(line)
                size += len(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr).strip()

    def lines(self) -> Iterator[str]:
        """Yield each stdout line as it is (for commands without JSON)."""
        for line in self._proc.stdout:
            self.answered += 1
            yield line

    def records(self) -> Iterator[dict | None]:
        """Yield each stdout line parsed as JSON; ``None`` for empty lines."""
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            if not line.strip():
                self.answered += 1
                yield None
                continue
            try:
                record = json.loads(line)
            except ValueError:
                lgr.debug("%s: ignoring non-JSON output %r", self.command, line)
                continue
            if "byte-progress" not in record:
                self.answered += 1
            yield record

    def __enter__(self) -> "_BatchProcess":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        lgr.debug("%s: %d items answered", self.command, self.answered)
        if exc_type is not None and self._proc.poll() is None:
            # the caller gave up (exception, abandoned generator)
            self._proc.terminate()
        rc = self._proc.wait()
        for t in self._threads:
            t.join()
        self._proc.stdout.close()
        self._proc.stderr.close()
        if exc_type is not None:
            return
        if self.answered < self.expected:
            raise AnnexError(
                f"{' '.join(self.argv)} exited with code {rc} after answering "
                f"{self.answered} of {self.expected} items: "
                f"{self.stderr or '(no error output)'}")
        # a non-zero exit with every item answered only means that some items
        # failed; those are in the records
        lgr.debug("%s exited with %d: %s", self.command, rc, self.stderr)


class Registration:
    """A registration in progress (:meth:`Annex.register`).

    ``links``: the record of each item's file, there at once. :meth:`wait`
    waits for the URLs and metadata and returns one record per item, in
    input order: ``{"file", "key", "url", "success", "error-messages",
    "metadata-error-messages"}``; an item fails when its file or URL could
    not be registered (metadata problems are reported but do not fail it).
    It raises AnnexError like the single methods.
    """

    def __init__(self, items: list, links: list[dict], jobs: dict):
        self.items = items
        self.links = links
        self._answers: dict[str, list[dict]] = {}
        self._errors: list[BaseException] = []
        self._result: list[dict] | None = None
        self._threads = [threading.Thread(target=self._run, args=(name, job),
                                          name=f"annex-{name}")
                         for name, job in jobs.items()] if items else []
        for t in self._threads:
            t.start()

    def _run(self, name: str, job) -> None:
        try:
            self._answers[name] = job()
        except BaseException as e:  # noqa: BLE001 - raised by wait()
            self._errors.append(e)

    def wait(self) -> list[dict]:
        if self._result is not None:
            return self._result
        for t in self._threads:
            t.join()
        if self._errors:
            raise self._errors[0]
        out = []
        for i, ((key, path, url, _), fk) in enumerate(zip(self.items, self.links)):
            reg = self._answers["registerurl"][i]
            md = self._answers["metadata"][i]
            msgs = [m for r in (fk, reg) if not r.get("success", True)
                    for m in (r.get("error-messages") or ["failed"])]
            out.append({
                "command": "register", "file": path, "key": key, "url": url,
                "success": not msgs, "error-messages": msgs,
                "metadata-error-messages": [] if md.get("success", True)
                else (md.get("error-messages") or ["failed"]),
            })
        self._result = out
        return out


class Annex:
    """Batched operations on the git-annex repository at ``path``.

    Each method starts one git-annex process for all the items it is given.
    Methods that take items validate all of them before starting it.
    Registration methods return one result record per item, in input order;
    the records are git-annex's own JSON (``"success"``, ``"error-messages"``,
    ``"file"``, ``"key"``, ``"input"``...), or records of the same shape made
    here for items git-annex was not asked about or did not answer for.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise AnnexError(f"no repository at {self.path}")

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
        items = []
        for key, url in pairs:
            _check_line_safe("key", key)
            _check_url(url)
            problem = _key_problem(key)
            if problem:
                items.append((None, _failure("registerurl", problem,
                                             key=key, url=url)))
            else:
                items.append((f"{key} {url}", {"key": key, "url": url}))
        return self._run_ordered(
            ["registerurl", "--batch", "--json", "--json-error-messages"],
            items)

    def fromkey(self, pairs: Iterable[tuple[str, str | os.PathLike]]) -> list[dict]:
        """Create an annexed file at each path, pointing at the given key.

        The content is not needed (it is fetched later by :meth:`get`, and
        verified against the key then). Parent directories are created, and
        git-annex stages each new file in the index, so ``datalad save``
        commits them. Re-registering a path with the same key succeeds; a
        path that exists with other content is a failed item. Paths are
        relative to the repository root.
        """
        items = []
        for key, path in pairs:
            _check_line_safe("key", key)
            path = _check_path(path)
            problem = _key_problem(key)
            if problem:
                items.append((None, _failure("fromkey", problem,
                                             key=key, file=path)))
            else:
                items.append((f"{key} {path}", {"key": key, "file": path}))
        return self._run_ordered(
            ["fromkey", "--batch", "--json", "--json-error-messages"], items)

    def link(self, pairs: Iterable[tuple[str, str | os.PathLike]]) -> list[dict]:
        """What :meth:`fromkey` does, without a git-annex round per file.

        ``git annex fromkey --batch`` costs git-annex about 10 ms per file
        (measured: 48 s for 4,000), which made it the largest single cost of
        registering a large session. Here one ``git annex examinekey
        --batch`` names each key's object path, the annex symlinks are made
        directly (the relative link to ``.git/annex/objects/...`` that
        git-annex itself makes for a locked file), and one ``git
        update-index`` stages them all. Same contract and records as
        :meth:`fromkey`: a path that exists with the same link succeeds, one
        that exists otherwise is a failed item. Where annexed files are not
        plain symlinks (a crippled file system, an adjusted branch, no
        symlinks), this is :meth:`fromkey`.
        """
        items = []
        for key, path in pairs:
            _check_line_safe("key", key)
            path = _check_path(path)
            items.append((key, path, _key_problem(key)))
        if not self._plain_links():
            return self.fromkey([(k, p) for k, p, _ in items])
        keys = [k for k, _, problem in items if not problem]
        objects = iter(self._object_paths(keys))
        results, made = [], []
        for key, path, problem in items:
            if problem:
                results.append(_failure("fromkey", problem, key=key, file=path))
                continue
            full = self.path / path
            target = os.path.relpath(self.path / next(objects), full.parent)
            try:
                full.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, full)
                made.append(path)
            except FileExistsError:
                if not (full.is_symlink() and os.readlink(full) == target):
                    results.append(_failure("fromkey", "a different file is already "
                                            "at this path", key=key, file=path))
                    continue
                made.append(path)  # registered before: staged again, harmless
            except OSError as e:
                results.append(_failure("fromkey", f"cannot make the file: {e.strerror}",
                                        key=key, file=path))
                continue
            results.append({"command": "fromkey", "success": True, "key": key,
                            "file": path, "error-messages": []})
        if made:
            proc = subprocess.run(
                ["git", "update-index", "--add", "-z", "--stdin"], cwd=self.path,
                input="\0".join(made) + "\0", capture_output=True, text=True,
                encoding="utf-8", errors="surrogateescape")
            if proc.returncode != 0:
                raise AnnexError(f"git update-index could not stage {len(made)} new "
                                 f"files: {proc.stderr.strip() or proc.returncode}")
        return results

    def _plain_links(self) -> bool:
        """Whether annexed files here are plain symlinks into the annex."""
        def git(*args) -> str:
            return subprocess.run(["git", *args], cwd=self.path, capture_output=True,
                                  text=True).stdout.strip()
        if os.name == "nt" or git("config", "--type=bool", "core.symlinks") == "false":
            return False
        if git("config", "--type=bool", "annex.crippledfilesystem") == "true":
            return False
        return not git("symbolic-ref", "-q", "HEAD").startswith("refs/heads/adjusted/")

    def _object_paths(self, keys: Sequence[str]) -> list[str]:
        """``.git/annex/objects/...`` path of each key (relative to the root)."""
        if not keys:
            return []
        with self._batch(["examinekey", "--batch", "--format=${objectpath}\n"],
                         list(keys)) as proc:
            paths = [line.rstrip("\n") for line in proc.lines()]
        if len(paths) != len(keys) or not all(
                p.replace(os.sep, "/").split("/")[-1] == k for p, k in zip(paths, keys)):
            raise AnnexError("git-annex examinekey did not name an object path for "
                             "every key")
        return paths

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
                problem = problem or _field_problem(name)
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
    ) -> Registration:
        """Register files whose keys are known: file, URL and metadata.

        ``items`` are ``(key, path, url, metadata fields)``. The files are
        made at once (:meth:`link`, fast); their URLs (:meth:`registerurl`)
        and metadata (:meth:`set_metadata` by key) are recorded by two
        git-annex processes that run in the background, because git-annex
        needs milliseconds per key for each, and content can stream
        meanwhile (into the annex by key, :meth:`reinject`). Call
        :meth:`Registration.wait` before anything that needs the URLs
        (:meth:`get`) and before committing.
        """
        items = [(key, _check_path(path), url, fields) for key, path, url, fields in items]
        links = self.link([(k, p) for k, p, _, _ in items]) if items else []
        return Registration(items, links, {
            "registerurl": lambda: self.registerurl([(k, u) for k, _, u, _ in items]),
            "metadata": lambda: self.set_metadata([(k, f) for k, _, _, f in items],
                                                  by_key=True),
        })

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
        """Return those of ``paths`` that are annexed files with content here."""
        lines = [_check_path(p) for p in paths]
        if not lines:
            return set()
        with self._batch(["find", "--batch", "--json"], lines) as proc:
            answers = list(proc.records())
        return {line for line, rec in zip(lines, answers) if rec is not None}

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
            target = os.readlink(self.path / path)
        except OSError:
            return None
        parts = target.replace(os.sep, "/").split("/")
        if (len(parts) >= 4 and parts[-1] == parts[-2] and parts[-6:-4] == ["annex", "objects"]
                and _key_problem(parts[-1]) is None):
            return parts[-1]
        return None

    def discard(self, paths: Sequence[str | os.PathLike]) -> None:
        """Take files out of the index and the work tree (not committed yet:
        e.g. registered files whose content could not be fetched)."""
        lines = [_check_path(p) for p in paths]
        if not lines:
            return
        proc = subprocess.run(
            ["git", "rm", "--cached", "-q", "--ignore-unmatch",
             "--pathspec-from-file=-", "--pathspec-file-nul"],
            cwd=self.path, input="\0".join(lines), capture_output=True, text=True,
            encoding="utf-8", errors="surrogateescape")
        if proc.returncode != 0:
            raise AnnexError(f"git rm --cached failed: {proc.stderr.strip()}")
        for line in lines:
            path = self.path / line
            if path.is_symlink() or path.is_file():
                path.unlink()
            parent = path.parent
            while parent != self.path and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
