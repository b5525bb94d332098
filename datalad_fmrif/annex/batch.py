"""git-annex's own commands in ``--batch`` mode, and the processes behind them.

One process per operation, fed from a writer thread so that neither side
can block on a full pipe; stderr drained in the background; a process (and
its children) stopped on interrupt. What the batch protocol promises is in
:mod:`datalad_fmrif.annex.repo`'s docstring. Also the checks that keep an
item from breaking the line-based protocol, and result records shaped like
git-annex's own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..annexlog import url_ok

lgr = logging.getLogger("datalad.fmrif.annex")

# Keep this much of a process's stderr for error messages.
_STDERR_KEEP = 64 * 1024


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
