"""Lockout memory: a secret XNAT rejected is never sent again.

NIH accounts lock after a few failed logins. A secret that XNAT rejected is
remembered (as a salted scrypt fingerprint of user, secret and provider,
never the secret) in the user's state directory, and every process of this
extension refuses to send it again with the same provider until ``datalad
fmrif-login`` stores a credential anew. Logins of one credential are
serialised across processes with a file lock, so parallel workers and
special-remote processes never race each other into a lockout.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path

from .credential import Credential


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
