"""Where the XNAT credential lives, and how it is never tried twice once rejected.

The secret is a DataLad credential (datalad-next's ``CredentialManager``): its
properties (``user``, ``realm``, token expiry) are in git config
``datalad.credential.<name>.*`` and the secret in the OS keyring through the
``keyring`` package (service ``datalad-<name>``). For batch jobs, DataLad's own
environment variables ``DATALAD_CREDENTIAL_<NAME>_USER`` / ``_SECRET`` take
precedence and the keyring is not touched at all.

NIH accounts log in through an authentication provider other than XNAT's
local database (an LDAP provider); its ID is a property of the credential
(``datalad.credential.<name>.auth-provider``) or the configuration
``datalad.fmrif.auth-provider``, and every login names it.

NIH accounts lock after a few failed logins. A secret that XNAT rejected is
remembered (as a salted scrypt fingerprint of user, secret and provider,
never the secret) in the user's state directory, and every process of this
extension refuses to send it again with the same provider until ``datalad
fmrif-login`` stores a credential anew. Logins of one
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


class KeyringProblem(CredentialError):
    """The keyring cannot be used (none, locked, unreachable); the message
    says how to fix it or go around it."""


class NoKeyring(KeyringProblem):
    pass


@dataclass(frozen=True)
class Credential:
    name: str
    user: str
    secret: str = field(repr=False)
    source: str  # "keyring" or "environment"
    expires: str | None = None  # ISO time, for alias tokens
    #: XNAT's authentication provider ID (``authenticatorId``), e.g. an
    #: LDAP provider for NIH accounts; None: XNAT looks the user up
    auth_provider: str | None = None

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


TOKEN_SUFFIX = "-token"


def restorable_name(name: str) -> str:
    """The credential name ``datalad fmrif-login`` can always store again:
    an alias token credential (``<name>-token``, made by ``--token``)
    expires, so a dataset records the password credential it came from."""
    return name[: -len(TOKEN_SUFFIX)] if name.endswith(TOKEN_SUFFIX) else name


def credential_names(explicit: str | None, server: str, cfg,
                     recorded: str | None = None) -> list[str]:
    """The credential names to look up, in order.

    ``--credential``, else ``datalad.fmrif.credential`` (git config or
    ``DATALAD_FMRIF_CREDENTIAL``): one name, as asked. Else the name a
    dataset's ``fmrif`` remote recorded, then the one derived from the
    server: a recorded name never locks a clone out when its owner's
    credential has another name.
    """
    chosen = explicit or cfg.get("datalad.fmrif.credential")
    if chosen:
        return [chosen]
    names = [recorded, default_credential_name(server)]
    return [n for n in dict.fromkeys(names) if n]


def resolve_auth_provider(cfg, stored: str | None = None) -> str | None:
    """Configuration ``datalad.fmrif.auth-provider`` (dataset, user, or
    ``DATALAD_FMRIF_AUTH__PROVIDER``), else the credential's own property."""
    return (cfg.get("datalad.fmrif.auth-provider") or "").strip() or stored or None


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


def _keyring_options(name: str) -> str:
    user_var, secret_var = env_names(name)
    return (
        "  - start a Secret Service, e.g. on a headless Linux box:\n"
        "      dbus-run-session -- sh -c 'echo -n PW | "
        "gnome-keyring-daemon --unlock --components=secrets; bash'\n"
        f"  - for batch jobs, set {user_var} and {secret_var} in the environment\n"
        "    (ideally with an alias token from 'datalad fmrif-login --token',\n"
        "    which expires, instead of your password)"
    )


def no_keyring_help(problem: str, name: str, *, reading: bool = False) -> str:
    """Why there is no usable keyring, and the ways around it; ``reading``
    for commands that only look a credential up."""
    if reading:
        return (f"cannot read the XNAT credential {name!r}: {problem}. Options:\n"
                + _keyring_options(name))
    return (
        f"cannot store the XNAT password safely: {problem}. Options:\n"
        + _keyring_options(name)
        + "\nA plaintext file is never used silently."
    )


def keyring_locked_help(name: str, error: Exception) -> str:
    """The keyring exists but is locked (or cannot be reached) and could not
    be unlocked here: typically no display for gnome-keyring's unlock prompt
    (gcr-prompter: "cannot open display") in an SSH session or a job."""
    user_var, secret_var = env_names(name)
    locked = "locked" if type(error).__name__ == "KeyringLocked" else "not usable"
    return (
        f"the keyring holding the XNAT credential {name!r} is {locked} "
        f"({type(error).__name__}: {error}) and could not be unlocked here "
        "(no display to ask for its password?). Options:\n"
        "  - unlock it: log in to the desktop session, or in this shell run\n"
        "      echo -n KEYRING_PW | gnome-keyring-daemon --replace --unlock "
        "--components=secrets\n"
        "  - on a headless box, work inside a session of your own:\n"
        "      dbus-run-session -- sh -c 'echo -n PW | "
        "gnome-keyring-daemon --unlock --components=secrets; bash'\n"
        f"  - for batch jobs, set {user_var} and {secret_var} in the environment\n"
        "    (ideally with an alias token from 'datalad fmrif-login --token')"
    )


