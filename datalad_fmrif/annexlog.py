"""Records of the git-annex branch, rendered as git-annex writes them (pure).

git-annex keeps what it knows about each key in per-key log files on its
branch, under the key's ``hashdirlower`` directory:

- ``KEY.log``, the location log: ``<time>s 1 <uuid>`` for each repository
  or special remote that has the content (``0``: no longer has it);
- ``KEY.log.web``, the URL log: ``<time>s 1 <url>``; a URL that a special
  remote claims (CLAIMURL) is written with a leading ``:``;
- ``KEY.log.met``, the metadata log: ``<time>s field +value +value field
  +value ...``; a value with white space, a control character or a leading
  ``!`` is written as ``!`` and its base64.

(git-annex's internals documentation describes these files; the tests
compare what is rendered here with what ``git annex registerurl``,
``setpresentkey`` and ``metadata`` write, and read every record back through
git-annex.) Lines are only ever added: git-annex merges log files by the
union of their lines, and the newest line of each UUID, URL or field wins,
so adding a record never loses one.

This module only renders text; :meth:`datalad_fmrif.annex.Annex.write_logs`
commits it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["BranchLogs", "appended", "field_problem", "log_files", "metadata_value",
           "url_ok"]

_UUID = re.compile(r"[0-9A-Za-z-]+")
_FIELD = re.compile(r"[A-Za-z0-9_.-]+")
_SPACE = re.compile(r"\s")
_STAMP = re.compile(rb"^(\d+)(?:\.\d*)?s ", re.M)


def field_problem(name: str) -> str | None:
    """Why ``name`` cannot be a git-annex metadata field, or None."""
    if _FIELD.fullmatch(name):
        return None
    return (f"not a valid git-annex metadata field name: {name!r} "
            "(letters, digits, '_', '-', '.' only)")


def url_ok(url: str) -> bool:
    """Whether ``url`` can be a line of the URL log."""
    return bool(url) and url.isprintable() and _SPACE.search(url) is None


def metadata_value(value: str) -> str:
    """A metadata value as git-annex writes it in the metadata log."""
    if value and not value.startswith("!") and value.isprintable() \
            and _SPACE.search(value) is None:
        return value
    return "!" + base64.b64encode(value.encode("utf-8", "surrogateescape")).decode("ascii")


@dataclass
class BranchLogs:
    """Records to add to the git-annex branch, by key.

    ``present``: key -> UUIDs of the repositories (or special remotes) that
    have its content; ``urls``: key -> URLs, each with whether a special
    remote claims it; ``metadata``: key -> field -> values. A key's metadata
    fields gain the given values (git-annex's ``+value``); values set earlier
    stay, which is right for content that several files share.
    """

    present: dict[str, list[str]] = field(default_factory=dict)
    urls: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    metadata: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def add_present(self, key: str, uuid: str) -> None:
        if not _UUID.fullmatch(uuid):
            raise ValueError(f"not a git-annex UUID: {uuid!r}")
        self.present.setdefault(key, []).append(uuid)

    def add_url(self, key: str, url: str, *, claimed: bool) -> None:
        if not url_ok(url):
            raise ValueError(f"URL {url!r} is empty or contains whitespace (percent-encode it)")
        self.urls.setdefault(key, []).append((url, claimed))

    def add_metadata(self, key: str, fields: Mapping[str, str | Sequence[str]]) -> None:
        problem = next(filter(None, map(field_problem, fields)), None)
        if problem:
            raise ValueError(problem)
        mine = self.metadata.setdefault(key, {})
        for name, values in fields.items():
            if isinstance(values, str):
                values = [values]
            mine.setdefault(name, []).extend(str(v) for v in values if str(v))

    @property
    def keys(self) -> list[str]:
        """Every key with a record, each once, in the order first given."""
        return list(dict.fromkeys([*self.present, *self.urls, *self.metadata]))

    def __bool__(self) -> bool:
        return bool(self.present or self.urls or self.metadata)


def log_files(logs: BranchLogs, hashdirs: Mapping[str, str], now: float) -> Iterable[tuple[str, bytes]]:
    """``(path in the branch, lines to add)`` of every log file ``logs`` touch.

    ``hashdirs``: each key's ``hashdirlower`` (``"abc/def/"``, as ``git annex
    examinekey`` names it); ``now``: the time of the records, in seconds.
    """
    stamp = f"{int(now)}s"
    for key in logs.keys:
        where = hashdirs[key] + key
        uuids = logs.present.get(key)
        if uuids:
            yield where + ".log", "".join(
                f"{stamp} 1 {u}\n" for u in dict.fromkeys(uuids)).encode()
        urls = logs.urls.get(key)
        if urls:
            yield where + ".log.web", "".join(
                f"{stamp} 1 {':' if claimed else ''}{url}\n"
                for url, claimed in dict.fromkeys(urls)).encode("utf-8", "surrogateescape")
        fields = {name: sorted(set(values))  # git-annex's order: by name, by value
                  for name, values in sorted(logs.metadata.get(key, {}).items()) if values}
        if fields:
            line = " ".join(f"{name} " + " ".join("+" + metadata_value(v) for v in values)
                            for name, values in fields.items())
            yield where + ".log.met", f"{stamp} {line}\n".encode("utf-8", "surrogateescape")


def appended(existing: bytes, lines: bytes) -> bytes:
    """A log file's ``existing`` content with new ``lines`` after it.

    The newest line wins in git-annex's logs, so new lines must be newer
    than every existing one, also when this machine's clock is behind the
    one that wrote them (another clone's, say): then they get the second
    after the newest, as git-annex does.
    """
    if not existing:
        return lines
    if not existing.endswith(b"\n"):
        existing += b"\n"
    newest = max((int(m.group(1)) for m in _STAMP.finditer(existing)), default=-1)
    ours = _STAMP.match(lines)
    if ours is not None and int(ours.group(1)) <= newest:
        lines = _STAMP.sub(b"%ds " % (newest + 1), lines)
    return existing + lines
