"""Set up the ``fmrif`` special remote in a dataset, once.

The remote's configuration goes into the git-annex branch and so into every
clone (``autoenable=true``: ``datalad get`` works there without set-up). It
holds the server URL and, if the user named one, the credential name: never
a secret. The first server of a dataset gets the remote ``fmrif``; another
server gets ``fmrif-<name derived from the server>``.
"""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

from .credentials import default_credential_name


class RemoteSetupError(RuntimeError):
    pass


def _git(repo, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def fmrif_remotes(repo) -> dict[str, str]:
    """Server URL -> remote name of every fmrif remote the dataset knows,
    enabled here or not (from the git-annex branch's remote.log)."""
    log = _git(repo, "cat-file", "-p", "git-annex:remote.log")
    remotes = {}
    for line in log.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if fields.get("externaltype") == "fmrif" and "server" in fields:
            remotes[fields["server"]] = fields.get("name", "")
    return remotes


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
