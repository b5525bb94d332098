"""Download one XNAT file into a local path, verified while it streams.

Every byte is checked before the file counts as obtained: the status, that the
body is not one of XNAT's HTML error pages, the announced and received length
against the size from the listing, and the MD5 against XNAT's digest. A
connection that breaks mid-body is resumed with an HTTP Range request from
what was already written (bounded retries with backoff); a complete body with
the wrong size or digest is an error, and its bytes are removed.

The partial file is the resume point: when ``dest`` already holds a prefix of
the file (git-annex keeps its temporary file after a failed transfer), its
bytes are hashed and only the rest is requested.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import requests
import urllib3

from .xnat.errors import BadResponse, TransientError
from .xnat.session import XnatSession, looks_like_html

lgr = logging.getLogger("datalad.fmrif.transfer")

CHUNK = 1 << 20  # bytes per read: memory stays flat whatever the file size

# Files that may legitimately start with "<" or be served as text/html; for
# everything else (DICOM, physio, NIfTI, ...) such a body is an XNAT error page.
MARKUP_SUFFIXES = (".xml", ".html", ".htm", ".xhtml", ".svg")

# What a broken connection looks like while iterating over a streamed body.
_BROKEN = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    urllib3.exceptions.HTTPError,
)


class _Interrupted(Exception):
    """The body stopped early; what was written so far is a valid prefix."""


def fetch(
    xnat: XnatSession,
    path: str,
    dest: Path,
    *,
    size: int | None,
    md5: str | None,
    progress: Callable[[int], None] | None = None,
    retries: int = 4,
    backoff: float = 0.5,
) -> None:
    """Stream ``GET path`` into ``dest``, verified against ``size`` and ``md5``.

    Raises :class:`BadResponse` for an HTML page, a wrong length or a wrong
    digest (``dest`` is then removed), :class:`TransientError` when the body
    kept breaking off after ``retries`` resumptions (``dest`` keeps the valid
    prefix for a later resume), and whatever :meth:`XnatSession.request`
    raises (NotFound, AccessDenied, CredentialRejected, ...).
    """
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    where = f"{xnat.server}{path}"
    sniff = not path.lower().endswith(MARKUP_SUFFIXES)
    offset, digest = _existing_prefix(dest, size)
    started_over = False
    attempt = 0
    while True:
        resumed_from = offset
        try:
            if size is None or offset < size:
                offset, digest = _stream(xnat, path, dest, offset, digest,
                                         size=size, sniff=sniff, progress=progress)
        except _Interrupted as e:
            offset, digest = _existing_prefix(dest, size)
            if attempt >= retries:
                raise TransientError(
                    f"GET {where}: the download broke off {attempt + 1} times, "
                    f"last: {e}; {offset} bytes are kept for a later resume"
                ) from None
            delay = backoff * (2 ** attempt)
            lgr.debug("GET %s: %s; resuming in %.1fs", path, e, delay)
            time.sleep(delay)
            attempt += 1
            continue
        except BadResponse:
            dest.unlink(missing_ok=True)
            raise
        got = digest.hexdigest()
        if md5 is None or got == md5:
            return
        dest.unlink(missing_ok=True)
        if resumed_from and not started_over:
            # the prefix came from an earlier request (or an earlier run) and
            # may belong to other content: one download from scratch decides
            lgr.debug("GET %s: MD5 mismatch after resuming; starting over", path)
            started_over = True
            offset, digest = 0, hashlib.md5()
            continue
        raise BadResponse(
            f"GET {where}: content does not match XNAT's listing: MD5 {got}, "
            f"expected {md5} ({offset} bytes). The file may have changed on the "
            "server since it was registered; nothing was kept"
        )


def _existing_prefix(dest: Path, size: int | None):
    """How many bytes of ``dest`` can be kept, and their running MD5.

    Without a known size a prefix cannot be trusted to be one, so the
    download starts over; a file longer than the expected size is discarded.
    """
    digest = hashlib.md5()
    try:
        have = dest.stat().st_size
    except FileNotFoundError:
        return 0, digest
    if not have or size is None or have > size:
        dest.unlink()
        return 0, digest
    with open(dest, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return have, digest


def _stream(xnat, path, dest, offset, digest, *, size, sniff, progress):
    """One request: append the body to ``dest``; return (bytes, digest).

    Raises _Interrupted when the body ended early; the returned state is then
    on disk and re-read by the caller.
    """
    where = f"{xnat.server}{path}"
    # identity: a gzip-encoded body would make lengths and Range meaningless
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = xnat.request("GET", path, headers=headers, stream=True)
    with response:
        status = response.status_code
        if offset and status == 200:
            lgr.debug("GET %s: the server ignored the Range request", path)
            offset, digest = 0, hashlib.md5()
        elif status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if not offset or start != offset:
                raise BadResponse(
                    f"GET {where}: unexpected partial content (Content-Range "
                    f"{response.headers.get('Content-Range', 'missing')!r} for "
                    f"a request from byte {offset})"
                )
        ctype = response.headers.get("Content-Type", "").lower()
        if sniff and ctype.startswith("text/html"):
            raise BadResponse(
                f"GET {where}: the server sent an HTML page (Content-Type "
                f"{ctype}) instead of the file; XNAT reports errors this way"
            )
        length = response.headers.get("Content-Length", "")
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        if size is not None and length.isdigit() and not encoded \
                and int(length) != size - offset:
            raise BadResponse(
                f"GET {where}: the server announces {int(length) + offset} "
                f"bytes, XNAT's listing said {size}. The file may have changed "
                "on the server since it was registered"
            )
        received = offset
        reported = received
        read = _reader(response)
        with open(dest, "ab" if offset else "wb") as out:
            while True:
                try:
                    chunk = read(CHUNK)
                except _BROKEN as e:
                    raise _Interrupted(
                        f"{type(e).__name__} after {received} bytes") from None
                if not chunk:
                    break
                if sniff and received == 0 and looks_like_html(chunk[:512]):
                    raise BadResponse(
                        f"GET {where}: the server sent an HTML page instead of "
                        "the file; XNAT reports errors this way"
                    )
                if size is not None and received + len(chunk) > size:
                    raise BadResponse(
                        f"GET {where}: the server sent more than the {size} "
                        "bytes in XNAT's listing. The file may have changed on "
                        "the server since it was registered"
                    )
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress is not None and received - reported >= CHUNK:
                    progress(received)
                    reported = received
        if progress is not None and received != reported:
            progress(received)
    if size is not None and received < size:
        raise _Interrupted(f"body ended after {received} of {size} bytes")
    return received, digest


def _reader(response):
    """``read(n)``: up to n bytes of the body as they arrive, b"" at its end.

    urllib3's ``read1`` returns what one receive brought, so the bytes that
    came before a connection broke are kept (a plain ``read(n)`` waits for n
    bytes and loses them with the exception).
    """
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is not None:
        return lambda n: read1(n, decode_content=True)
    return lambda n: raw.read(n, decode_content=True)


def _content_range_start(value: str) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL``."""
    unit, _, spec = value.strip().partition(" ")
    first = spec.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None
