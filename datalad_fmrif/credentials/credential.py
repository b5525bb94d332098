"""The XNAT credential as this extension uses it, and the errors that say
what to fix about one."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

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


class Refused(Exception):
    """Input we cannot use; the message says why (it never holds a secret)."""


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
