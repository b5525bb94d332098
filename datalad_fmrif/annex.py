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
import re
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from .annexlog import BranchLogs, appended, field_problem, log_files, url_ok

lgr = logging.getLogger("datalad.fmrif.annex")

__all__ = ["Annex", "AnnexError", "Ingest"]

# Key syntax git-annex accepts in batch input: BACKEND, optional fields
# (-s size, -m mtime, -S chunk size, -C chunk number), "--", name.
# Stricter than git-annex on the name (no whitespace: it would shift the
# "KEY URL" / "KEY PATH" split; no "/": never a sensible key name).
_KEY_RE = re.compile(r"[A-Za-z0-9_]+(?:-[smSC][0-9]+)*--[^\s/]+")

# Keep this much of a process's stderr for error messages.
_STDERR_KEEP = 64 * 1024

# The UUID git-annex gives its web remote (URLs no special remote claims).
WEB_UUID = "00000000-0000-0000-0000-000000000001"

# Where records for the git-annex branch wait to be merged: git-annex merges
# every ref whose name ends in "/git-annex" into its branch (as it does a
# remote's), so one under refs/fmrif/ is merged and never shown as a branch.
LOGS_REFS = "refs/fmrif/"

# Verified content handed to ``git annex reinject`` goes in batches of about
# this many files, so that git-annex works while more content arrives.
INJECT_BATCH = 400


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "yes", "on", "1")


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
    if not url_ok(url):
        raise AnnexError(
            f"URL {url!r} is empty or contains whitespace (percent-encode it); "
            "nothing was registered")
    return url


def _key_problem(key: str) -> str | None:
    if _KEY_RE.fullmatch(key):
        return None
    return f"not a valid git-annex key: {key!r}"




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
            # the caller gave up (exception, abandoned generator, a signal)
            _stop(self._proc)
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


def _descendants(pid: int) -> list[int]:
    """Process IDs of every descendant of ``pid`` (Linux: from /proc; elsewhere
    none are known)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a git-annex process and everything it started, as Ctrl-C would.

    A terminal's Ctrl-C reaches the whole process group; SIGTERM to the
    ``datalad`` process alone (a plain ``kill``, a scheduler's time limit)
    reaches nobody else, and git-annex's special-remote processes and its
    ``git`` helpers would be left running, holding transfer locks. So each
    of them gets SIGINT, and SIGKILL if still there after ``grace`` seconds.
    """
    import signal

    family = [proc.pid] + _descendants(proc.pid)
    for pid in family:
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace
    for pid in family:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


