"""Set up the ``fmrif`` special remote in a dataset, once.

The remote's configuration goes into the git-annex branch and so into every
clone (``autoenable=true``: ``datalad get`` works there without set-up). It
holds the server URL and, if the user named one, the credential name: never
a secret, and never the name of an alias token, which expires (the name of
the password credential it was issued with instead). The first server of a dataset gets the remote ``fmrif``; another
server gets ``fmrif-<name derived from the server>``.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit

from .credentials import default_credential_name, restorable_name


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


def _remote_configs(repo) -> dict[str, dict[str, str]]:
    """Server URL -> configuration of every fmrif remote the dataset knows,
    enabled here or not (from the git-annex branch's remote.log)."""
    remotes = {}
    for line in _remote_log(repo):
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if fields.get("externaltype") == "fmrif" and "server" in fields:
            remotes[fields["server"]] = fields
    return remotes


def fmrif_remotes(repo) -> dict[str, str]:
    """Server URL -> remote name of every fmrif remote the dataset knows."""
    return {server: fields.get("name", "")
            for server, fields in _remote_configs(repo).items()}


def recorded_credential(repo, server: str) -> str | None:
    """The credential name the dataset's remote for ``server`` records."""
    return _remote_configs(repo).get(server, {}).get("credential") or None


def one_attempt_per_get(repo) -> None:
    """Let ``datalad get`` try each file once, unless the user chose otherwise.

    DataLad runs ``git annex get -c annex.retry=3`` when ``annex.retry`` is
    unset, and git-annex then repeats a failed transfer twice more after
    1 s and 2 s, although the fmrif remote already retried what can be
    retried (XNAT's 5xx, resets, timeouts) and knows the rest is final
    (a rejected password, no credential, a locked keyring, a server that
    is not there). A per-remote ``remote.<name>.annex-retry`` does not beat
    that ``-c``. So this repository's ``datalad.annex.retry`` becomes 1
    (datalad-next's default), in ``.git/config`` only, when neither it nor
    ``annex.retry`` is configured anywhere. Run when the remote is set up
    here and by the remote's INITREMOTE, which ``enableremote`` (autoenable
    in every clone) sends too.
    """
    for args in (("--get", "annex.retry"), ("--get", "datalad.annex.retry"),
                 ("-f", ".datalad/config", "--get", "datalad.annex.retry")):
        if _git(repo, "config", *args).returncode == 0:
            return
    _git(repo, "config", "--local", "datalad.annex.retry", "1")


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
    one_attempt_per_get(repo)
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
    # only a name 'datalad fmrif-login' can always store again, and none
    # when it is the one derived from the server anyway
    if credential and restorable_name(credential) != default_credential_name(server):
        config.append(f"credential={restorable_name(credential)}")
    init = _git(repo, "annex", "initremote", name, "type=external",
                "externaltype=fmrif", "encryption=none", "autoenable=true", *config)
    if init.returncode != 0:
        host = urlsplit(server).netloc
        raise RemoteSetupError(
            f"could not set up the git-annex special remote {name!r} for {host}: "
            + (init.stderr.strip() or init.stdout.strip()))
    return name
