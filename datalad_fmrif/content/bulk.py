"""Bulk content: one zip stream per scan resource, verified entry by entry.

Real XNAT spends tens of milliseconds on every request, so fetching a session
of thousands of DICOM files one request at a time costs minutes that one
stream per resource does not. XNAT zips a resource with

    GET /data/experiments/{EID}/scans/{SID}/resources/{RID}/files?format=zip

streamed chunked, with no Content-Length: it cannot be resumed, and it cannot
be verified as a whole. So every entry is verified on its own while it
streams: its size and MD5 against XNAT's listing (the file's git-annex key).
Entries are matched to the planned files by their name inside the resource;
an entry that is not wanted (a file of the resource the dataset already has,
a name with ``../``, anything unexpected) is read past and never written.
The entry name never becomes a path: a verified entry is written to a
temporary file named by its key, and only the annex layer puts it anywhere.

Verified files go into the annex under their key (:meth:`Annex.ingest`):
moved into ``.git/annex/objects`` and recorded in the location log, without
being hashed a second time, or where the repository needs git-annex to do
that, through ``git annex reinject --guesskeys``, which checks each file
against its key once more. Nothing is ever written to the work tree here
(the files' symlinks come from registration), and temporary files live in
``.git/fmrif/tmp``, so an interrupted run leaves no stray file in the
dataset.

Whatever a zip lacked or got wrong (a wrong digest, a stream that broke off,
an error page) is returned as failed, with the reason, for the caller to
fetch per file through the ``fmrif`` special remote, which resumes and
retries. A rejected credential is not a per-file problem: it is raised.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ..xnat.errors import CredentialRejected, XnatError
from ..xnat.session import XnatSession, looks_like_html
from .streams import BROKEN, peek, reader as body_reader
from .zipstream import BadZip, Reader, StreamEnded, copy_entry, entry_name, read_header

lgr = logging.getLogger("datalad.fmrif.bulk")

__all__ = [
    "BulkFile",
    "BulkResult",
    "fetch",
    "fetch_resource_zip",
    "fetch_stepwise",
    "remove_stale",
    "tmp_root",
]



@dataclass(frozen=True)
class BulkFile:
    """A planned file, as far as the bulk path needs it.

    ``folder`` is the server path of its resource
    (``/data/experiments/E/scans/S/resources/R``), ``name`` its name inside
    the resource (the zip entry's name after ``.../files/``).
    """

    path: str  # in the dataset
    key: str  # MD5E-s{size}--{md5}{ext}
    size: int
    md5: str
    folder: str
    name: str

    @classmethod
    def from_planned(cls, pf) -> BulkFile | None:
        """From a :class:`~datalad_fmrif.plan.PlannedFile`; None when it has
        no key (no digest from XNAT: nothing to verify an entry against)."""
        if not pf.key or not pf.md5:
            return None
        folder, sep, name = pf.url_path.partition("/files/")
        if not sep or not name:
            return None
        # the name as XNAT lists it (never unquoted from the URL: '%41' is
        # a name, not an 'A')
        return cls(path=pf.path, key=pf.key, size=pf.size, md5=pf.md5.lower(),
                   folder=folder, name=pf.file.name)


@dataclass
class BulkResult:
    """``done``: paths whose content is now in the annex; ``failed``: path ->
    why not (fetch those per file)."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    zips: int = 0  # zip requests made
    bytes: int = 0  # zip bytes read
    # why the whole bulk fetch stopped, when per-file requests would not help
    stopped: str | None = None


# ====================================================================== temp files

def tmp_root(dataset_root: str | os.PathLike) -> Path:
    """``.git/fmrif/tmp`` of the dataset (also when ``.git`` is a file)."""
    root = Path(dataset_root)
    git = root / ".git"
    if git.is_file():
        text = git.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            git = (root / text[len("gitdir:"):].strip()).resolve()
    return git / "fmrif" / "tmp"


def remove_stale(dataset_root: str | os.PathLike, older_than: float = 3600.0) -> None:
    """Remove temporary directories of bulk fetches that were killed."""
    base = tmp_root(dataset_root)
    if not base.is_dir():
        return
    now = time.time()
    for d in base.iterdir():
        if d.name.startswith("bulk-"):
            try:
                pid = int(d.name.split("-")[1])
            except (IndexError, ValueError):
                pid = None
            alive = pid is not None and _pid_alive(pid)
            if not alive or now - d.stat().st_mtime > older_than:
                shutil.rmtree(d, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fetch_resource_zip(
    xnat: XnatSession,
    folder: str,
    files: Sequence[BulkFile],
    tmpdir: str | os.PathLike,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Stream the zip of one resource; write the wanted entries, verified.

    ``files`` are the wanted files of the resource at ``folder``. Returns
    ``(written, failed)``: key -> temporary file (named by the key, in
    ``tmpdir``, made if need be) for each verified entry, and path -> reason
    for every wanted file that did not arrive intact. Reads past everything else. Raises
    CredentialRejected; every other problem makes failed entries. Setting
    ``cancel`` stops the stream at the next chunk (the rest is failed).
    """
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, list[BulkFile]] = {}
    for f in files:
        wanted.setdefault(f.name, []).append(f)
    written: dict[str, Path] = {}
    failed: dict[str, str] = {}

    def fail_rest(reason: str):
        for fs in wanted.values():
            for f in fs:
                if f.key not in written:
                    failed.setdefault(f.path, reason)

    retried = False
    while True:
        try:
            response = xnat.request("GET", folder + "/files", params={"format": "zip"},
                                    headers={"Accept-Encoding": "identity"}, stream=True)
        except CredentialRejected:
            raise
        except XnatError as e:
            fail_rest(f"zip of {folder}: {e}")
            return written, failed
        ctype = response.headers.get("Content-Type", "").lower()
        try:
            page = ctype.startswith("text/html") or looks_like_html(peek(response))
        except BROKEN + (OSError,) as e:
            response.close()
            fail_rest(f"zip of {folder}: the stream broke off ({type(e).__name__}) "
                      "after 0 bytes")
            return written, failed
        if not page:
            break
        response.close()
        # an expired session answered with a login page (by XNAT or a proxy)
        if not xnat.login_page(response, retried):
            fail_rest(f"zip of {folder}: the server sent an HTML page instead of a zip"
                      + (", also right after a fresh login" if retried else ""))
            return written, failed
        retried = True
    with response:
        reader = Reader(body_reader(response), progress, cancel)
        reader.start_with(response._fmrif_head)
        remaining = sum(len(fs) for fs in wanted.values())
        try:
            while remaining:
                entry = read_header(reader)
                if entry is None:
                    break
                name = entry_name(entry.name, wanted)
                targets = [f for f in wanted.get(name, []) if f.key not in written] \
                    if name is not None else []
                if not targets:
                    copy_entry(reader, entry, None, None)  # not ours: read past it
                    continue
                want = targets[0]
                tmp = tmpdir / want.key
                part = tmp.with_name(tmp.name + ".part")
                try:
                    with open(part, "wb") as out:
                        size, md5 = copy_entry(reader, entry, out, want.size)
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
                if size != want.size or md5 != want.md5:
                    part.unlink()
                    for f in targets:
                        failed[f.path] = (f"zip of {folder}: {name} has {size} bytes, MD5 "
                                          f"{md5}; XNAT's listing says {want.size} bytes, "
                                          f"MD5 {want.md5}")
                    continue
                part.rename(tmp)
                written[want.key] = tmp
                for f in targets:
                    failed.pop(f.path, None)
                remaining -= len(targets)
        except (StreamEnded, BadZip) as e:
            lgr.debug("zip of %s: %s", folder, e)
            fail_rest(f"zip of {folder}: {e}")
            return written, failed
        except OSError as e:  # reading breaks as StreamEnded: this is writing
            fail_rest(f"zip of {folder}: cannot write a verified file: {e.strerror or e}")
            return written, failed
    fail_rest(f"zip of {folder}: the file was not in the zip")
    return written, failed


# ====================================================================== the whole job

def fetch(
    xnat: XnatSession,
    annex,
    files: Iterable,
    *,
    jobs: int = 4,
    progress: Callable[[int], None] | None = None,
) -> BulkResult:
    """Get the content of ``files`` into the annex, one zip per resource:
    :func:`fetch_stepwise` without looking at the files as they arrive."""
    steps = fetch_stepwise(xnat, annex, files, jobs=jobs, progress=progress)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def fetch_stepwise(
    xnat: XnatSession,
    annex,
    files: Iterable,
    *,
    jobs: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Generator[list[str], None, BulkResult]:
    """Get the content of ``files`` into the annex, one zip per resource.

    Yields, while the other zips go on streaming, the paths whose content
    has entered the annex since the last yield (a resource's verified
    files, once its zip has ended), so that the caller can report what is
    complete; returns the whole :class:`BulkResult` at the end. Abandoning
    the generator stops the zips still streaming.

    ``files`` are :class:`~datalad_fmrif.plan.PlannedFile` (or
    :class:`BulkFile`) of files already registered or about to be (their
    symlinks may come before or after: content is stored under the key).
    ``jobs`` zips stream at a time; the verified entries of each go into the
    annex when it ends (:meth:`Annex.ingest`). ``progress`` is called with
    the number of zip bytes read since the last call.

    Returns what is in the annex now and, for the caller to fetch per file,
    what is not and why. Files without an XNAT digest are never fetched in
    bulk (nothing to verify them against).
    """
    result = BulkResult()
    groups: dict[str, list[BulkFile]] = {}
    by_key: dict[str, list[str]] = {}
    for f in files:
        bf = f if isinstance(f, BulkFile) else BulkFile.from_planned(f)
        if bf is None:
            result.failed[f.path] = "no MD5 from XNAT: fetched one by one"
            continue
        groups.setdefault(bf.folder, []).append(bf)
        by_key.setdefault(bf.key, []).append(bf.path)
    if not groups:
        return result
    started = time.monotonic()
    lgr.debug("bulk: %d files of %d resources, %d zips at a time",
              sum(len(g) for g in groups.values()), len(groups), jobs)
    tmpdir = Path(os.path.realpath(tmp_root(annex.path) / (
        f"bulk-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}")))
    try:
        tmpdir.mkdir(parents=True)
    except OSError as e:
        for fs in groups.values():
            for bf in fs:
                result.failed[bf.path] = f"cannot write to {tmpdir.parent}: {e.strerror or e}"
        return result
    lock = threading.Lock()

    def count(n: int):
        with lock:
            result.bytes += n
        if progress is not None:
            progress(n)

    cancel = threading.Event()
    sizes = {bf.key: (bf.size, bf.md5) for fs in groups.values() for bf in fs}

    def one(index: int, folder: str, ingest):
        if result.stopped:
            with lock:
                result.failed.update((bf.path, result.stopped) for bf in groups[folder])
            return
        written, failed = fetch_resource_zip(xnat, folder, groups[folder],
                                             tmpdir / str(index), count, cancel)
        with lock:
            result.zips += 1
            result.failed.update(failed)
            if xnat.pages_are_errors and not result.stopped:
                # XNAT sends pages even to a fresh session: per-file requests
                # would get the same, thousands of times
                result.stopped = (
                    f"XNAT at {xnat.server} answered with an HTML page instead of "
                    "data, also right after a fresh login; nothing more is "
                    "requested in this run. Open XNAT in a browser to see the "
                    "page (maintenance? a login page of a proxy?), then run the "
                    "command again")
                cancel.set()
        for key, path in written.items():
            size, md5 = sizes[key]
            ingest.add(key, path, size=size, md5=md5)

    pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="fmrif-bulk")
    try:
        with annex.ingest(by_key) as ingest:
            try:
                futures = {pool.submit(one, i, folder, ingest): folder
                           for i, folder in enumerate(groups)}
                ended: list[BulkFile] = []  # files of the zips that ended
                for fut in as_completed(futures):
                    fut.result()  # re-raises CredentialRejected (and bugs)
                    ended += groups[futures[fut]]
                    # in the annex now (with reinject, once its batch is in)
                    arrived = {bf for bf in ended if ingest.results.get(bf.key, "") is None}
                    if arrived:
                        ended = [bf for bf in ended if bf not in arrived]
                        yield [bf.path for bf in arrived]
            except BaseException:
                cancel.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for key, paths in by_key.items():
        if key not in ingest.results:
            continue
        why = ingest.results[key]
        for path in paths:
            if why is None:
                result.failed.pop(path, None)
                result.done.append(path)
            else:
                result.failed[path] = why
    lgr.debug("bulk: %d files in the annex, %d left for per-file transfer; %d zips, "
              "%d bytes in %.2fs", len(result.done), len(result.failed), result.zips,
              result.bytes, time.monotonic() - started)
    return result

