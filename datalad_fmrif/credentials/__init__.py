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

The package, one module per job:

- ``credential``: the :class:`Credential` and the errors that say what to fix;
- ``naming``: server URL, credential name, environment variables, provider;
- ``store``: the keyring-backed :class:`CredentialStore`;
- ``lockout``: :class:`Rejections`, the memory of rejected secrets;
- ``xnatfile``: the ``~/.xnat`` YAML file of the original tutorial;
- ``login``: the login dialogue of ``datalad fmrif-login``.

What other modules use is imported from here.
"""

from __future__ import annotations

from .credential import Credential, CredentialError, KeyringProblem, NoKeyring
from .lockout import Rejections
from .naming import (
    DEFAULT_SERVER,
    TOKEN_SUFFIX,
    credential_names,
    default_credential_name,
    env_names,
    normalize_server,
    resolve_auth_provider,
    resolve_credential_name,
    resolve_server,
    resolve_verify,
    restorable_name,
)
from .store import (
    CredentialStore,
    keyring_locked_help,
    keyring_problem,
    no_keyring_help,
)

__all__ = [
    "DEFAULT_SERVER",
    "TOKEN_SUFFIX",
    "Credential",
    "CredentialError",
    "CredentialStore",
    "KeyringProblem",
    "NoKeyring",
    "Rejections",
    "credential_names",
    "default_credential_name",
    "env_names",
    "keyring_locked_help",
    "keyring_problem",
    "no_keyring_help",
    "normalize_server",
    "resolve_auth_provider",
    "resolve_credential_name",
    "resolve_server",
    "resolve_verify",
    "restorable_name",
]
