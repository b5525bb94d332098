"""xnatpy as the connection, with every adjustment in one place.

Users asked for xnatpy: the session :class:`~.session.XnatSession` keeps is
xnatpy's own ``XNATSession``, so its objects are there for whoever wants
them. What this module does differently from ``xnat.connect``, and why:

- **We log in ourselves** (one request, before this module is called; see
  ``XnatSession._login``), because a rejected password must be remembered
  and never sent again (NIH accounts lock). xnatpy gets the JSESSIONID.
- **We give it our requests session** (:func:`.http.http_session`, the one
  every request of ``XnatSession`` uses), because ``xnat.connect`` (0.8)
  accepts none and the one it makes itself follows redirects (to whatever
  server a redirect of ``GET /`` names, cookie and all), lets
  ``REQUESTS_CA_BUNDLE`` override a configured CA bundle, and keeps
  requests' pool of 10 connections; :mod:`.http` says why each matters.
  The session is ``XnatSession``'s, so a failed set-up here does not log
  it out (``xnat.connect`` would).
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
the process environment is never changed. ``XnatSession`` makes xnatpy's
session only when something asks for it (or for the XNAT version).
"""

from __future__ import annotations

import logging
import uuid

#: what xnat.connect waits for its own two requests
PILOT_TIMEOUT = 12.0
#: xnatpy's log level between DEBUG and INFO
VERBOSE = 15
#: xnatpy reports each login at INFO; that is our debug detail, not news
LOGGER = logging.getLogger("datalad.fmrif.xnatpy")
LOGGER.setLevel(logging.WARNING)


class XnatpyLogger(logging.LoggerAdapter):
    """A logger with the ``verbose`` method xnatpy calls."""

    def verbose(self, msg, *args, **kwargs):
        self.log(VERBOSE, msg, *args, **kwargs)


def connect(server: str, http, jsession: str, *, timeout: float):
    """xnatpy's ``XNATSession`` over ``http`` (logged in as ``jsession``),
    after the checks ``xnat.connect`` makes. Raises what requests and
    xnatpy raise."""
    import xnat
    from xnat.session import XNATSession

    log = XnatpyLogger(LOGGER, {})
    pilot = http.get(server, timeout=PILOT_TIMEOUT)
    used = xnat.detect_redirection(pilot, server, log)
    user = xnat.check_auth(http, server=used, user=None, jsession=jsession,
                           logger=log, timeout=PILOT_TIMEOUT)
    session = XNATSession(server=used, logger=log, interface=http,
                          original_uri=server, logged_in_user=user,
                          default_timeout=timeout, jsession=jsession,
                          keepalive=False)
    # its data model, as xnat.connect builds it (in a module of its own per
    # connection): without it xnatpy's objects (projects, subjects, ...)
    # cannot be made
    xnat.build_model(session, extension_types=True, connection_id=uuid.uuid4().hex)
    return session
