"""Where the XNAT credential lives, and how it is never tried twice once rejected.

The secret is a DataLad credential (datalad-next's ``CredentialManager``): its
properties (``user``, ``realm``, token expiry) are in git config
``datalad.credential.<name>.*`` and the secret in the OS keyring through the
``keyring`` package (service ``datalad-<name>``). For batch jobs, DataLad's own
environment variables ``DATALAD_CREDENTIAL_<NAME>_USER`` / ``_SECRET`` take
precedence and the keyring is not touched at all.

NIH accounts lock after a few failed logins. A secret that XNAT rejected is
remembered (as a salted scrypt fingerprint, never the secret) in the user's
state directory, and every process of this extension refuses to send it
again until ``datalad fmrif-login`` stores a credential anew. Logins of one
credential are serialised across processes with a file lock, so parallel
workers and special-remote processes never race each other into a lockout.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

lgr = logging.getLogger("datalad.fmrif.credentials")

DEFAULT_SERVER = "https://fmrif-xnat.nimh.nih.gov"

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


class CredentialError(Exception):
    """A credential problem the user must fix; the message says how."""


class NoKeyring(CredentialError):
    pass


@dataclass(frozen=True)
class Credential:
    name: str
    user: str
    secret: str = field(repr=False)
    source: str  # "keyring" or "environment"
    expires: str | None = None  # ISO time, for alias tokens

    @property
    def is_token(self) -> bool:
        """XNAT alias tokens have a UUID as their user name."""
        return bool(_UUID.match(self.user))

    def expired(self, now: float | None = None) -> bool:
        if not self.expires:
            return False
        from datetime import datetime

        try:
            end = datetime.fromisoformat(self.expires).timestamp()
        except ValueError:
            return False
        return (now or time.time()) >= end


# -- where: server, credential name, CA bundle ---------------------------------


def normalize_server(url: str) -> str:
    """``https://host[:port][/path]`` without a trailing slash.

    Refuses URLs that carry a user, password, query or fragment: a secret in a
    URL ends up in logs and in the dataset's configuration.
    """
    parts = urlsplit(url.strip())
    # first, so that a URL with a password is never quoted in a message
    if parts.username or parts.password:
        raise CredentialError(
            "the server URL must not contain a user name or password; "
            "use 'datalad fmrif-login' to store the credential"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CredentialError(
            f"server {url!r} is not an http(s) URL like {DEFAULT_SERVER}"
        )
    if parts.query or parts.fragment:
        raise CredentialError(f"server URL {url!r} must not have a query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def resolve_server(server: str | None, cfg) -> str:
    """The ``--server`` option, else config ``datalad.fmrif.server``, else FMRIF."""
    return normalize_server(server or cfg.get("datalad.fmrif.server") or DEFAULT_SERVER)


def default_credential_name(server: str) -> str:
    """A readable name derived from the server: ``fmrif-xnat`` for FMRIF.

    The first label of a host name, or the whole address for an IP; the port
    when it is not the default. Only ``[a-z0-9-]`` so that DataLad's
    environment variable mapping (``-`` as ``__``) round-trips.
    """
    parts = urlsplit(server)
    host = (parts.hostname or "").lower()
    if re.fullmatch(r"[0-9.]+|[0-9a-f:]+", host) or host == "localhost":
        name = "xnat-" + re.sub(r"[^a-z0-9]+", "-", host)
    else:
        name = host.split(".")[0]
    if parts.port:
        name += f"-{parts.port}"
    return re.sub(r"-+", "-", name).strip("-")


def resolve_credential_name(name: str | None, server: str, cfg) -> str:
    return name or cfg.get("datalad.fmrif.credential") or default_credential_name(server)


def resolve_verify(cfg) -> str | bool:
    """TLS verification is always on; a CA bundle may be configured."""
    bundle = cfg.get("datalad.fmrif.ca-bundle") or os.environ.get("REQUESTS_CA_BUNDLE")
    return bundle or True


def env_names(name: str) -> tuple[str, str]:
    """DataLad's environment variables for a credential name."""
    stem = "DATALAD_CREDENTIAL_" + name.upper().replace("-", "__")
    return stem + "_USER", stem + "_SECRET"


# -- the keyring ----------------------------------------------------------------


def keyring_problem() -> str | None:
    """Why the keyring cannot hold the secret safely, or None when it can.

    ``keyring`` silently falls back to ``fail.Keyring`` on a headless Linux
    box, or to keyrings.alt's plaintext file when that package is installed
    (DataLad installs it). Neither is acceptable unless the user chose a
    backend explicitly (``PYTHON_KEYRING_BACKEND`` or keyringrc.cfg).
    """
    import keyring
    from keyring.backends import chainer, fail

    backend = keyring.get_keyring()
    chosen = backend
    if isinstance(backend, chainer.ChainerBackend):
        chosen = backend.backends[0] if backend.backends else fail.Keyring()
    if isinstance(chosen, fail.Keyring):
        return "no keyring backend is available (keyring reports fail.Keyring)"
    if type(chosen).__module__ == "keyring.backends.null":
        return "the keyring is disabled (keyring's null backend stores nothing)"
    module = type(chosen).__module__
    explicit = bool(os.environ.get("PYTHON_KEYRING_BACKEND")) or _keyringrc_exists()
    if module.startswith("keyrings.alt.file") and "Plaintext" in type(chosen).__name__:
        if not explicit:
            return (
                "the only keyring backend available stores secrets in a "
                "plaintext file (keyrings.alt PlaintextKeyring)"
            )
    return None


