"""Files that hold identifiers must stay out of git.

A subject list (MRNs, names), a pseudonym mapping (the key to the
pseudonyms) and ``fmrif-list -o`` output are exactly what a dataset must
never hold: a later plain ``datalad save`` would commit them for good. A file
inside a DataLad dataset that git does not ignore is therefore refused; one
outside every dataset, or ignored (``.gitignore``, ``.git/info/exclude``),
is fine. (Other git repositories are left alone: nothing there saves
everything by default.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def unignored_in_dataset(path: str | os.PathLike) -> Path | None:
    """The DataLad dataset that would take ``path`` into git (inside it, not
    ignored by git), or None. ``path`` need not exist yet."""
    full = Path(os.path.realpath(os.path.abspath(os.path.expanduser(path))))
    parent = full.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=parent,
                         capture_output=True, text=True)
    if top.returncode != 0 or not top.stdout.strip():
        return None  # no repository, or inside .git
    root = Path(top.stdout.strip())
    if not (root / ".datalad").is_dir():
        return None  # a git repository, not a dataset
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "--", os.path.relpath(full, root)],
        cwd=root, capture_output=True)
    if ignored.returncode == 0:
        return None
    return root


class CommittableInput(ValueError):
    """A file holding identifiers where git would commit it."""


def refuse_if_committable(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`CommittableInput` if git could take ``path`` (a file
    holding identifiers, ``what``) into a repository's history."""
    root = unignored_in_dataset(path)
    if root is not None:
        raise CommittableInput(
            f"{what} {path} is inside the dataset {root}, and git does "
            "not ignore it: a later 'datalad save' would commit the "
            "identifiers in it for good. Keep it outside any dataset (e.g. in "
            "a folder of your own under your home directory), or add it to "
            "the dataset's .gitignore")
