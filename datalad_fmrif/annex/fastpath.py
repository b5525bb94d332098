"""The fast path: what git-annex would record and make, done directly in bulk.

Where a repository is plain (:func:`supported`), four things that would
cost git-annex a process round, a journal file or a git object per file are
done here: the records of the git-annex branch as one commit git-annex
merges (:meth:`FastPath.write_logs`, text from :mod:`datalad_fmrif.annexlog`),
the annex symlinks (:meth:`FastPath.link`), verified content moved in under
its key (:class:`Ingest`), and the crash journal of that move
(:meth:`FastPath.unrecorded_keys`). Everywhere else git-annex's own commands
do the same jobs (``fromkey``, ``registerurl``, ``reinject``), and
``DATALAD_FMRIF_FAST_PATH=0`` asks for them everywhere (the test suite runs
the download tests both ways).

Why ~500 lines: the four jobs share the key locations (``examinekey``) and
the one decision, and the crash journal only makes sense next to the move
it protects.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..annexlog import BranchLogs, appended, log_files
from .batch import AnnexError, _check_line_safe, _check_path, _failure, _true
from .keys import key_problem as _key_problem, promises

if TYPE_CHECKING:
    from .repo import Annex

# Where records for the git-annex branch wait to be merged: git-annex merges
# every ref whose name ends in "/git-annex" into its branch (as it does a
# remote's), so one under refs/fmrif/ is merged and never shown as a branch.
LOGS_REFS = "refs/fmrif/"

# Verified content handed to ``git annex reinject`` goes in batches of about
# this many files, so that git-annex works while more content arrives.
INJECT_BATCH = 400


# Set to 0/false/no/off to make git-annex's own commands do every job.
FAST_PATH_ENV = "DATALAD_FMRIF_FAST_PATH"


def plain_links(repo: Path, config: dict[str, str]) -> bool:
    """Whether annexed files in ``repo`` are plain symlinks into the annex
    (``config``: the repository's git configuration)."""
    if os.name == "nt" or config.get("core.symlinks", "true").lower() in (
            "false", "no", "off", "0"):
        return False
    if _true(config.get("annex.crippledfilesystem")):
        return False
    head = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=repo,
                          capture_output=True, text=True).stdout.strip()
    return not head.startswith("refs/heads/adjusted/")


def supported(repo: Path, config: dict[str, str], remote: str | None = None) -> bool:
    """THE decision whether the fast path may do git-annex's jobs in ``repo``.

    It may where git-annex would do exactly what it does: annexed files are
    plain symlinks (no crippled file system, no adjusted branch, symlinks
    on), records go to the git-annex branch (not a private repository, nor
    about a private ``remote``; no tuned branch layout ``annex.tune.*``),
    content is stored as git-annex stores it (no shared repository
    permissions, no user hooks that freeze or thaw content); and the user
    has not switched it off (``DATALAD_FMRIF_FAST_PATH=0``).
    """
    if os.environ.get(FAST_PATH_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if _true(config.get("annex.private")) or (
            remote and _true(config.get(f"remote.{remote}.annex-private"))):
        return False
    if any(name.startswith("annex.tune.") for name in config):
        return False
    shared = config.get("core.sharedrepository", "false").lower()
    if shared not in ("false", "umask", "0", "no", "off"):
        return False
    if config.get("annex.freezecontent-command") or config.get("annex.thawcontent-command"):
        return False
    return plain_links(repo, config)


class FastPath:
    """The fast-path methods of :class:`~datalad_fmrif.annex.repo.Annex`."""

    def supported(self, remote: str | None = None) -> bool:
        """:func:`supported` for this repository, as its configuration is now."""
        return supported(self.path, self._config(), remote)

    def plain_links(self, config: dict[str, str] | None = None) -> bool:
        """:func:`plain_links` for this repository."""
        return plain_links(self.path, self._config() if config is None else config)

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
        that exists otherwise is a failed item. Where the fast path is not
        :meth:`supported` (a crippled file system, an adjusted branch, no
        symlinks, ...), this is :meth:`fromkey`. The links' blobs are written in
        one pack (``git fast-import``) before they are staged, so that git
        does not write a loose object for each (thousands of files, on a
        slow disk, and a ``git gc`` at the next commit).
        """
        items = []
        for key, path in pairs:
            _check_line_safe("key", key)
            path = _check_path(path)
            items.append((key, path, _key_problem(key)))
        if not self.supported():
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
        :meth:`supported` holds.
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
        if keys and self.supported():
            logs = BranchLogs()
            here = self.uuid()
            for key in keys:
                logs.add_present(key, here)
            self.write_logs(logs)

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


class Ingest:
    """Verified content entering the annex under its key (:meth:`Annex.ingest`).

    :meth:`add` takes a file whose size and MD5 the caller has checked while
    writing it (a verified zip entry), for one of the ``keys`` given at the
    start. Use as a context manager; :attr:`results` then has, for every key
    added, ``None`` (the content is in the annex) or why not.

    Where :meth:`Annex.supported` holds, the file is moved into
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
        self._direct = annex.supported()
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
        if not promises(key, size, md5):
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
