"""Reading a streamed HTTP body: what bulk zips and single files share.

Bodies are read with urllib3's ``read1`` (what one receive brought), in
chunks of :data:`CHUNK`, so that memory stays flat whatever the size and the
bytes that came before a connection broke are kept (a plain ``read(n)``
waits for n bytes and loses them with the exception).
"""

from __future__ import annotations

from collections.abc import Callable

import requests
import urllib3

__all__ = ["BROKEN", "CHUNK", "peek", "reader"]

CHUNK = 1 << 20  # bytes per read

# What a broken connection looks like while reading a streamed body.
BROKEN = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    urllib3.exceptions.HTTPError,
)


def reader(response) -> Callable[[int], bytes]:
    """``read(n)``: up to n bytes of the body as they arrive, b"" at its end."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is not None:
        return lambda n: read1(n, decode_content=True)
    return lambda n: raw.read(n, decode_content=True)


def peek(response, n: int = 512) -> bytes:
    """The first bytes of a streamed body, kept on the response
    (``response._fmrif_head``) for whoever reads the body next."""
    response._fmrif_head = b""
    head = reader(response)(n)
    response._fmrif_head = head
    return head
