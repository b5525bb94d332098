"""What every command needs before it can talk to XNAT."""

from __future__ import annotations

from ..credentials import (
    Credential,
    CredentialError,
    CredentialStore,
    resolve_credential_name,
    resolve_server,
    resolve_verify,
)
from ..xnat.session import XnatSession


def xnat_session(cfg, server: str | None, credential: str | None) -> XnatSession:
    """A not yet connected session for the resolved server and credential.

    Raises CredentialError with a message that says what to do.
    """
    server_url = resolve_server(server, cfg)
    name = resolve_credential_name(credential, server_url, cfg)
    cred: Credential | None = CredentialStore(cfg).get(name)
    if cred is None:
        raise CredentialError(
            f"no credential {name!r} for {server_url}: run "
            f"'datalad fmrif-login --server {server_url}' first")
    return XnatSession(server_url, cred, verify=resolve_verify(cfg))
