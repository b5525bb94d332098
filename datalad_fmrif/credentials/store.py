"""The keyring-backed credential store (DataLad's ``CredentialManager``),
with DataLad's environment variables taking precedence for batch jobs.

A keyring that would store a secret in plain text, or none at all, is never
used silently: every way it can fail has a message that says how to fix it
or go around it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .credential import Credential, CredentialError, KeyringProblem, NoKeyring
from .lockout import Rejections
from .naming import env_names, resolve_auth_provider


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
            cred = self._stored(name) or self._manager().get(name)
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

    def _stored(self, name: str) -> dict | None:
        """The credential as DataLad's ``CredentialManager.set`` stored it
        (what ``fmrif-login`` does): the secret in the keyring through
        DataLad's own keyring adapter (service ``datalad-NAME``), the
        properties in ``datalad.credential.NAME.*``; None when the keyring
        holds no such secret (the manager then looks further, e.g. for a
        credential of DataLad's older kind).

        Read without the manager because importing ``datalad_next`` applies
        its patches to DataLad's command machinery (clone, push, save, ...):
        0.35 s of CPU in every special remote process that ``git annex get
        -J N`` starts, for nothing it uses. ``test_credentials`` checks that
        both reads agree.
        """
        from datalad.support.keyring_ import keyring

        secret = keyring.get(name, "secret")
        if not secret:
            return None
        prefix = f"datalad.credential.{name}."
        props = {k[len(prefix):]: v for k, v in self.cfg.items() if k.startswith(prefix)}
        return dict(props, secret=secret)

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