def _keyring_errors() -> tuple[type[BaseException], ...]:
    """What the keyring and its Secret Service backend raise when the
    keyring is locked, missing or the D-Bus session is gone."""
    import keyring.errors

    errors: list[type[BaseException]] = [keyring.errors.KeyringError]
    with contextlib.suppress(ImportError):
        import secretstorage.exceptions

        errors.append(secretstorage.exceptions.SecretStorageException)
    with contextlib.suppress(ImportError):
        import jeepney.wrappers

        errors.append(jeepney.wrappers.DBusErrorResponse)
    return tuple(errors)


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
        """The credential from the environment, else the keyring; None when
        neither has it. Raises KeyringProblem with the fix when the keyring
        is needed but missing, locked or unreachable."""
        user_var, secret_var = env_names(name)
        stored_provider = self.cfg.get(f"datalad.credential.{name}.auth-provider")
        if os.environ.get(secret_var):
            user = os.environ.get(user_var)
            if not user:
                raise CredentialError(
                    f"{secret_var} is set but {user_var} is not; set both"
                )
            return Credential(name, user, os.environ[secret_var], "environment",
                              self.cfg.get(f"datalad.credential.{name}.expires"),
                              resolve_auth_provider(self.cfg, stored_provider))
        problem = keyring_problem()
        if problem:
            raise NoKeyring(no_keyring_help(problem, name, reading=True))
        try:
            cred = self._manager().get(name)
        except _keyring_errors() as e:
            raise KeyringProblem(keyring_locked_help(name, e)) from None
        if not cred or not cred.get("secret"):
            return None
        if not cred.get("user"):
            raise CredentialError(
                f"credential {name!r} has no user; run 'datalad fmrif-login' again"
            )
        return Credential(name, cred["user"], cred["secret"], "keyring",
                          cred.get("expires"),
                          resolve_auth_provider(self.cfg, cred.get("auth-provider")))

    def ensure_writable(self, name: str) -> None:
        """Raise NoKeyring or KeyringProblem (with the fix) unless the
        keyring can take a secret now: checked before a password is sent to
        XNAT, so that a locked keyring does not cost a login. Reading it
        unlocks a locked collection where it can (the desktop's prompt)."""
        problem = keyring_problem()
        if problem:
            raise NoKeyring(no_keyring_help(problem, name))
        import keyring

        try:
            keyring.get_password(f"datalad-{name}", "secret")
        except _keyring_errors() as e:
            raise KeyringProblem(keyring_locked_help(name, e)) from None

    def set(self, name: str, user: str, secret: str, *, realm: str,
            expires: str | None = None, auth_provider: str | None = None) -> None:
        """Store (replace) the credential; ``auth_provider`` None removes
        a provider stored earlier."""
        problem = keyring_problem()
        if problem:
            raise NoKeyring(no_keyring_help(problem, name))
        try:
            self._manager().set(
                name, user=user, secret=secret, realm=realm, type="user_password",
                expires=expires, **{"auth-provider": auth_provider},
            )
        except _keyring_errors() as e:
            raise KeyringProblem(keyring_locked_help(name, e)) from None
        Rejections().forget(name)

    def find(self, names: list[str]) -> Credential | None:
        """The first of ``names`` given by the environment, else the first
        stored in the keyring: a batch job's environment variables work
        without any keyring, whichever of the names they are for."""
        in_environment = [n for n in names if os.environ.get(env_names(n)[1])]
        for name in in_environment or names:
            cred = self.get(name)
            if cred is not None:
                return cred
        return None

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
    # nothing that makes guessing the secret cheap. The provider is part of
    # it: the same password checked by another provider is another login.
    material = f"{cred.user}\0{cred.secret}".encode()
    if cred.auth_provider and not cred.is_token:  # tokens ignore providers
        material += f"\0{cred.auth_provider}".encode()
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

    #: rejections kept per credential name (each a different user,
    #: secret or provider); the oldest go first
    KEEP = 16

    def _records(self, name: str) -> list[dict]:
        try:
            doc = json.loads(self._file(name).read_text())
        except (OSError, ValueError):
            return []
        if isinstance(doc, dict):  # the one-record format of earlier versions
            doc = [doc]
        return [r for r in doc if isinstance(r, dict)] if isinstance(doc, list) else []

    def rejected_at(self, cred: Credential) -> str | None:
        """When this very secret was rejected (for this user and provider), or None."""
        for record in self._records(cred.name):
            try:
                salt = bytes.fromhex(record["salt"])
            except (KeyError, ValueError, TypeError):
                continue
            if hmac.compare_digest(str(record.get("fingerprint", "")),
                                   _fingerprint(cred, salt)):
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
        records = (self._records(cred.name) + [record])[-self.KEEP:]
        path = self._file(cred.name)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(records, fh)
        os.replace(tmp, path)

    def forget(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(name).unlink()
