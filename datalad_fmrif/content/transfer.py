"""Download one XNAT file into a local path, verified while it streams.

Every byte is checked before the file counts as obtained: the status, that the
body is not one of XNAT's HTML error pages, the announced and received length
against the size from the listing, and the MD5 against XNAT's digest. A
connection that breaks mid-body is resumed with an HTTP Range request from
what was already written; a complete body with the wrong size or digest is
an error, and its bytes are removed.

One retry budget per file (:class:`~datalad_fmrif.xnat.session.RetryBudget`)
covers every request of the transfer: a failed answer (5xx, reset, timeout)
and a body that broke off each spend from it, so a file sees at most
``retries + 1`` attempts, however they fail.

Resuming works on every answer to ``Range: bytes=N-`` seen in XNAT's web
layer: Restlet 1.1.10 (what XNAT 1.8 pins) sends a correct 206; Restlet 1.1.0
sent bytes N..end with a ``Content-Range`` that runs past the file and no
length, and a stand-in may announce the length of the WHOLE file. So a
resumed body is read to exactly ``size - N`` bytes and, where its length was
not that, the connection is then closed; what decides is the MD5 of the
whole file, as always.

The partial file is the resume point: when ``dest`` already holds a prefix of
the file (git-annex keeps its temporary file after a failed transfer), its
bytes are hashed and only the rest is requested.

An HTML page where the file was expected is what XNAT (or a single-sign-on
proxy) answers for an expired session: one fresh login and one more try, then
a clear error.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from ..xnat.errors import BadResponse, TransientError
from ..xnat.session import XnatSession, looks_like_html
from .streams import BROKEN, CHUNK, reader

lgr = logging.getLogger("datalad.fmrif.transfer")

# Files that may legitimately start with "<" or be served as text/html; for
# everything else (DICOM, physio, NIfTI, ...) such a body is an XNAT error page.
MARKUP_SUFFIXES = (".xml", ".html", ".htm", ".xhtml", ".svg")


class _Interrupted(Exception):
    """The body stopped early; what was written so far is a valid prefix."""


class _Page(Exception):
    """An HTML page instead of the file; ``response`` is the answer."""

    def __init__(self, message: str, response):
        super().__init__(message)
        self.response = response


REFRESH_HINT = (
    "An XNAT admin can refresh the session's catalog (the session page's "
    "Manage Files > Refresh, or POST /data/services/refresh/catalog)")


def stale_catalog(where: str, size, md5, got_size, got_md5=None) -> str:
    """The message for content that is not what XNAT's catalog lists.

    Size and digest in a listing come from XNAT's catalog, not from the file:
    a file changed without a catalog refresh gives a digest no download
    matches, and no retry helps.
    """
    listed = f"{size} bytes" + (f", MD5 {md5}" if md5 else "")
    got = f"{got_size} bytes" + (f", MD5 {got_md5}" if got_md5 else "")
    return (f"GET {where}: content does not match XNAT's listing: XNAT lists "
            f"{listed}, the server sent {got}. Either XNAT's catalog is stale "
            "(the file changed on the server without a catalog refresh) or the "
            f"file changed since it was registered; nothing was kept. {REFRESH_HINT}")


def fetch(
    xnat: XnatSession,
    path: str,
    dest: Path,
    *,
    size: int | None,
    md5: str | None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream ``GET path`` into ``dest``, verified against ``size`` and ``md5``.

    Raises :class:`BadResponse` for an HTML page (after one fresh login), a
    wrong length or a wrong digest (``dest`` is then removed),
    :class:`TransientError` when the file's retry budget is spent (``dest``
    keeps the valid prefix for a later resume), and whatever
    :meth:`XnatSession.request` raises (NotFound, AccessDenied,
    CredentialRejected, ...). A file of zero bytes is requested like any
    other, and ``dest`` is then an empty file.
    """
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    where = f"{xnat.server}{path}"
    sniff = not path.lower().endswith(MARKUP_SUFFIXES)
    budget = xnat.budget()
    offset, digest = _existing_prefix(dest, size)
    started_over = False
    page_retried = False
    while True:
        resumed_from = offset
        try:
            if size is None or offset < size or not dest.exists():
                offset, digest = _stream(xnat, path, dest, offset, digest, budget,
                                         size=size, sniff=sniff, progress=progress)
        except _Interrupted as e:
            offset, digest = _existing_prefix(dest, size)
            if not budget.spend(f"GET {path}: {e}"):
                raise TransientError(
                    f"GET {where}: the download broke off {budget.attempts} times, "
                    f"last: {e}; {offset} bytes are kept for a later resume"
                ) from None
            continue
        except _Page as e:
            dest.unlink(missing_ok=True)
            if not xnat.login_page(e.response, page_retried):
                if page_retried:
                    raise BadResponse(f"{e}, also right after a fresh login") from None
                raise BadResponse(str(e)) from None
            page_retried = True
            offset, digest = 0, hashlib.md5()
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
        raise BadResponse(stale_catalog(where, size, md5, offset, got))


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


