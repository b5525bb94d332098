"""git operations on the dataset: its configuration, commit, discard.

Kept apart from git-annex's commands: these are plain git, and commit is
the one step of a run that makes history.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
import os

from .batch import AnnexError, _check_path


class GitOps:
    """The git methods of :class:`~datalad_fmrif.annex.repo.Annex`."""

    def _config(self) -> dict[str, str]:
        """The repository's git configuration, as git reads it now."""
        out = subprocess.run(["git", "config", "-z", "--list"], cwd=self.path,
                             capture_output=True, text=True, encoding="utf-8",
                             errors="surrogateescape").stdout
        config = {}
        for entry in out.split("\0"):
            name, given, value = entry.partition("\n")
            if name:
                # a name without "=" in the file has no value, and git (and
                # git-annex) read it as the boolean true
                config[name] = value if given else "true"
        return config

    def _own_dir(self) -> Path:
        """``.git/fmrif`` (made if need be): datalad-fmrif's files of this
        repository, never in the work tree."""
        gitdir = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=self.path,
                                capture_output=True, text=True).stdout.strip()
        if not gitdir:
            raise AnnexError(f"{self.path} is not a git repository")
        own = Path(gitdir) / "fmrif"
        own.mkdir(exist_ok=True)
        return own

    def commit(self, paths: Sequence[str | os.PathLike], message: str) -> None:
        """Commit exactly ``paths`` as they are in the work tree.

        They are staged with ``git update-index`` (the files' git-annex
        attributes decide, as always, what goes to git and what to the
        annex), and committed with ``git commit``: of the whole index when
        nothing else is staged, else with ``--only`` and the paths (git
        matches every path of the index against every one given: seconds
        for thousands of files, so only where other staged changes must
        stay staged). Nothing to commit is no error. Raises AnnexError with
        git's answer.
        """
        lines = [_check_path(p) for p in paths]
        if not lines:
            return

        def git(*args, stdin: str = "") -> str:
            proc = subprocess.run(["git", *args], cwd=self.path, input=stdin,
                                  capture_output=True, text=True, encoding="utf-8",
                                  errors="surrogateescape")
            if proc.returncode != 0:
                raise AnnexError(f"git {args[0]} of {len(lines)} files failed: "
                                 + (proc.stderr.strip() or proc.stdout.strip()
                                    or f"exit code {proc.returncode}"))
            return proc.stdout

        pathspec = "\0".join(lines) + "\0"
        git("update-index", "--add", "-z", "--stdin", stdin=pathspec)
        staged = set(git("diff", "--cached", "--name-only", "--no-renames", "-z").split("\0"))
        staged.discard("")
        if not staged & set(lines):
            return  # nothing changed
        msgfile = self._own_dir() / "COMMIT_MSG"
        msgfile.write_text(message, encoding="utf-8")
        try:
            if staged <= set(lines):
                git("commit", "-q", "-F", str(msgfile))
            else:
                git("commit", "-q", "--only", "-F", str(msgfile),
                    "--pathspec-from-file=-", "--pathspec-file-nul", stdin=pathspec)
        finally:
            msgfile.unlink(missing_ok=True)

    def discard(self, paths: Sequence[str | os.PathLike]) -> None:
        """Take files out of the index and the work tree (not committed yet:
        e.g. registered files whose content could not be fetched)."""
        lines = [_check_path(p) for p in paths]
        if not lines:
            return
        proc = subprocess.run(
            ["git", "rm", "--cached", "-q", "--ignore-unmatch",
             "--pathspec-from-file=-", "--pathspec-file-nul"],
            cwd=self.path, input="\0".join(lines), capture_output=True, text=True,
            encoding="utf-8", errors="surrogateescape")
        if proc.returncode != 0:
            raise AnnexError(f"git rm --cached failed: {proc.stderr.strip()}")
        for line in lines:
            path = self.path / line
            if path.is_symlink() or path.is_file():
                path.unlink()
            parent = path.parent
            while parent != self.path and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
