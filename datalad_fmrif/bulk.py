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

import hashlib
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from .xnat.errors import CredentialRejected, XnatError
from .xnat.session import XnatSession, looks_like_html

lgr = logging.getLogger("datalad.fmrif.bulk")

__all__ = [
    "BulkFile",
    "BulkResult",
    "fetch",
    "fetch_resource_zip",
    "remove_stale",
    "tmp_root",
]

CHUNK = 1 << 20

_LOCAL = 0x04034B50  # local file header
_CENTRAL = 0x02014B50  # central directory: no more entries
_END = 0x06054B50
_END64 = 0x06064B50
_DESCRIPTOR = 0x08074B50  # optional signature of a data descriptor

# what a broken connection looks like while reading a streamed body
_BROKEN = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    urllib3.exceptions.HTTPError,
    OSError,
)


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


# ====================================================================== reading a zip stream

class _StreamEnded(Exception):
    """The body ended (or broke off) where the zip needed more bytes."""


class _BadZip(Exception):
    """The stream is not a zip we can follow any further."""


class _Reader:
    """Buffered ``read``/``read_exact`` over a streamed response body."""

    def __init__(self, read1: Callable[[int], bytes], progress=None,
                 cancel: threading.Event | None = None):
        self._read1 = read1
        self._buf = b""
        self.consumed = 0
        self.progress = progress
        self.cancel = cancel

    def _more(self) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise _StreamEnded("stopped")
        try:
            chunk = self._read1(CHUNK)
        except _BROKEN as e:
            raise _StreamEnded(f"the stream broke off ({type(e).__name__}) after "
                               f"{self.consumed} bytes") from None
        if chunk and self.progress is not None:
            self.progress(len(chunk))
        return chunk

    def start_with(self, head: bytes) -> None:
        """Bytes of the body read before this reader was made."""
        self._buf = head + self._buf
        if head and self.progress is not None:
            self.progress(len(head))

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one), or b"" at the end of the body."""
        if not self._buf:
            self._buf = self._more()
        data, self._buf = self._buf[:n], self._buf[n:]
        self.consumed += len(data)
        return data

    def read_exact(self, n: int) -> bytes:
        parts, need = [], n
        while need:
            data = self.read(need)
            if not data:
                raise _StreamEnded(f"the stream ended after {self.consumed} bytes, "
                                   "inside a zip entry")
            parts.append(data)
            need -= len(data)
        return b"".join(parts)

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n:
            more = self._more()
            if not more:
                break
            self._buf += more
        return self._buf[:n]

    def unread(self, data: bytes) -> None:
        self._buf = data + self._buf
        self.consumed -= len(data)


@dataclass
class _Entry:
    name: str
    method: int
    flags: int
    crc: int
    csize: int | None  # None: unknown from the header (a data descriptor follows)
    usize: int | None
    zip64: bool


def _read_header(r: _Reader) -> _Entry | None:
    """The next local file header, or None at the central directory."""
    sig = r.peek(4)
    if len(sig) < 4:
        return None  # a zip without a central directory: the end all the same
    (magic,) = struct.unpack("<I", sig)
    if magic in (_CENTRAL, _END, _END64):
        return None
    if magic != _LOCAL:
        raise _BadZip(f"no zip entry header at byte {r.consumed}")
    head = r.read_exact(30)
    (_, _version, flags, method, _time, _date, crc, csize, usize, nlen,
     xlen) = struct.unpack("<IHHHHHIIIHH", head)
    raw_name = r.read_exact(nlen)
    extra = r.read_exact(xlen)
    name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
    zip64 = False
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos:pos + 4])
        body = extra[pos + 4:pos + 4 + size]
        if tag == 0x0001:
            zip64 = True
            values = [struct.unpack("<Q", body[i:i + 8])[0] for i in range(0, len(body) - 7, 8)]
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
        pos += 4 + size
    descriptor = bool(flags & 0x08)
    if descriptor and csize == 0 and usize == 0:
        csize = usize = None  # sizes follow the data
    return _Entry(name, method, flags, crc, csize, usize, zip64)


def _read_descriptor(r: _Reader, entry: _Entry, crc: int, csize: int, usize: int) -> None:
    """Read past the data descriptor; it must describe what was read."""
    (first,) = struct.unpack("<I", r.read_exact(4))
    if first == _DESCRIPTOR:
        (dcrc,) = struct.unpack("<I", r.read_exact(4))
    else:
        dcrc = first  # the signature is optional
    rest = r.peek(16)
    forms = (("<QQ", 16), ("<II", 8)) if entry.zip64 else (("<II", 8), ("<QQ", 16))
    for fmt, n in forms:
        if len(rest) >= n and struct.unpack(fmt, rest[:n]) == (csize, usize):
            r.read_exact(n)
            break
    else:
        raise _BadZip(f"the data descriptor of {entry.name!r} does not match its data")
    if dcrc != crc:
        raise _BadZip(f"CRC of zip entry {entry.name!r} does not match its data")


def _copy_entry(r: _Reader, entry: _Entry, out, expected_size: int | None):
    """Copy the data of ``entry`` to ``out`` (None: read past it).

    Returns (size, md5 hex). At most ``expected_size`` bytes are written (the
    size then says that there were more). The zip's own framing is checked
    (sizes, CRC): a stream that cannot be followed raises _BadZip.
    """
    digest = hashlib.md5()
    crc = 0
    usize = 0

    def take(data: bytes):
        nonlocal crc, usize
        if out is not None and (expected_size is None or usize + len(data) <= expected_size):
            out.write(data)
            digest.update(data)
        crc = zlib.crc32(data, crc)
        usize += len(data)

    def copy(n: int):
        while n:
            data = r.read(min(n, CHUNK))
            if not data:
                raise _StreamEnded(f"the stream ended inside {entry.name!r}")
            take(data)
            n -= len(data)

    if entry.flags & 0x01:
        raise _BadZip(f"zip entry {entry.name!r} is encrypted")
    if entry.method == 0:  # stored
        if entry.csize is not None:
            copy(entry.csize)
            csize = entry.csize
        elif expected_size is not None:
            # sizes only in the data descriptor: read the listing's size, then
            # a descriptor that describes exactly those bytes must follow
            copy(expected_size)
            csize = usize
        else:
            csize = _scan_stored(r, take)
    elif entry.method == 8:  # deflated; the stream marks its own end
        inflate = zlib.decompressobj(-15)
        csize = 0
        while not inflate.eof:
            want = CHUNK if entry.csize is None else min(CHUNK, entry.csize - csize)
            data = r.read(want) if want > 0 else b""
            if not data:
                raise _StreamEnded(f"the stream ended inside {entry.name!r}")
            csize += len(data)
            while data and not inflate.eof:
                take(inflate.decompress(data, 4 * CHUNK))  # bounded: no zip bomb
                data = inflate.unconsumed_tail
            if inflate.unused_data:
                r.unread(inflate.unused_data)
                csize -= len(inflate.unused_data)
        if entry.csize is not None and entry.csize != csize:
            raise _BadZip(f"zip entry {entry.name!r}: compressed size does not match")
    else:
        raise _BadZip(f"zip entry {entry.name!r} uses compression method {entry.method}")
    if entry.flags & 0x08:
        _read_descriptor(r, entry, crc, csize, usize)
    else:
        if entry.usize is not None and entry.usize != usize:
            raise _BadZip(f"zip entry {entry.name!r}: size does not match its header")
        if crc != entry.crc:
            raise _BadZip(f"CRC of zip entry {entry.name!r} does not match its data")
    return usize, digest.hexdigest()


def _scan_stored(r: _Reader, take) -> int:
    """A stored entry of unknown length: its end is the data descriptor whose
    CRC and sizes (4 or 8 bytes each) describe exactly the bytes before it."""
    crc, n = 0, 0
    window = b""
    while True:
        more = r.read(CHUNK)
        if not more:
            raise _StreamEnded("the stream ended inside a zip entry")
        window += more
        start = 0
        while True:
            at = window.find(b"PK\x07\x08", start)
            if at < 0 or len(window) - at < 24:
                break
            size = n + at
            body_crc = zlib.crc32(window[:at], crc)
            dcrc, c32, u32 = struct.unpack("<III", window[at + 4:at + 16])
            c64, u64 = struct.unpack("<QQ", window[at + 8:at + 24])
            if dcrc == body_crc and (c32 == u32 == size or c64 == u64 == size):
                take(window[:at])
                r.unread(window[at:])
                return size
            start = at + 1
        # keep a tail that may hold the start of a descriptor
        keep = max(0, len(window) - 23)
        take(window[:keep])
        crc = zlib.crc32(window[:keep], crc)
        n += keep
        window = window[keep:]


def _entry_name(zip_name: str, wanted) -> str | None:
    """The wanted name (a file's name inside its resource) that a zip entry
    carries, or None.

    XNAT names entries ``{session}/scans/{scan}-{type}/resources/{label}/
    files/{name}``, but the prefix depends on its version and on the
    ``structure`` it was asked for, so the entry is matched by the longest
    trailing run of its path components that is a wanted name. Names that
    are absolute, Windows paths, or have a ``..`` component never match:
    such an entry is read past, whatever it holds. The name is only ever
    compared, never used as a path, and a matched entry is still only
    taken when its size and MD5 are the file's.
    """
    parts = zip_name.split("/")
    if zip_name.startswith("/") or "\\" in zip_name or ".." in parts:
        return None
    for i in range(len(parts)):
        name = "/".join(parts[i:])
        if name in wanted:
            return name
    return None


def _peek(response) -> bytes:
    """The first bytes of a streamed body (kept on the response, for the
    zip reader to start with)."""
    response._fmrif_head = b""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    head = read1(512, decode_content=True) if read1 else raw.read(512, decode_content=True)
    response._fmrif_head = head
    return head


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
            page = ctype.startswith("text/html") or looks_like_html(_peek(response))
        except _BROKEN as e:
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
        raw = response.raw
        read1 = getattr(raw, "read1", None)
        reader = _Reader((lambda n: read1(n, decode_content=True)) if read1
                         else (lambda n: raw.read(n, decode_content=True)), progress,
                         cancel)
        reader.start_with(response._fmrif_head)
        remaining = sum(len(fs) for fs in wanted.values())
        try:
            while remaining:
                entry = _read_header(reader)
                if entry is None:
                    break
                name = _entry_name(entry.name, wanted)
                targets = [f for f in wanted.get(name, []) if f.key not in written] \
                    if name is not None else []
                if not targets:
                    _copy_entry(reader, entry, None, None)  # not ours: read past it
                    continue
                want = targets[0]
                tmp = tmpdir / want.key
                part = tmp.with_name(tmp.name + ".part")
                try:
                    with open(part, "wb") as out:
                        size, md5 = _copy_entry(reader, entry, out, want.size)
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
        except (_StreamEnded, _BadZip) as e:
            lgr.debug("zip of %s: %s", folder, e)
            fail_rest(f"zip of {folder}: {e}")
            return written, failed
        except OSError as e:  # reading breaks as _StreamEnded: this is writing
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
    """Get the content of ``files`` into the annex, one zip per resource.

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
                for fut in [pool.submit(one, i, folder, ingest)
                            for i, folder in enumerate(groups)]:
                    fut.result()  # re-raises CredentialRejected (and bugs)
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