def _keyringrc_exists() -> bool:
    try:
        from keyring.util import platform_

        return (Path(platform_.config_root()) / "keyringrc.cfg").exists()
    except Exception:  # noqa: BLE001 - a broken keyring config is not explicit
        return False


def no_keyring_help(problem: str, name: str) -> str:
    user_var, secret_var = env_names(name)
    return (
        f"cannot store the XNAT password safely: {problem}. Options:\n"
        "  - start a Secret Service, e.g. on a headless Linux box:\n"
        "      dbus-run-session -- sh -c 'echo -n PW | "
        "gnome-keyring-daemon --unlock --components=secrets; bash'\n"
        f"  - for batch jobs, set {user_var} and {secret_var} in the environment\n"
        "    (ideally with an alias token from 'datalad fmrif-login --token',\n"
        "    which expires, instead of your password)\n"
        "A plaintext file is never used silently."
    )


class CredentialStore:
    """Get, set and remove the XNAT credential; DataLad's naming throughout."""

    def __init__(self, cfg=None):
        if cfg is None:
            from datalad import cfg as dlcfg

            cfg = dlcfg
        self.cfg = cfg

    def _manager(self):
        from datalad_next.credman import CredentialManager

        return CredentialManager(self.cfg)

    def get(self, name: str) -> Credential | None:
        user_var, secret_var = env_names(name)
        if os.environ.get(secret_var):
            user = os.environ.get(user_var)
            if not user:
                raise CredentialError(
                    f"{secret_var} is set but {user_var} is not; set both"
                )
            return Credential(name, user, os.environ[secret_var], "environment",
                              self.cfg.get(f"datalad.credential.{name}.expires"))
        problem = keyring_problem()
        if problem:
            raise NoKeyring(no_keyring_help(problem, name))
        cred = self._manager().get(name)
        if not cred or not cred.get("secret"):
            return None
        if not cred.get("user"):
            raise CredentialError(
                f"credential {name!r} has no user; run 'datalad fmrif-login' again"
            )
        return Credential(name, cred["user"], cred["secret"], "keyring",
                          cred.get("expires"))

    def set(self, name: str, user: str, secret: str, *, realm: str,
            expires: str | None = None) -> None:
        problem = keyring_problem()
        if problem:
            raise NoKeyring(no_keyring_help(problem, name))
        self._manager().set(
            name, user=user, secret=secret, realm=realm, type="user_password",
            expires=expires,
        )
        Rejections().forget(name)

    def remove(self, name: str) -> bool:
        Rejections().forget(name)
        return bool(self._manager().remove(name))


# -- lockout safety -------------------------------------------------------------


if os.name == "nt":  # pragma: no cover - no Windows CI here
    import msvcrt

    def _lock_file(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)

    def _unlock_file(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock_file(fh) -> None:
        fcntl.flock(fh, fcntl.LOCK_EX)

    def _unlock_file(fh) -> None:
        fcntl.flock(fh, fcntl.LOCK_UN)


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    path = Path(base) / "datalad-fmrif"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _fingerprint(cred: Credential, salt: bytes) -> str:
    # scrypt: a slow, salted one-way function. The file holds no secret and
    # nothing that makes guessing the secret cheap.
    material = f"{cred.user}\0{cred.secret}".encode()
    return hashlib.scrypt(material, salt=salt, n=2**14, r=8, p=1, dklen=32).hex()


class Rejections:
    """Remembers which secrets XNAT rejected, across processes."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory or _state_dir() / "rejected"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _file(self, name: str) -> Path:
        return self.directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".json")

    @contextlib.contextmanager
    def login_lock(self, name: str):
        """Serialise logins with one credential across processes."""
        lock = self._file(name).with_suffix(".lock")
        with open(lock, "a+") as fh:
            _lock_file(fh)
            try:
                yield
            finally:
                _unlock_file(fh)

    def rejected_at(self, cred: Credential) -> str | None:
        """When this very secret was rejected, or None."""
        try:
            record = json.loads(self._file(cred.name).read_text())
            salt = bytes.fromhex(record["salt"])
        except (OSError, ValueError, KeyError):
            return None
        if hmac.compare_digest(record.get("fingerprint", ""), _fingerprint(cred, salt)):
            return record.get("time", "earlier")
        return None

    def remember(self, cred: Credential, server: str) -> None:
        salt = secrets.token_bytes(16)
        record = {
            "credential": cred.name,
            "server": server,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "salt": salt.hex(),
            "fingerprint": _fingerprint(cred, salt),
        }
        path = self._file(cred.name)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)

    def forget(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(name).unlink()
