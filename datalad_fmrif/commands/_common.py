"""What every command needs before it can talk to XNAT."""

from __future__ import annotations

import os

from ..credentials import (
    Credential,
    CredentialError,
    CredentialStore,
    resolve_credential_name,
    resolve_server,
    resolve_verify,
)
from ..xnat.session import XnatSession, request_limits


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
    try:
        limits = request_limits(cfg)
    except ValueError as e:  # a setting the user can correct, like a credential
        raise CredentialError(str(e)) from None
    return XnatSession(server_url, cred, verify=resolve_verify(cfg), **limits)


def command_config(dataset):
    """The dataset's configuration (given, or at the current directory), else
    the user's; re-read if another configuration manager in this process
    changed the files since (a credential stored with another dataset)."""
    from datalad import cfg
    from datalad.utils import get_dataset_root

    if dataset is not None:
        cfg = dataset.ds.config
    else:
        try:
            root = get_dataset_root(os.getcwd())
        except OSError:
            root = None
        if root:
            from datalad_next.datasets import Dataset

            cfg = Dataset(root).config
    cfg.reload()
    return cfg
