"""git-annex keys: the one place that builds, checks and reads them.

A key is ``BACKEND[-sSIZE][-mMTIME][-SCHUNKSIZE-CCHUNK]--NAME``. For the
``MD5E`` backend NAME is the MD5 followed by the file's extension, and which
extension is git-annex's rule, not ours (:func:`extension`): a key built
here must equal the one ``git annex add`` makes for the same file, or the
same content gets a second key (``tests/test_keys.py`` compares with ``git
annex calckey`` over a corpus of odd names). Keys recorded by an older
version of this package (which kept e.g. ``.c.d`` for ``x.c..d``) stay
valid: a key is a name, and git-annex accepts either.
"""

from __future__ import annotations

import os
import re

__all__ = ["KEY_RE", "extension", "md5e", "key_problem", "key_facts", "promises"]

# Key syntax git-annex accepts in batch input: BACKEND, optional fields
# (-s size, -m mtime, -S chunk size, -C chunk number), "--", name.
# Stricter than git-annex on the name (no whitespace: it would shift the
# "KEY URL" / "KEY PATH" split; no "/": never a sensible key name).
KEY_RE = re.compile(r"[A-Za-z0-9_]+(?:-[smSC][0-9]+)*--[^\s/]+")

_PARTS = re.compile(r"^(?P<backend>[A-Za-z0-9_]+)(?P<fields>(?:-[A-Za-z][0-9]+)*)--(?P<name>.+)$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")

# git-annex's defaults: annex.maxextensionlength 4 (Backend/Utilities.hs
# maxExtensionLen), annex.maxextensions 2.
MAX_EXTENSION_LENGTH = 4
MAX_EXTENSIONS = 2


def _valid_in_extension(byte: int) -> bool:
    # git-annex's validInExtension: ASCII letters and digits, and any byte
    # of a multi-byte (non-ASCII) character; no other ASCII character
    return byte >= 128 or chr(byte).isalnum()


def extension(name: str | os.PathLike) -> str:
    """The extension git-annex's ``MD5E`` backend keeps for a file ``name``.

    git-annex's rule (``selectExtension`` in Backend/Utilities.hs; checked
    against ``git annex calckey`` of 10.20250605, the oldest we support, and
    10.20261026): the file name's extensions (everything after the
    first dot that does not begin the name) split at dots; from the last
    one backwards while each is at most 4 *bytes* of UTF-8; of those, the
    ones made of letters, digits or non-ASCII bytes; the last two of them;
    empty ones are then dropped. ``1.3.12.2.1107.dcm`` -> ``.1107.dcm``,
    ``x.nii.gz`` -> ``.nii.gz``, ``x.c..d`` -> ``.d``, ``scan.ÄÖÜ`` -> ``''``
    (6 bytes), ``.bashrc`` -> ``''``.
    """
    base = os.fsdecode(name).replace(os.sep, "/").rsplit("/", 1)[-1]
    start = len(base) - len(base.lstrip("."))
    first = base.find(".", start)
    if first < 0:
        return ""
    kept = []
    for ext in reversed(base[first + 1:].split(".")):
        raw = ext.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_EXTENSION_LENGTH:
            break
        if all(_valid_in_extension(b) for b in raw):
            kept.append(ext)
    return "".join("." + e for e in reversed(kept[:MAX_EXTENSIONS]) if e)


def md5e(size: int, md5: str, name: str | os.PathLike) -> str:
    """The ``MD5E`` key git-annex gives a file ``name`` of ``size`` bytes and
    digest ``md5`` (lower-case hex)."""
    return f"MD5E-s{size}--{md5}{extension(name)}"


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot go into git-annex's batch input, or None."""
    if KEY_RE.fullmatch(key):
        return None
    return f"not a valid git-annex key: {key!r}"


def key_facts(key: str) -> tuple[int | None, str | None]:
    """Size and MD5 that a git-annex key promises, where it says them.

    ``MD5E-s1234--<md5>.dcm`` -> (1234, md5); other backends give the size
    only; chunk keys (``-S``/``-C`` fields) describe a part, not the file.
    """
    match = _PARTS.match(key)
    if not match:
        return None, None
    fields = [f for f in match["fields"].split("-") if f]
    if any(f[0] in "SC" for f in fields):
        return None, None
    size = next((int(f[1:]) for f in fields if f[0] == "s"), None)
    md5 = None
    if match["backend"] in ("MD5", "MD5E"):
        digest = match["name"].split(".", 1)[0] if match["backend"] == "MD5E" else match["name"]
        md5 = digest.lower() if _MD5.match(digest.lower()) else None
    return size, md5


def promises(key: str, size: int, md5: str) -> bool:
    """Whether content of ``size`` bytes and digest ``md5`` is ``key``'s."""
    return key_facts(key) == (size, md5.lower())
