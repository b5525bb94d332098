"""xnatpy as the connection, with every adjustment in one place.

Users asked for xnatpy: the session :class:`~.session.XnatSession` keeps is
xnatpy's own ``XNATSession``, so its objects are there for whoever wants
them. What this module does differently from ``xnat.connect``, and why:

- **We log in ourselves** (one request, before this module is called; see
  ``XnatSession._login``), because a rejected password must be remembered
  and never sent again (NIH accounts lock). xnatpy gets the JSESSIONID.
- **We make the requests session** xnatpy works with, because
  ``xnat.connect`` (0.8) accepts none and the one it makes itself is wrong
  for us in three ways:

  - it follows redirects, and moves to whatever server a redirect of
    ``GET /`` names, taking the session cookie along: ours answers a
    redirect as it is (:class:`NoRedirects`);
  - it applies only ``verify=False``, so a configured CA bundle
    (``datalad.fmrif.ca-bundle``) would be ignored, and requests lets
    ``REQUESTS_CA_BUNDLE`` override a session's ``verify``: ours pins the
    bundle to its HTTPS adapter (:class:`CaBundleAdapter`);
  - it keeps requests' pool of 10 connections: ours keeps one per
    parallel job (``POOL_SIZE``, the ``-J`` maximum), or every transfer
    beyond the tenth would open a connection and a TLS handshake anew.

- **We turn off xnatpy's keep-alive pings**: its thread pings
  ``/data/JSESSION`` every few minutes and, when the server has gone away,
  dies with a traceback on the user's terminal ("Exception in thread
  XNATpyKeepAliveThread"). An expired session costs one fresh login
  instead (``XnatSession``), which every request already survives.
- **We give xnatpy a logger with its ``verbose`` level**
  (:class:`XnatpyLogger`): ``xnat.connect`` adds that method to every
  logger of the process; we do not.

Then the two requests ``xnat.connect`` makes are made as it makes them,
with xnatpy's own functions: ``GET /`` (its redirect detection) and
``GET /data/auth`` (its login check). Nothing of xnatpy is patched, and
the process environment is never changed.
"""

from __future__ import annotations

import logging
import platform
from urllib.parse import urlsplit

import requests

#: connections kept per host: one per parallel job (-J allows up to 32)
POOL_SIZE = 32
#: what xnat.connect waits for its own two requests
PILOT_TIMEOUT = 12.0
#: xnatpy's log level between DEBUG and INFO
VERBOSE = 15


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


class XnatpyLogger(logging.LoggerAdapter):
    """A logger with the ``verbose`` method xnatpy calls."""

    def verbose(self, msg, *args, **kwargs):
        self.log(VERBOSE, msg, *args, **kwargs)


def http_session(server: str, jsession: str, verify: str | bool) -> requests.Session:
    """The requests session xnatpy works with: no redirects, the CA bundle
    pinned, a connection per job, and the JSESSIONID of our login (as cookie
    and as xnatpy's ``JSessionAuth``, as ``xnat.connect`` sets them)."""
    import xnat
    from xnat.utils import JSessionAuth

    http = NoRedirects()
    http.verify = verify
    http.headers.update({"User-Agent": (
        f"xnatpy/{xnat.__version__} ({platform.system()}/{platform.release()}; "
        f"python/{platform.python_version()}; requests/{requests.__version__})")})
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
    http.auth = JSessionAuth(jsession)
    return http


def connect(server: str, jsession: str, *, verify: str | bool, timeout: float,
            logger: logging.Logger):
    """xnatpy's ``XNATSession`` over our session, after the checks
    ``xnat.connect`` makes. Raises what requests and xnatpy raise."""
    import xnat
    from xnat.session import XNATSession

    log = XnatpyLogger(logger, {})
    http = http_session(server, jsession, verify)
    try:
        pilot = http.get(server, timeout=PILOT_TIMEOUT)
        used = xnat.detect_redirection(pilot, server, log)
        user = xnat.check_auth(http, server=used, user=None, jsession=jsession,
                               logger=log, timeout=PILOT_TIMEOUT)
        return XNATSession(server=used, logger=log, interface=http,
                           original_uri=server, logged_in_user=user,
                           default_timeout=timeout, jsession=jsession,
                           keepalive=False)
    except BaseException:
        # as xnat.connect: end the server's session, best effort
        try:
            http.delete(server.rstrip("/") + "/data/JSESSION", timeout=PILOT_TIMEOUT)
        except requests.exceptions.RequestException:
            pass
        http.close()
        raise
