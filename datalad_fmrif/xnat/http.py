"""The HTTP connection to XNAT, as every request of datalad-fmrif makes it.

:func:`http_session` is the ``requests`` session that carries the
JSESSIONID of one login; it differs from requests' defaults in three ways,
each for a reason:

- a redirect is an answer, never followed (:class:`NoRedirects`): it may
  lead off the configured server, and the session cookie with it;
- a configured CA bundle (``datalad.fmrif.ca-bundle``) is pinned to the
  HTTPS adapter (:class:`CaBundleAdapter`), because requests lets
  ``REQUESTS_CA_BUNDLE`` override a session's ``verify``;
- it keeps a connection per parallel job (``POOL_SIZE``, the ``-J``
  maximum), not requests' 10, or every transfer beyond the tenth would open
  a connection and a TLS handshake anew.

Every request of :class:`.session.XnatSession` goes through it; xnatpy's
session (:mod:`.xnatpy_adapter`), when something asks for it, is made over
the same one.
"""

from __future__ import annotations

import platform
from urllib.parse import urlsplit

import requests

#: connections kept per host: one per parallel job (-J allows up to 32)
POOL_SIZE = 32
#: what logging out may take (best effort)
LOGOUT_TIMEOUT = 12.0


class CaBundleAdapter(requests.adapters.HTTPAdapter):
    """Verifies with one CA bundle, whatever ``REQUESTS_CA_BUNDLE`` says.

    requests lets that variable override a session's ``verify`` setting, so
    a bundle configured in ``datalad.fmrif.ca-bundle`` would lose to it.
    """

    def __init__(self, bundle: str, **pool):
        super().__init__(**pool)
        self.bundle = bundle

    def send(self, request, **kwargs):
        kwargs["verify"] = self.bundle
        return super().send(request, **kwargs)


def pin_ca_bundle(session: requests.Session, verify: str | bool) -> None:
    """Verify *session*'s HTTPS requests with the bundle *verify* names."""
    if isinstance(verify, str):
        session.mount("https://", CaBundleAdapter(verify))


class NoRedirects(requests.Session):
    """A redirect is an answer, never followed (it may lead off the
    configured server, and the session cookie with it)."""

    def request(self, method, url, *args, **kwargs):
        kwargs["allow_redirects"] = False
        return super().request(method, url, *args, **kwargs)


def user_agent(client: str) -> str:
    """``client (system/release; python/...; requests/...)``, as xnatpy
    words its own."""
    return (f"{client} ({platform.system()}/{platform.release()}; "
            f"python/{platform.python_version()}; requests/{requests.__version__})")


def http_session(server: str, jsession: str, verify: str | bool,
                 agent: str) -> requests.Session:
    """A session of no redirects, the CA bundle pinned, a connection per
    job, and the JSESSIONID of our login as its cookie."""
    http = NoRedirects()
    http.verify = verify
    http.headers.update({"User-Agent": agent})
    pool = {"pool_connections": POOL_SIZE, "pool_maxsize": POOL_SIZE}
    http.mount("http://", requests.adapters.HTTPAdapter(**pool))
    http.mount("https://", CaBundleAdapter(verify, **pool) if isinstance(verify, str)
               else requests.adapters.HTTPAdapter(**pool))
    # xnatpy's cookie domain: the host without port; requests wants a dot
    # in it (psf/requests#5388), so a bare host name gets ".local"
    domain = urlsplit(server).hostname or ""
    if "." not in domain:
        domain += ".local"
    http.cookies.set_cookie(requests.cookies.create_cookie(
        domain=domain, name="JSESSIONID", value=jsession))
    return http


def end_session(http: requests.Session, server: str, timeout: float) -> None:
    """Log out (``DELETE /data/JSESSION``, as xnatpy does), best effort, so
    that XNAT does not keep the session until it times out."""
    try:
        http.delete(server.rstrip("/") + "/data/JSESSION", timeout=timeout)
    except requests.exceptions.RequestException:
        pass
    http.close()
