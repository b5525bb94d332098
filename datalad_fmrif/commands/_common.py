"""What every command shares: its common parameters, the one way to build a
result record, and what it needs before it can talk to XNAT.

Commands only translate between DataLad and the library; this module holds
the translation they have in common, so that ``--server`` means the same in
every command and every result record has the same shape.
"""

from __future__ import annotations

import os

from datalad.support.exceptions import CapturedException
from datalad_next.commands import Parameter, get_status_dict
from datalad_next.constraints import EnsureDataset, EnsureStr

from ..credentials import (
    Credential,
    CredentialError,
    CredentialStore,
    credential_names,
    default_credential_name,
    resolve_server,
    resolve_verify,
)
from ..remote_setup import recorded_credential
from ..xnat.session import XnatSession, request_limits


# -- parameters every command takes -----------------------------------------------

#: ``--server``: a URL (checked by the library, which never quotes a URL
#: that carries a password)
SERVER = EnsureStr(min_len=1)
#: ``--credential``: a DataLad credential name
CREDENTIAL = EnsureStr(min_len=1)

SERVER_DOC = """XNAT server. Default: git config datalad.fmrif.server, else
            https://fmrif-xnat.nimh.nih.gov"""
CREDENTIAL_DOC = """name of the credential stored by 'datalad fmrif-login'.
            Default: git config datalad.fmrif.credential, else derived from
            the server (fmrif-xnat)."""
CONFIG_DATASET_DOC = """dataset whose configuration (`datalad.fmrif.server`,
            `datalad.fmrif.credential`, `datalad.fmrif.ca-bundle`) to
            use. Default: the dataset at the current directory, if any, else
            the user's configuration."""


def dataset_param(doc: str = CONFIG_DATASET_DOC) -> Parameter:
    """``-d/--dataset``; the doc says what the command does with it."""
    return Parameter(args=("-d", "--dataset"), doc=doc)


def server_param(doc: str = SERVER_DOC) -> Parameter:
    """``--server URL``."""
    return Parameter(args=("--server",), metavar="URL", doc=doc)


def credential_param(doc: str = CREDENTIAL_DOC) -> Parameter:
    """``--credential NAME``."""
    return Parameter(args=("--credential",), metavar="NAME", doc=doc)


def dataset_constraint(purpose: str) -> EnsureDataset:
    """``-d``: an installed dataset, for the *purpose* DataLad names in errors."""
    return EnsureDataset(installed=True, purpose=purpose)


# -- result records --------------------------------------------------------------------


def result_record(action: str, status: str, message, *,
                  exception: BaseException | None = None, **fields) -> dict:
    """A DataLad result record; every command builds its records here.

    ``exception``: the exception that caused this result, attached as a
    DataLad ``CapturedException`` (``datalad -f json`` and the debug log show
    its traceback). Only exceptions whose text holds no secret may be given:
    DataLad prints that text wherever the message does not already contain
    it.
    """
    if exception is not None and not isinstance(exception, CapturedException):
        exception = CapturedException(exception)
    return get_status_dict(action=action, status=status, message=message,
                           exception=exception, **fields)


def xnat_session(cfg, server: str | None, credential: str | None,
                 dataset=None) -> XnatSession:
    """A not yet connected session for the resolved server and credential.

    The credential: ``credential`` (``--credential``), else configuration
    ``datalad.fmrif.credential``, else the one the ``fmrif`` remote of
    ``dataset`` (a path) records, else the one derived from the server.
    Raises CredentialError with a message that says what to do.
    """
    server_url = resolve_server(server, cfg)
    recorded = recorded_credential(dataset, server_url) if dataset else None
    names = credential_names(credential, server_url, cfg, recorded)
    cred: Credential | None = CredentialStore(cfg).find(names)
    if cred is None:
        name = names[-1]  # the one asked for, else the server's default
        login = f"datalad fmrif-login --server {server_url}"
        if name != default_credential_name(server_url):
            login += f" --credential {name}"
        raise CredentialError(
            f"no credential {name!r} for {server_url}: run '{login}' first")
    try:
        limits = request_limits(cfg)
    except ValueError as e:  # a setting the user can correct, like a credential
        raise CredentialError(str(e)) from None
    return XnatSession(server_url, cred, verify=resolve_verify(cfg), **limits)


class NotInDataset(ValueError):
    """The command needs a dataset, and none was given or is here."""


def dataset_here(purpose: str):
    """The dataset of the current directory, or NotInDataset with the hint a
    new user needs (DataLad's own NoDatasetFound names no way out)."""
    from datalad.distribution.dataset import require_dataset
    from datalad.support.exceptions import NoDatasetFound

    try:
        return require_dataset(None, check_installed=True, purpose=purpose)
    except NoDatasetFound:
        raise NotInDataset(
            f"{os.getcwd()} is not in a DataLad dataset to {purpose}: create "
            "one first ('datalad create study', then 'cd study'), or name "
            "one with -d PATH") from None


def not_in_dataset(action: str, error: NotInDataset) -> dict:
    """The result that says so."""
    return result_record(action, "impossible", str(error), exception=error,
                         path=os.getcwd(), type="dataset")


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
