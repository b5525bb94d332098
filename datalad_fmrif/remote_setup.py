"""Set up the ``fmrif`` special remote in a dataset, once.

The remote's configuration goes into the git-annex branch and so into every
clone (``autoenable=true``: ``datalad get`` works there without set-up). It
holds the server URL and, if the user named one, the credential name: never
a secret. The first server of a dataset gets the remote ``fmrif``; another
server gets ``fmrif-<name derived from the server>``.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit

from .credentials import default_credential_name


class RemoteSetupError(RuntimeError):
    pass


def _git(repo, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def _remote_log(repo) -> list[str]:
    """The lines of git-annex's remote.log: its branch's, and those of its
    journal, where a git-annex command that was killed left them."""
    lines = _git(repo, "cat-file", "-p", "git-annex:remote.log").stdout.splitlines()
    journal = _git(repo, "rev-parse", "--git-path", "annex/journal/remote.log").stdout.strip()
    if journal:
        try:
            with open(os.path.join(repo, journal), encoding="utf-8",
                      errors="surrogateescape") as f:
                lines += f.read().splitlines()
        except OSError:
            pass
    return lines


def fmrif_remotes(repo) -> dict[str, str]:
    """Server URL -> remote name of every fmrif remote the dataset knows,
    enabled here or not (from the git-annex branch's remote.log)."""
    remotes = {}
    for line in _remote_log(repo):
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if fields.get("externaltype") == "fmrif" and "server" in fields:
            remotes[fields["server"]] = fields.get("name", "")
    return remotes


def _half_made(repo) -> list[str]:
    """Names of fmrif remotes that git config has but remote.log does not:
    what a ``git annex initremote`` interrupted before it recorded the remote
    leaves. Unusable (no clone would know them), so they are set up again."""
    uuids = {line.split()[0] for line in _remote_log(repo) if line.split()}
    out = _git(repo, "config", "--get-regexp", r"^remote\..*\.annex-externaltype$").stdout
    names = []
    for line in out.splitlines():
        key, _, kind = line.partition(" ")
        name = key[len("remote."):-len(".annex-externaltype")]
        if kind.strip() != "fmrif":
            continue
        uuid = _git(repo, "config", "--get", f"remote.{name}.annex-uuid").stdout.strip()
        if uuid not in uuids:
            names.append(name)
    return names


def ensure_remote(annex, server: str, credential: str | None = None) -> str:
    """The name of the enabled fmrif remote for ``server``; set up if needed."""
    repo = annex.path
    known = fmrif_remotes(repo)
    name = known.get(server)
    if name:
        kind = _git(repo, "config", "--get", f"remote.{name}.annex-externaltype")
        if kind.stdout.strip() == "fmrif":
            return name
        enable = _git(repo, "annex", "enableremote", name)
        if enable.returncode == 0:
            return name
        raise RemoteSetupError(
            f"could not enable the git-annex special remote {name!r}: "
            + (enable.stderr.strip() or enable.stdout.strip()))
    for half in _half_made(repo):
        _git(repo, "config", "--remove-section", f"remote.{half}")
    taken = set(known.values()) | set(_git(repo, "remote").stdout.split())
    name = "fmrif" if "fmrif" not in taken else "fmrif-" + default_credential_name(server)
    config = [f"server={server}"]
    if credential:
        config.append(f"credential={credential}")
    init = _git(repo, "annex", "initremote", name, "type=external",
                "externaltype=fmrif", "encryption=none", "autoenable=true", *config)
    if init.returncode != 0:
        host = urlsplit(server).netloc
        raise RemoteSetupError(
            f"could not set up the git-annex special remote {name!r} for {host}: "
            + (init.stderr.strip() or init.stdout.strip()))
    return name
