"""Why files XNAT lists are not in the dataset, for ``fmrif-status``.

A file whose content cannot be verified (XNAT's catalog is stale, the file
is gone from the archive, a transfer kept failing) is left out of the
dataset and reported by the download that met it. That reason is also kept
in ``.git/fmrif/failed.json``: outside the dataset's history (so nothing is
published), replaced file by file by every download that plans the file
again, so that ``fmrif-status`` can say why a listed file is missing instead
of only that it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .content.bulk import tmp_root


def _store(root: str | os.PathLike) -> Path:
    return tmp_root(root).parent / "failed.json"


def load(root: str | os.PathLike) -> dict[str, str]:
    """Dataset path -> why the last download that planned it left it out."""
    try:
        data = json.loads(_store(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record(root: str | os.PathLike, failed: Mapping[str, str], planned: Iterable[str]) -> None:
    """Keep this run's failures; forget earlier ones of files it planned
    and got. Best effort: the failures were reported already."""
    known = load(root)
    for path in planned:
        known.pop(path, None)
    known.update(failed)
    store = _store(root)
    try:
        if not known:
            store.unlink(missing_ok=True)
            return
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(store.name + f".{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(store)
    except OSError:
        pass