def _stream(xnat, path, dest, offset, digest, budget, *, size, sniff, progress):
    """One request: append the body to ``dest``; return (bytes, digest).

    Raises _Interrupted when the body ended early; the returned state is then
    on disk and re-read by the caller.
    """
    where = f"{xnat.server}{path}"
    # identity: a gzip-encoded body would make lengths and Range meaningless
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = xnat.request("GET", path, headers=headers, stream=True, budget=budget)
    with response:
        status = response.status_code
        if offset and status == 200:
            lgr.debug("GET %s: the server ignored the Range request", path)
            offset, digest = 0, hashlib.md5()
        elif status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if not offset or start != offset or (size is not None and total not in (None, size)):
                raise BadResponse(
                    f"GET {where}: unexpected partial content (Content-Range "
                    f"{response.headers.get('Content-Range', 'missing')!r} for "
                    f"a request from byte {offset})"
                )
        ctype = response.headers.get("Content-Type", "").lower()
        if sniff and ctype.startswith("text/html"):
            raise _Page(
                f"GET {where}: the server sent an HTML page (Content-Type "
                f"{ctype}) instead of the file; XNAT reports errors this way",
                response)
        length = response.headers.get("Content-Length", "")
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        # a stand-in may announce the whole file's length for a partial answer
        allowed = {size - offset, size} if status == 206 and size is not None \
            else {size - offset} if size is not None else set()
        if size is not None and length.isdigit() and not encoded \
                and int(length) not in allowed:
            raise BadResponse(stale_catalog(where, size, None, int(length) + offset))
        received = offset
        reported = received
        read = reader(response)
        with open(dest, "ab" if offset else "wb") as out:
            # never wait for bytes beyond the listed size: a partial answer
            # may announce more than it sends (the connection is then closed)
            while size is None or received < size:
                try:
                    chunk = read(min(CHUNK, size - received) if size is not None else CHUNK)
                except BROKEN as e:
                    raise _Interrupted(
                        f"{type(e).__name__} after {received} bytes") from None
                if not chunk:
                    break
                if sniff and received == 0 and looks_like_html(chunk[:512]):
                    raise _Page(
                        f"GET {where}: the server sent an HTML page instead of "
                        "the file; XNAT reports errors this way", response)
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress is not None and received - reported >= CHUNK:
                    progress(received)
                    reported = received
            if status == 200 and size is not None and received == size \
                    and not length.isdigit():
                try:
                    extra = read(1)  # chunked: the end must come now
                except BROKEN:
                    extra = b""
                if extra:
                    raise BadResponse(stale_catalog(where, size, None, f"more than {size}"))
        if progress is not None and received != reported:
            progress(received)
    if size is not None and received < size:
        raise _Interrupted(f"body ended after {received} of {size} bytes")
    return received, digest


def _content_range(value: str) -> tuple[int | None, int | None]:
    """First byte and total length of ``Content-Range: bytes START-END/TOTAL``
    (the end is not used: Restlet 1.1 may state it wrongly)."""
    unit, _, spec = value.strip().partition(" ")
    first = spec.partition("-")[0]
    total = spec.rpartition("/")[2]
    if unit != "bytes" or not first.isdigit():
        return None, None
    return int(first), (int(total) if total.isdigit() else None)
