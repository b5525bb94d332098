"""One ``fmrif-download`` at a time per dataset, and interrupts that unwind.

Two runs in one dataset at once would each do all the work, and the loser
would meet git's own ``index.lock`` and its advice to remove the file by
hand while the other run still works. :func:`dataset_lock` therefore holds
an advisory lock (``flock``) on ``.git/fmrif/download.lock`` for the whole
run: the operating system drops it when the holder dies, however it dies,
so a killed run never leaves it behind. The holder writes its process ID
and start time into the file, and empties it when it ends normally; a file
that is not empty when the lock is taken was left by a run that was killed,
and then a ``.git/index.lock`` younger than that run's start is that run's
leftover (git leaves it when killed while committing) and is removed.

:func:`signals_interrupt` makes SIGTERM (a plain ``kill``, a scheduler's
time limit) and SIGHUP (a closed terminal) end the run the way Ctrl-C does:
an :class:`Interrupted` exception in the main thread, which unwinds every
``with`` block, so batch processes and their special remotes are stopped
(:mod:`.annex`) and the lock is released.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind
    fcntl = None

lgr = logging.getLogger("datalad.fmrif.runguard")

LOCK_NAME = "download.lock"


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal (SIGINT, SIGTERM, SIGHUP)."""

    def __init__(self, signame: str = "SIGINT"):
        super().__init__(signame)
        self.signame = signame


def _holder(text: str) -> tuple[int | None, float | None]:
    """(process ID, start time) written by the lock's holder, if any."""
    fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
    try:
        return int(fields["pid"]), float(fields["started"])
    except (KeyError, ValueError):
        return None, None


def _gitdir(root: Path) -> Path:
    dotgit = root / ".git"
    if dotgit.is_file():  # a worktree or submodule: "gitdir: PATH"
        target = dotgit.read_text().partition(":")[2].strip()
        return (root / target).resolve()
    return dotgit


@contextlib.contextmanager
def dataset_lock(root: Path):
    """Hold the dataset for one run of fmrif-download; wait for another one.

    While another process holds it, a warning names that process once, and
    the run waits (Ctrl-C stops the waiting).
    """
    own = _gitdir(Path(root)) / "fmrif"
    own.mkdir(parents=True, exist_ok=True)
    path = own / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, _ = _holder(os.pread(fd, 200, 0).decode(errors="replace"))
                lgr.warning(
                    "another fmrif-download (process %s) is working in this "
                    "dataset; waiting for it to finish (Ctrl-C stops waiting)",
                    pid if pid is not None else "unknown")
                fcntl.flock(fd, fcntl.LOCK_EX)
        left = os.pread(fd, 200, 0).decode(errors="replace")
        pid, started = _holder(left)
        if pid is not None:
            _remove_stale_index_lock(path.parent.parent, pid, started)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} started={time.time():.3f}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # ended, not killed
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_index_lock(gitdir: Path, pid: int, started: float) -> None:
    """Remove the ``index.lock`` a killed run left (see module docstring)."""
    lock = gitdir / "index.lock"
    try:
        made = lock.stat().st_mtime
    except FileNotFoundError:
        return
    if made + 1 < started:  # older than that run: not its own
        return
    lock.unlink(missing_ok=True)
    lgr.info("removed .git/index.lock left by fmrif-download process %s, "
             "which was killed while committing", pid)


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGHUP raise :class:`Interrupted` (as SIGINT raises
    KeyboardInterrupt) while the block runs; only in the main thread, where
    Python delivers signals. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    kinds = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    before = {s: signal.signal(s, handler) for s in kinds}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
