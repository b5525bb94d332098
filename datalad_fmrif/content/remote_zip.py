"""The ``fmrif`` remote fetches a whole scan resource as one zip, when that pays.

git-annex asks a special remote for one key at a time, so ``datalad get
sub-01/`` would cost one request per file, and real XNAT spends tens of
milliseconds on each. A zip of a scan resource costs one request for all of
its files. This module decides when to take one, fetches it through the
streaming zip parser of :mod:`datalad_fmrif.content.zipstream` (every entry verified
against its key's size and MD5 while it streams), and serves the next keys
git-annex asks for from what the zip brought.

The rule (measured: see ``benchmarks/README.md``):

- The first key of a scan resource that one ``git annex get`` asks for is
  fetched on its own: a single ``datalad get FILE`` stays one request of
  that file's bytes.
- When the same ``git annex get`` asks for a second key of that resource,
  and the dataset's session manifest (``.datalad/fmrif/sessions/``, written
  by ``fmrif-download``) lists at least ``MIN_MISSING`` files of the
  resource whose content is not here, one zip brings all of those, if their
  size fits the cache's bound. Later keys of the resource are then served
  from the cache without a request. Anything the zip did not bring intact
  is fetched per file, as before.

"One ``git annex get``" is the git-annex process that started this remote:
all remote processes of a ``get -J N`` share it as their parent, so they
share one cache directory, ``.git/fmrif/zips/<git-annex pid>/``, with one
directory per resource. A lock file per resource makes sure one process
zips while the others wait and then take their keys from it.

What the cache promises (``docs/guarantees.md``):

- it holds only verified entries, each in a file named by its key (one
  folder for the run, so that a key is found without asking git-annex for
  its URLs first); an entry being written is a ``.part`` file, never served;
- a served entry is moved out (it is then git-annex's temporary file, which
  git-annex checks against the key once more);
- it is bounded: a zip is taken only while the cache of the run plus the
  zip's wanted bytes stay under ``MAX_CACHE_BYTES``;
- it is removed when the remote processes end, and whatever a killed run
  left behind is removed by the next run of the remote (each process of a
  run holds a shared lock on the run's ``alive`` file; a run whose lock is
  free is over, whether its processes ended or were killed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote

lgr = logging.getLogger("datalad.fmrif.remote")

#: zip a resource only when at least this many of its files lack content here
MIN_MISSING = 2
#: the most bytes the cache of one ``git annex get`` may hold
MAX_CACHE_BYTES = 4 << 30

_MANIFEST_DIR = Path(".datalad", "fmrif", "sessions")
_DONE = "zip-done"  # in a resource directory: its zip was taken (or refused)
_LOCK = "lock"
_ALIVE = "alive"  # in a run directory: shared-locked by each of its processes
_ENTRIES = "entries"  # in a run directory: the verified entries, named by key


def cache_root(gitdir: str | os.PathLike) -> Path:
    return Path(gitdir) / "fmrif" / "zips"


def remove_stale(gitdir: str | os.PathLike) -> None:
    """Remove the caches of runs that no remote process holds any more.

    Every remote process of a run holds a shared lock on the run's
    ``alive`` file while it lives; the kernel drops it when the process ends
    or is killed. A run whose lock can be taken exclusively is over.
    """
    root = cache_root(gitdir)
    try:
        runs = list(root.iterdir())
    except OSError:
        return
    for run in runs:
        if _over(run):
            shutil.rmtree(run, ignore_errors=True)


def _over(run: Path) -> bool:
    """No process holds the run's ``alive`` lock (or it never got one)."""
    try:
        fd = os.open(run / _ALIVE, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


class ResourceZips:
    """The zip-by-resource path of one remote process.

    ``gitdir`` is the repository's git directory (git-annex's GETGITDIR),
    ``server`` the XNAT base URL the keys' URLs start with.
    """

    def __init__(self, server: str, gitdir: str | os.PathLike):
        self.server = server
        self.gitdir = Path(gitdir)
        self.run = cache_root(gitdir) / str(os.getppid())
        self.entries = self.run / _ENTRIES
        self._dataset: Path | None = None
        self._touched: set[Path] = set()
        self._alive: int | None = None

    # -- the hooks of transfer_retrieve -----------------------------------------

    def cached(self, key: str, dest: str | os.PathLike) -> bool:
        """Put the content of ``key`` at ``dest`` if a zip of this run
        brought it: no request, and not even its URLs asked of git-annex
        (a protocol round trip and a read of git-annex's branch per key)."""
        if self._alive is None:
            self._join_run()
        return self._take(key, dest)

    def retrieve(self, key: str, url_paths: Sequence[str], dest: str | os.PathLike,
                 xnat: Callable[[], object]) -> bool:
        """Put the content of ``key`` at ``dest`` from a resource zip, after
        :meth:`cached` said the run's cache does not hold it yet.

        ``url_paths`` are the key's URLs without the server; ``xnat`` gives
        the process's logged-in session (called only when a zip is fetched).
        Returns False when the key is to be fetched on its own. Raises what
        the login raises (a rejected credential is not a per-file problem).
        """
        for path in url_paths:
            folder, sep, name = path.partition("/files/")
            if not sep or not name or not folder.startswith("/data/experiments/"):
                continue
            rdir = self.run / hashlib.sha1(folder.encode()).hexdigest()[:16]
            try:
                rdir.mkdir(parents=True)
            except FileExistsError:
                pass  # a key of this resource was asked before in this run
            else:
                self._touched.add(rdir)
                return False  # the first: this key alone
            self._touched.add(rdir)
            with _locked(rdir / _LOCK):
                if not (rdir / _DONE).exists():
                    self._zip(rdir, folder, xnat)
                return self._take(key, dest)
        return False

    def _join_run(self) -> None:
        """Hold the run's ``alive`` lock, then remove what killed runs left."""
        self.run.mkdir(parents=True, exist_ok=True)
        self._alive = os.open(self.run / _ALIVE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._alive, fcntl.LOCK_SH)
        remove_stale(self.gitdir)

    # -- the zip -------------------------------------------------------------------

    def _zip(self, rdir: Path, folder: str, xnat) -> None:
        """Fetch the missing files of ``folder`` into the run's entries if
        that pays; mark ``rdir`` done either way."""
        from .bulk import fetch_resource_zip

        try:
            missing = self.missing_here(folder)
            wanted = sum(f.size for f in missing)
            if len(missing) < MIN_MISSING:
                lgr.debug("zip of %s: %d file(s) missing here; fetching per file",
                          folder, len(missing))
                return
            if self._cached_bytes() + wanted > MAX_CACHE_BYTES:
                lgr.debug("zip of %s: %d bytes would overfill the cache; fetching "
                          "per file", folder, wanted)
                return
            written, failed = fetch_resource_zip(xnat(), folder, missing, self.entries)
            lgr.debug("zip of %s: %d of %d files verified%s", folder, len(written),
                      len(missing), f"; {next(iter(failed.values()))}" if failed else "")
        finally:
            (rdir / _DONE).touch()

    def missing_here(self, folder: str) -> list:
        """The files of the resource at ``folder`` whose content is not here.

        From the session manifest (its files, sizes, MD5s and URLs) and the
        work tree (an annexed file is a symlink to its key, which exists only
        with content). Files that are not annexed symlinks (unlocked, or an
        adjusted branch) are left to the per-file path.
        """
        from .bulk import BulkFile
        from ..annex.keys import key_facts

        session = folder.split("/")[3]
        root = self._dataset_root()
        manifest = root / _MANIFEST_DIR / (
            "".join(c if c.isalnum() or c in "_.-" else "_" for c in session) + ".json")
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            entries = list(doc["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        found = []
        for entry in entries:
            try:
                url, path = str(entry["url"]), str(entry["path"])
                size, md5 = int(entry["size"]), str(entry["md5"]).lower()
            except (KeyError, TypeError, ValueError):
                continue
            if not url.startswith(self.server) or entry.get("missing_on_server"):
                continue
            efolder, sep, name = url[len(self.server):].partition("/files/")
            if efolder != folder or not sep:
                continue
            file = root / path
            try:
                key = os.path.basename(os.readlink(file))
            except OSError:
                continue  # not an annexed symlink here
            if file.exists() or key_facts(key) != (size, md5):
                continue  # content present, or another version than listed
            found.append(BulkFile(path=path, key=key, size=size, md5=md5,
                                  folder=folder, name=unquote(name)))
        return found

    def _dataset_root(self) -> Path:
        if self._dataset is None:
            if self.gitdir.name == ".git" and self.gitdir.is_dir():
                self._dataset = self.gitdir.parent
            else:  # a .git file (submodule, worktree): the work tree we run in
                here = Path.cwd()
                self._dataset = next((p for p in (here, *here.parents)
                                      if (p / ".git").exists()), here)
        return self._dataset

    def _cached_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.run):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    # -- serving and cleaning up -----------------------------------------------------

    def _take(self, key: str, dest) -> bool:
        """Move the verified entry of ``key`` to ``dest``, if the cache has it."""
        from ..annex.keys import key_facts

        entry = self.entries / key
        size, _md5 = key_facts(key)
        try:
            if size is None or entry.stat().st_size != size:
                return False
            os.replace(entry, dest)
        except FileNotFoundError:
            return False  # not there, or another process took it first
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(entry, dest)
            entry.unlink(missing_ok=True)
        return True

    def close(self) -> None:
        """Remove the resource markers this process made, and the whole run,
        entries and all, when this is its last process (the last of a
        ``get -J`` to end): an entry no key was asked for is not kept."""
        for rdir in self._touched:
            shutil.rmtree(rdir, ignore_errors=True)
        self._touched.clear()
        if self._alive is not None:
            os.close(self._alive)
            self._alive = None
            if _over(self.run):
                shutil.rmtree(self.run, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.run.parent.rmdir()


class _locked:
    """An exclusive lock on a file (released by the kernel if we are killed)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
