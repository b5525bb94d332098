"""A zip read as it streams: entry by entry, each checked against its own framing.

XNAT streams a resource's zip chunked with no Content-Length, so it cannot
be seeked: the central directory at the end comes too late. The local
headers are followed instead. Both shapes XNAT's Java ``ZipOutputStream``
writes are read: stored entries with sizes and CRC in the local header (no
data descriptor; ``STORED`` demands them) and deflated entries whose sizes
follow in a data descriptor; also a stored entry of unknown length followed
by a descriptor, which ``stream-unzip`` refuses (its end is found where the
descriptor describes exactly the bytes before it). Names are decoded as
UTF-8 where the entry says so (flag bit 11), else as CP437.

Pure: no network, no files; :class:`Reader` takes any ``read1`` function.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from .streams import BROKEN, CHUNK

__all__ = ["BadZip", "Entry", "Reader", "StreamEnded", "copy_entry", "entry_name",
           "read_header"]

_LOCAL = 0x04034B50  # local file header
_CENTRAL = 0x02014B50  # central directory: no more entries
_END = 0x06054B50
_END64 = 0x06064B50
_DESCRIPTOR = 0x08074B50  # optional signature of a data descriptor



class StreamEnded(Exception):
    """The body ended (or broke off) where the zip needed more bytes."""


class BadZip(Exception):
    """The stream is not a zip we can follow any further."""


class Reader:
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
            raise StreamEnded("stopped")
        try:
            chunk = self._read1(CHUNK)
        except BROKEN + (OSError,) as e:
            raise StreamEnded(f"the stream broke off ({type(e).__name__}) after "
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
                raise StreamEnded(f"the stream ended after {self.consumed} bytes, "
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
class Entry:
    name: str
    method: int
    flags: int
    crc: int
    csize: int | None  # None: unknown from the header (a data descriptor follows)
    usize: int | None
    zip64: bool


def read_header(r: Reader) -> Entry | None:
    """The next local file header, or None at the central directory."""
    sig = r.peek(4)
    if len(sig) < 4:
        return None  # a zip without a central directory: the end all the same
    (magic,) = struct.unpack("<I", sig)
    if magic in (_CENTRAL, _END, _END64):
        return None
    if magic != _LOCAL:
        raise BadZip(f"no zip entry header at byte {r.consumed}")
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
    return Entry(name, method, flags, crc, csize, usize, zip64)


def _read_descriptor(r: Reader, entry: Entry, crc: int, csize: int, usize: int) -> None:
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
        raise BadZip(f"the data descriptor of {entry.name!r} does not match its data")
    if dcrc != crc:
        raise BadZip(f"CRC of zip entry {entry.name!r} does not match its data")


def copy_entry(r: Reader, entry: Entry, out, expected_size: int | None):
    """Copy the data of ``entry`` to ``out`` (None: read past it).

    Returns (size, md5 hex). At most ``expected_size`` bytes are written (the
    size then says that there were more). The zip's own framing is checked
    (sizes, CRC): a stream that cannot be followed raises BadZip.
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
                raise StreamEnded(f"the stream ended inside {entry.name!r}")
            take(data)
            n -= len(data)

    if entry.flags & 0x01:
        raise BadZip(f"zip entry {entry.name!r} is encrypted")
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
                raise StreamEnded(f"the stream ended inside {entry.name!r}")
            csize += len(data)
            while data and not inflate.eof:
                take(inflate.decompress(data, 4 * CHUNK))  # bounded: no zip bomb
                data = inflate.unconsumed_tail
            if inflate.unused_data:
                r.unread(inflate.unused_data)
                csize -= len(inflate.unused_data)
        if entry.csize is not None and entry.csize != csize:
            raise BadZip(f"zip entry {entry.name!r}: compressed size does not match")
    else:
        raise BadZip(f"zip entry {entry.name!r} uses compression method {entry.method}")
    if entry.flags & 0x08:
        _read_descriptor(r, entry, crc, csize, usize)
    else:
        if entry.usize is not None and entry.usize != usize:
            raise BadZip(f"zip entry {entry.name!r}: size does not match its header")
        if crc != entry.crc:
            raise BadZip(f"CRC of zip entry {entry.name!r} does not match its data")
    return usize, digest.hexdigest()


def _scan_stored(r: Reader, take) -> int:
    """A stored entry of unknown length: its end is the data descriptor whose
    CRC and sizes (4 or 8 bytes each) describe exactly the bytes before it."""
    crc, n = 0, 0
    window = b""
    while True:
        more = r.read(CHUNK)
        if not more:
            raise StreamEnded("the stream ended inside a zip entry")
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


def entry_name(zip_name: str, wanted) -> str | None:
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
