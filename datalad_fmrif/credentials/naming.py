"""Where a credential is for and what it is called: the server URL, the
credential name, DataLad's environment variables for it, the provider that
checks it and the CA bundle that checks the server. Pure: configuration in,
names out."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from .credential import CredentialError

DEFAULT_SERVER = "https://fmrif-xnat.nimh.nih.gov"


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
