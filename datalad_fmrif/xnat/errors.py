"""Errors of the XNAT layer: each says what happened and what to do.

Messages never contain a secret, a session cookie, or a subject label; they
name the server and the request path (paths are built from accession IDs).
"""

from __future__ import annotations


class XnatError(Exception):
    """Base class; ``str(error)`` is a complete message for the user."""


class ServerUnreachable(XnatError):
    """No connection could be made (DNS, refused, timeout, reset)."""


class TlsError(XnatError):
    """The server's certificate could not be verified."""


class NotXnat(XnatError):
    """The server answered, but not like XNAT."""


class CredentialRejected(XnatError):
    """XNAT answered 401 to a login: the secret is wrong, expired or locked.

    A rejected secret is never tried again (NIH accounts lock after a few
    failed logins); ``attempts`` says how many login requests this process
    made with it (0 when an earlier rejection was remembered).
    """

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


class UnknownAuthProvider(XnatError):
    """XNAT has no authentication provider with the ID the login named
    (400 from ``/data/services/auth``); no password was checked."""


class AccessDenied(XnatError):
    """403: the user may not read this project or object."""


class SessionUnreadable(AccessDenied):
    """A session its subject lists, of which XNAT lists no files: the user
    may not read it, its data is gone, or it is empty. XNAT 1.8 says so only
    indirectly (an empty file listing, a 500 for its scans)."""


class NotFound(XnatError):
    """404: no such project, subject, session, scan or file."""


class TransientError(XnatError):
    """A failure that may go away (5xx, reset, truncated body), still there
    after the retries."""


class BadResponse(XnatError):
    """The server answered 200 with something that is not what was asked
    for (an HTML page, malformed JSON, a body of the wrong size or digest)."""
