"""XNAT's login as the server defines it: the form of ``PUT
/data/services/auth`` and the authentication providers its login page
offers (before any password is sent)."""

from __future__ import annotations

import html
import re

import requests

from ..credentials import Credential
from .errors import ServerUnreachable, TlsError
from .http import pin_ca_bundle


def login_form(cred: Credential) -> dict:
    """The form of ``PUT /data/services/auth``: ``authenticatorId`` names
    the provider ID when one is known (AuthenticationRestlet); alias tokens
    are always checked by XNAT's token method and name none."""
    form = {"username": cred.user, "password": cred.secret}
    if cred.auth_provider and not cred.is_token:
        form["authenticatorId"] = cred.auth_provider
    return form


_OPTION = re.compile(r"<option\s+value=\"([^\"]*)\"[^>]*>([^<]*)</option>", re.I)
_SELECT = re.compile(r"<select[^>]*\bid=\"login_method\"[^>]*>(.*?)</select>", re.I | re.S)
_HIDDEN = re.compile(r"<input[^>]*\bid=\"login_method\"[^>]*\bvalue=\"([^\"]*)\"", re.I)


def parse_login_providers(page: str) -> list[tuple[str, str]]:
    """(provider ID, display name) from XNAT's login page (Login.vm): a
    ``<select id="login_method">`` when there are several, else a hidden
    field with the one provider ID."""
    select = _SELECT.search(page)
    if select:
        return [(html.unescape(v), html.unescape(n).strip())
                for v, n in _OPTION.findall(select.group(1)) if v]
    hidden = _HIDDEN.search(page)
    return [(html.unescape(hidden.group(1)), "")] if hidden else []


def login_providers(server: str, *, verify: str | bool = True,
                    timeout: float = 30.0) -> list[tuple[str, str]]:
    """The authentication providers XNAT's login page offers (no login;
    one GET). Raises ServerUnreachable or TlsError."""
    probe = requests.Session()
    probe.verify = verify
    pin_ca_bundle(probe, verify)
    try:
        response = probe.get(f"{server.rstrip('/')}/app/template/Login.vm",
                             timeout=timeout, allow_redirects=False)
    except requests.exceptions.SSLError as e:
        raise TlsError(f"cannot verify the TLS certificate of {server} "
                       f"({type(e).__name__})") from None
    except requests.exceptions.RequestException as e:
        raise ServerUnreachable(
            f"cannot reach XNAT at {server}: {type(e).__name__}") from None
    finally:
        probe.close()
    if response.status_code != 200:
        return []
    return parse_login_providers(response.text[:200_000])