class _Background:
    """``fn(*args)`` in a thread; :meth:`result` waits and returns (or raises)."""

    def __init__(self, fn, *args):
        self._outcome: list = []
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._outcome.append((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self._outcome.append((False, e))

    def result(self):
        self._thread.join()
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


class Annex:
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
        git-annex stages each new file in the index, ready to be committed.
        Re-registering a path with the same key succeeds; a
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
        symlinks), this is :meth:`fromkey`. The links' blobs are written in
        one pack (``git fast-import``) before they are staged, so that git
        does not write a loose object for each (thousands of files, on a
        slow disk, and a ``git gc`` at the next commit).
        """
        items = []
        for key, path in pairs:
            _check_line_safe("key", key)
            path = _check_path(path)
            items.append((key, path, _key_problem(key)))
        if not self.plain_links():
            return self.fromkey([(k, p) for k, p, _ in items])
        keys = [k for k, _, problem in items if not problem]
        objects = iter(self._object_paths(keys))
        results, made, targets = [], [], set()
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
                targets.add(target)
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
            # the links' blobs first go into one pack, so that git finds them
            # there instead of writing a loose object for each
            self._fast_import(b"blob\ndata %d\n%s\n" % (len(t), t)
                              for t in map(os.fsencode, targets))
            proc = subprocess.run(
                ["git", "update-index", "--add", "-z", "--stdin"], cwd=self.path,
                input="\0".join(made) + "\0", capture_output=True, text=True,
                encoding="utf-8", errors="surrogateescape")
            if proc.returncode != 0:
                raise AnnexError(f"git update-index could not stage {len(made)} new "
                                 f"files: {proc.stderr.strip() or proc.returncode}")
        return results

    def _config(self) -> dict[str, str]:
        """The repository's git configuration, as git reads it now."""
        out = subprocess.run(["git", "config", "-z", "--list"], cwd=self.path,
                             capture_output=True, text=True, encoding="utf-8",
                             errors="surrogateescape").stdout
        config = {}
        for entry in out.split("\0"):
            name, given, value = entry.partition("\n")
            if name:
                # a name without "=" in the file has no value, and git (and
                # git-annex) read it as the boolean true
                config[name] = value if given else "true"
        return config

    def plain_links(self, config: dict[str, str] | None = None) -> bool:
        """Whether annexed files here are plain symlinks into the annex
        (``config``: :meth:`_config`, if the caller has read it already)."""
        config = self._config() if config is None else config
        if os.name == "nt" or config.get("core.symlinks", "true").lower() in (
                "false", "no", "off", "0"):
            return False
        if _true(config.get("annex.crippledfilesystem")):
            return False
        head = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=self.path,
                              capture_output=True, text=True).stdout.strip()
        return not head.startswith("refs/heads/adjusted/")

    def _logs_direct(self, remote: str | None = None,
                     config: dict[str, str] | None = None) -> bool:
        """Whether records may go to the git-annex branch directly (:meth:`write_logs`).

        Not in a private repository, nor about a private remote (git-annex
        keeps such records out of the branch), nor with a tuned layout of
        the branch (``annex.tune.*``). ``config`` as for :meth:`plain_links`.
        """
        config = self._config() if config is None else config
        if _true(config.get("annex.private")) or (
                remote and _true(config.get(f"remote.{remote}.annex-private"))):
            return False
        return not any(name.startswith("annex.tune.") for name in config)

    def _content_direct(self) -> bool:
        """Whether verified content may be moved into ``.git/annex/objects``
        here as git-annex would (:class:`Ingest`): plain symlinks, no shared
        repository permissions, no hooks of the user's to freeze content."""
        config = self._config()
        shared = config.get("core.sharedrepository", "false").lower()
        return (self.plain_links(config) and self._logs_direct(config=config)
                and shared in ("false", "umask", "0", "no", "off")
                and not config.get("annex.freezecontent-command")
                and not config.get("annex.thawcontent-command"))

    def uuid(self, remote: str | None = None) -> str:
        """The git-annex UUID of this repository, or of a remote of it."""
        name = f"remote.{remote}.annex-uuid" if remote else "annex.uuid"
        value = self._config().get(name, "")
        if not value:
            raise AnnexError(f"git config has no {name}: is "
                             f"{'the remote ' + remote if remote else 'git-annex'} "
                             "set up here?")
        return value

    def _examine(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Each key's ``(hashdirlower, objectpath)``: where its logs are in the
        git-annex branch, and where its content is in the annex (relative to
        the root). One ``git annex examinekey --batch`` for the keys not
        asked about before."""
        keys = list(dict.fromkeys(keys))
        unknown = [k for k in keys if k not in self._where]
        if unknown:
            with self._batch(["examinekey", "--batch",
                              "--format=${hashdirlower} ${objectpath}\n"], unknown) as proc:
                answers = [line.rstrip("\n").split(" ", 1) for line in proc.lines()]
            if len(answers) != len(unknown) or not all(
                    len(a) == 2 and a[1].replace(os.sep, "/").split("/")[-1] == k
                    for a, k in zip(answers, unknown)):
                raise AnnexError("git-annex examinekey did not name a location for "
                                 "every key")
            self._where.update((k, (a[0], a[1])) for k, a in zip(unknown, answers))
        return {k: self._where[k] for k in keys}

    def _object_paths(self, keys: Sequence[str]) -> list[str]:
        """``.git/annex/objects/...`` path of each key (relative to the root)."""
        where = self._examine(keys)
        return [where[k][1] for k in keys]

    # -- the git-annex branch -------------------------------------------------------

    def write_logs(self, logs: BranchLogs) -> None:
        """Add records to the git-annex branch: one commit, merged by git-annex.

        git-annex writes each record of its own as a journal file and then a
        loose object: milliseconds per record on a local disk, and three
        records per file (URL, location, metadata) cost 45 s for 8,000 files.
        Here all records go into one pack (``git fast-import``), as a commit
        on top of the git-annex branch, of a ref ``refs/fmrif/<id>/git-annex``
        that git-annex then merges into its branch as it merges a remote's
        git-annex branch (its internals documentation recommends exactly this
        way of changing the branch). A log file that exists gets the new
        lines after its own, so the commit is what git-annex's union merge
        makes of it: git-annex fast-forwards to it, and where its branch has
        moved meanwhile, the union merge keeps every line of both. Once
        merged, the ref is deleted; a ref left by a killed run is merged by
        the next git-annex command all the same. Only for a repository where
        :meth:`_logs_direct` holds.
        """
        keys = logs.keys
        if not keys:
            return
        bad = next((k for k in keys if _key_problem(k)), None)
        if bad is not None:
            raise AnnexError(f"{_key_problem(bad)}; nothing was recorded")
        now = time.time()
        hashdirs = {k: where[0] for k, where in self._examine(keys).items()}
        files = dict(log_files(logs, hashdirs, now))
        parent = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "refs/heads/git-annex^{commit}"],
            cwd=self.path, capture_output=True, text=True).stdout.strip()
        before = self._branch_files(parent, files) if parent else {}
        ref = f"{LOGS_REFS}{uuidlib.uuid4().hex}/git-annex"
        message = f"datalad-fmrif: records of {len(keys)} annexed keys\n".encode()

        def stream():
            yield (f"commit {ref}\ncommitter {self._committer(now)}\n".encode()
                   + b"data %d\n" % len(message) + message)
            if parent:
                yield f"from {parent}\n".encode()
            for path, lines in files.items():
                content = appended(before.get(path, b""), lines)
                yield b"M 100644 inline %s\ndata %d\n%s\n" % (
                    path.encode(), len(content), content)
            yield b"\n"

        self._fast_import(stream())
        self._merge_logs(ref, keys[0])

    def _branch_files(self, commit: str, paths) -> dict[str, bytes]:
        """The content of those of ``paths`` that ``commit`` has (one listing
        of its tree, then the blobs by name: looking up each path in a
        tree of thousands of entries costs git half a millisecond)."""
        listing = subprocess.run(["git", "ls-tree", "-r", "-z", "--full-tree", commit],
                                 cwd=self.path, capture_output=True).stdout
        blobs = []  # (blob, path): log files of the same content share a blob
        for entry in listing.split(b"\0"):
            meta, _, name = entry.partition(b"\t")
            path = name.decode("utf-8", "surrogateescape")
            if path in paths:
                _, kind, sha = meta.split()
                if kind == b"blob":
                    blobs.append((sha, path))
        if not blobs:
            return {}
        out = subprocess.run(["git", "cat-file", "--batch"], cwd=self.path,
                             input=b"".join(sha + b"\n" for sha, _ in blobs),
                             capture_output=True).stdout
        content, pos = {}, 0
        for _, path in blobs:
            end = out.index(b"\n", pos)
            size = int(out[pos:end].split()[2])
            content[path] = out[end + 1:end + 1 + size]
            pos = end + 2 + size
        return content

    def _committer(self, now: float) -> str:
        ident = subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], cwd=self.path,
                               capture_output=True, text=True).stdout.strip()
        return ident or f"datalad-fmrif <datalad-fmrif@localhost> {int(now)} +0000"

    def _fast_import(self, commands: Iterable[bytes]) -> None:
        """Feed ``commands`` to one ``git fast-import`` as they come (a
        stream that ends early, a killed run, imports nothing: ``done``)."""
        proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=self.path,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            proc.stdin.write(b"feature done\n")
            for chunk in commands:
                proc.stdin.write(chunk)
            proc.stdin.write(b"done\n")
        except BrokenPipeError:
            pass  # fast-import stopped: its error follows
        except BaseException:
            proc.kill()
            raise
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            error = proc.stderr.read()
            proc.wait()
        if proc.returncode != 0:
            # fast-import leaves a crash report in the git directory when it
            # dies (a full disk): its error is in the message, the file is
            # only litter that the user would have to find and remove
            gitdir = subprocess.run(["git", "rev-parse", "--absolute-git-dir"],
                                    cwd=self.path, capture_output=True,
                                    text=True).stdout.strip()
            if gitdir:
                Path(gitdir, f"fast_import_crash_{proc.pid}").unlink(missing_ok=True)
            raise AnnexError("git fast-import failed: "
                             + error.decode(errors="replace").strip()[-2000:])

    def _logs_refs(self) -> list[str]:
        """``objectname refname ...`` of every ref under ``refs/fmrif/``."""
        return subprocess.run(
            ["git", "for-each-ref", "--format=%(objectname) %(refname)", LOGS_REFS],
            cwd=self.path, capture_output=True, text=True).stdout.split()

    def merge_leftover_logs(self) -> None:
        """Merge and delete the refs of records a killed run wrote
        (:meth:`write_logs`) but did not live to see merged."""
        if not self._logs_refs():
            return
        proc = subprocess.run(
            ["git-annex", "merge", "-c", "annex.merge-annex-branches=true"],
            cwd=self.path, capture_output=True, text=True)
        self._delete_merged_logs(None, proc)

    def _merge_logs(self, ref: str, key: str) -> None:
        """Have git-annex merge ``ref`` (any command that reads a key's logs
        does; ``-c``: even where automatic merging is switched off), then
        delete every merged ref under ``refs/fmrif/``."""
        proc = subprocess.run(
            ["git-annex", "metadata", "-c", "annex.merge-annex-branches=true",
             "--json", "--key", key], cwd=self.path, capture_output=True, text=True)
        self._delete_merged_logs(ref, proc)

    def _delete_merged_logs(self, ref: str | None,
                            proc: subprocess.CompletedProcess) -> None:
        refs = self._logs_refs()
        merged = []
        for sha, name in zip(refs[::2], refs[1::2]):
            if subprocess.run(["git", "merge-base", "--is-ancestor", sha,
                               "refs/heads/git-annex"], cwd=self.path).returncode == 0:
                merged.append((name, sha))
            elif name == ref:
                raise AnnexError(
                    "git-annex did not merge the new records into its branch: "
                    + (proc.stderr.strip() or f"exit code {proc.returncode}"))
        if merged:
            subprocess.run(["git", "update-ref", "--stdin"], cwd=self.path, text=True,
                           input="".join(f"delete {n} {sha}\n" for n, sha in merged),
                           capture_output=True)

    def record_present(self, keys: Iterable[str]) -> None:
        """Record in the location log that this repository has these keys'
        content: for content :class:`Ingest` moved in itself (git-annex
        records what it moves in)."""
        keys = list(keys)
        if keys and self._logs_direct():
            logs = BranchLogs()
            here = self.uuid()
            for key in keys:
                logs.add_present(key, here)
            self.write_logs(logs)

    def _own_dir(self) -> Path:
        """``.git/fmrif`` (made if need be): datalad-fmrif's files of this
        repository, never in the work tree."""
        gitdir = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=self.path,
                                capture_output=True, text=True).stdout.strip()
        if not gitdir:
            raise AnnexError(f"{self.path} is not a git repository")
        own = Path(gitdir) / "fmrif"
        own.mkdir(exist_ok=True)
        return own

    def unrecorded_keys(self) -> Path:
        """The file where :class:`Ingest` lists each key before it moves the
        key's content in, until it has recorded it: what a killed run leaves
        there, :meth:`record_unrecorded` records."""
        return self._own_dir() / "unrecorded-keys"

    def record_unrecorded(self) -> None:
        """Record the content that a killed run moved into the annex but did
        not live to record (see :meth:`unrecorded_keys`)."""
        listing = self.unrecorded_keys()
        try:
            keys = [k for k in dict.fromkeys(listing.read_text().split())
                    if _key_problem(k) is None]
        except FileNotFoundError:
            return
        where = self._examine(keys)
        self.record_present(k for k in keys if (self.path / where[k][1]).is_file())
        listing.unlink(missing_ok=True)

    def ingest(self, keys: Iterable[str]) -> "Ingest":
        """Take verified content of ``keys`` into the annex: see :class:`Ingest`."""
        return Ingest(self, list(keys))

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
        if self._logs_direct(remote):
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

    def commit(self, paths: Sequence[str | os.PathLike], message: str) -> None:
        """Commit exactly ``paths`` as they are in the work tree.

        They are staged with ``git update-index`` (the files' git-annex
        attributes decide, as always, what goes to git and what to the
        annex), and committed with ``git commit``: of the whole index when
        nothing else is staged, else with ``--only`` and the paths (git
        matches every path of the index against every one given: seconds
        for thousands of files, so only where other staged changes must
        stay staged). Nothing to commit is no error. Raises AnnexError with
        git's answer.
        """
        lines = [_check_path(p) for p in paths]
        if not lines:
            return

        def git(*args, stdin: str = "") -> str:
            proc = subprocess.run(["git", *args], cwd=self.path, input=stdin,
                                  capture_output=True, text=True, encoding="utf-8",
                                  errors="surrogateescape")
            if proc.returncode != 0:
                raise AnnexError(f"git {args[0]} of {len(lines)} files failed: "
                                 + (proc.stderr.strip() or proc.stdout.strip()
                                    or f"exit code {proc.returncode}"))
            return proc.stdout

        pathspec = "\0".join(lines) + "\0"
        git("update-index", "--add", "-z", "--stdin", stdin=pathspec)
        staged = set(git("diff", "--cached", "--name-only", "--no-renames", "-z").split("\0"))
        staged.discard("")
        if not staged & set(lines):
            return  # nothing changed
        msgfile = self._own_dir() / "COMMIT_MSG"
        msgfile.write_text(message, encoding="utf-8")
        try:
            if staged <= set(lines):
                git("commit", "-q", "-F", str(msgfile))
            else:
                git("commit", "-q", "--only", "-F", str(msgfile),
                    "--pathspec-from-file=-", "--pathspec-file-nul", stdin=pathspec)
        finally:
            msgfile.unlink(missing_ok=True)

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


class Ingest:
    """Verified content entering the annex under its key (:meth:`Annex.ingest`).

    :meth:`add` takes a file whose size and MD5 the caller has checked while
    writing it (a verified zip entry), for one of the ``keys`` given at the
    start. Use as a context manager; :attr:`results` then has, for every key
    added, ``None`` (the content is in the annex) or why not.

    Where :meth:`Annex._content_direct` holds, the file is moved into
    ``.git/annex/objects`` at once and made read-only there, as git-annex
    does, and on leaving the block the location log records all of them in
    one commit (:meth:`Annex.write_logs`): the content is not hashed again,
    and no git-annex process runs per batch. Each key is listed in
    :meth:`Annex.unrecorded_keys` before its content moves, so that what a
    killed run moved in is recorded by the next (:meth:`Annex.record_unrecorded`). Elsewhere (an adjusted branch, a
    shared repository, hooks that freeze content) files go to ``git annex
    reinject --guesskeys`` in batches of ``INJECT_BATCH`` from a background
    thread, and git-annex hashes them again.

    :meth:`add` may be called from several threads at once.
    """

    def __init__(self, annex: Annex, keys: list[str]):
        self.annex = annex
        self.results: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._direct = annex._content_direct()
        self._objects = {k: where[1] for k, where in annex._examine(keys).items()} \
            if self._direct else {}
        self._listing = None
        if self._direct:
            self._listing = open(annex.unrecorded_keys(), "a", encoding="ascii")
        self._queue: list[tuple[str, Path]] = []
        self._ready = threading.Condition(self._lock)
        self._closing = False
        self._worker = None
        if not self._direct:
            self._worker = threading.Thread(target=self._reinject_batches, daemon=True,
                                            name="fmrif-annex-reinject")
            self._worker.start()

    def __enter__(self) -> "Ingest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, key: str, path: Path, *, size: int, md5: str) -> None:
        """Take the file at ``path`` (size and MD5 verified) as ``key``'s content."""
        if not (key.startswith(f"MD5E-s{size}--{md5}") or key == f"MD5-s{size}--{md5}"):
            self._done(key, f"the file checked as {size} bytes, MD5 {md5} is not "
                       f"the content of {key}")
            return
        if not self._direct:
            with self._ready:
                self._queue.append((key, Path(path)))
                self._ready.notify()
            return
        try:
            self._move_in(key, Path(path))
        except OSError as e:
            self._done(key, f"cannot move the verified file into the annex: "
                       f"{e.strerror or e}")
        else:
            self._done(key, None)

    def _move_in(self, key: str, src: Path) -> None:
        obj = self.annex.path / self._objects[key]
        with self._lock:  # listed before it moves: a kill cannot lose it
            self._listing.write(key + "\n")
            self._listing.flush()
        keydir = obj.parent
        keydir.parent.mkdir(parents=True, exist_ok=True)
        try:
            keydir.mkdir()
        except FileExistsError:
            if obj.exists():  # the content is here already
                src.unlink()
                return
            keydir.chmod(keydir.stat().st_mode | 0o200)
        src.chmod(src.stat().st_mode & ~0o222)
        os.replace(src, obj)
        keydir.chmod(keydir.stat().st_mode & ~0o222)

    def _done(self, key: str, why: str | None) -> None:
        with self._lock:
            # a key taken once stays taken (two files may share content)
            if self.results.get(key, "") is not None:
                self.results[key] = why

    def _reinject_batches(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: len(self._queue) >= INJECT_BATCH
                                     or self._closing, timeout=0.05)
                batch, self._queue = self._queue, []
                last = self._closing
            if batch:
                self._reinject(dict(batch))
            if last and not batch:
                return

    def _reinject(self, files: dict[str, Path]) -> None:
        keys = {str(p): k for k, p in files.items()}
        for rec in self.annex.reinject(list(files.values())):
            key = keys.get((rec.get("input") or [None])[0]) or rec.get("key")
            if key is None:
                continue
            msgs = "; ".join(m.strip() for m in rec.get("error-messages") or [] if m.strip())
            self._done(key, None if rec.get("success") else
                       f"git-annex did not take the verified file: {msgs or 'reinject failed'}")
        for key in files:
            if key not in self.results:
                self._done(key, "git-annex reinject gave no answer for this file")

    def close(self) -> None:
        """Wait for every file added; in direct mode, record them as here."""
        if self._worker is not None:
            with self._ready:
                self._closing = True
                self._ready.notify()
            self._worker.join()
            self._worker = None
            return
        if not self._direct:
            return
        self._direct = False  # once
        self.annex.record_present(k for k, why in self.results.items() if why is None)
        self._listing.close()
        Path(self._listing.name).unlink(missing_ok=True)
