"""One logged-in XNAT session, reused for a whole run.

XNAT's own docs warn that basic auth on every request opens a server session
each time. We log in once (one request), make the connection around that
JSESSIONID (.http: no redirects, a pinned CA bundle, a connection per job),
reuse it from any number of threads, and log in again
exactly once when XNAT says the session expired. A rejected secret (401 on the
login itself) is final: it is remembered across processes and never sent
again, because NIH accounts lock after a few failed logins.

xnatpy's session (:attr:`XnatSession.xnatpy`, through one adapter,
.xnatpy_adapter, which says why each adjustment is needed) is made over the
same connection when something first asks for it or for the XNAT version,
which the run record holds: a command that records nothing (a re-run with
nothing new, the special remote) never imports xnatpy, with pydicom and
numpy, nor makes its set-up requests.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any

import requests
import urllib3

from .. import __version__
from ..credentials import Credential, Rejections
from .errors import (
    AccessDenied,
    BadResponse,
    CredentialRejected,
    NotFound,
    NotXnat,
    ServerUnreachable,
    TlsError,
    TransientError,
    UnknownAuthProvider,
    XnatError,
)
from .http import LOGOUT_TIMEOUT, end_session, http_session, pin_ca_bundle, user_agent
from .loginpage import login_form

lgr = logging.getLogger("datalad.fmrif.xnat")

TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
LOGIN_HELP = "Run 'datalad fmrif-login' to store the right password"
#: why a right password can be refused: XNAT checked it against its local
#: database because the login named no provider (XnatProviderManager)
PROVIDER_HELP = (
    "If this is an NIH account: XNAT checks the password of a user it has "
    "no record of against its local database unless the login names the "
    "provider, so give 'datalad fmrif-login --auth-provider ID' (the login "
    "page lists the IDs), or log in once on XNAT's web page first")

# Defaults a real, busy XNAT survives: a big session's file listing can take
# minutes to build, and a proxy in front of XNAT answers 504 meanwhile.
DEFAULT_TIMEOUT = 300.0  # seconds to wait for the next bytes of an answer
DEFAULT_RETRIES = 4  # per request or file: 5 attempts, 7.5 s of waiting
# a server that answers at all accepts a connection at once; waiting the
# read timeout for a silent one (VPN down) would cost minutes per attempt
CONNECT_TIMEOUT = 15.0


def request_limits(cfg) -> dict:
    """``timeout`` and ``retries`` for :class:`XnatSession` from git config
    ``datalad.fmrif.timeout`` (seconds) and ``datalad.fmrif.retries``.

    A value that is not a number is an error naming the setting, not a
    silent default.
    """
    limits = {}
    for name, kind, lowest in (("timeout", float, 1), ("retries", int, 0)):
        value = cfg.get(f"datalad.fmrif.{name}")
        if value in (None, ""):
            continue
        try:
            number = kind(value)
            if number < lowest:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"git config datalad.fmrif.{name} is {value!r}; it must be "
                f"a number of at least {lowest}") from None
        limits[name] = number
    return limits


class RetryBudget:
    """The failures one request, or one file, may still survive.

    One budget per file is shared by every request of its transfer (the
    first one and each resumption), so that a file sees at most
    ``retries + 1`` attempts however its body breaks off; waits grow as
    ``backoff * 2**n``.
    """

    def __init__(self, retries: int, backoff: float):
        self.retries = retries
        self.backoff = backoff
        self.spent = 0

    def spend(self, what: str) -> bool:
        """Wait before the next attempt after failure ``what``; False when
        the budget is used up (the caller then raises)."""
        if self.spent >= self.retries:
            return False
        delay = self.backoff * (2 ** self.spent)
        self.spent += 1
        lgr.debug("%s; retrying in %.1fs", what, delay)
        time.sleep(delay)
        return True

    @property
    def attempts(self) -> int:
        return self.spent + 1


def _could_not_connect(error: Exception) -> bool:
    """No connection was made at all (refused, no route, name, connect
    timeout): a server that is not there, unlike a reset or a broken body."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def looks_like_html(head: bytes) -> bool:
    """An XNAT error page, whatever the status said."""
    return head.lstrip()[:1] == b"<"


class XnatSession:
    """A logged-in session with retries, re-authentication and clear errors.

    ``retries`` and ``backoff`` bound how long a transient failure (5xx,
    reset, timeout) is retried: ``backoff * 2**n`` seconds before attempt n+1.
    """

    def __init__(
        self,
        server: str,
        credential: Credential,
        *,
        verify: str | bool = True,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        timeout: float = DEFAULT_TIMEOUT,
        rejections: Rejections | None = None,
    ):
        self.server = server.rstrip("/")
        self.credential = credential
        self.verify = verify
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.rejections = rejections or Rejections()
        self.login_attempts = 0
        self._http: requests.Session | None = None
        self._jsession = ""
        self._xnatpy = None  # xnatpy's session, made on first use
        self._version: str | None = None
        self._generation = 0
        self._lock = threading.Lock()
        # set when XNAT answered an HTML page again right after a fresh
        # login: pages are then errors, not expiry (no login per file)
        self._pages_are_errors = False

    # -- connection -----------------------------------------------------------

    def __enter__(self) -> "XnatSession":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        with self._lock:
            self._login()

    def close(self) -> None:
        """Log out, so that XNAT does not keep the session until it times out."""
        with self._lock:
            if self._http is not None:
                self._log_out(self._http)
            self._http = None
            self._xnatpy = None

    def _log_out(self, http: requests.Session) -> None:
        """End the server's session of ``http`` and close it (best effort)."""
        end_session(http, self.server, min(self.timeout, LOGOUT_TIMEOUT))

    @property
    def http(self) -> requests.Session:
        """The requests session carrying the JSESSIONID cookie."""
        http = self._http
        if http is None:
            self.connect()
            http = self._http
        return http

    @property
    def xnatpy(self):
        """xnatpy's ``XNATSession`` over this session's connection, with
        its data model, for whoever wants xnatpy's objects (a script that
        browses as the FMRIF tutorial does). Made on first use, and again
        after a fresh login; nothing of datalad-fmrif's own work needs it.
        Raises what xnatpy's set-up raises (:func:`.xnatpy_adapter.connect`)."""
        from .xnatpy_adapter import connect

        with self._lock:
            if self._http is None:
                self._login()
            if self._xnatpy is None:
                self._xnatpy = connect(self.server, self._http, self._jsession,
                                       timeout=self.timeout)
            return self._xnatpy

    @property
    def xnat_version(self) -> str:
        """XNAT's version, for the run record, read as xnatpy reads it
        (``/xapi/siteConfig/buildInfo`` since XNAT 1.7, else
        ``/data/version``); empty when it cannot be read (its absence is
        no error, and it is not worth a retry)."""
        if self._version is None:
            self._version = ""
            for path in ("/xapi/siteConfig/buildInfo", "/data/version"):
                try:
                    response = self.request("GET", path, budget=self.budget(0))
                    body = response.content
                    response.close()
                    text = (json.loads(body).get("version") if path.startswith("/xapi")
                            else body.decode("utf-8", "replace"))
                except (XnatError, ValueError, AttributeError, OSError) as e:
                    lgr.debug("XNAT version from %s: %s", path, type(e).__name__)
                    continue
                text = str(text or "").strip()
                if text and len(text) < 64 and not looks_like_html(text.encode()):
                    self._version = text
                    break
        return self._version

    def _login(self) -> None:
        """One login request; then the connection is set up around it.

        Must be called with ``self._lock`` held.
        """
        cred = self.credential
        with self.rejections.login_lock(cred.name):
            when = self.rejections.rejected_at(cred)
            if when:
                raise CredentialRejected(
                    f"XNAT at {self.server} rejected this credential "
                    f"({cred.name!r}, from the {cred.source}) at {when}; it is "
                    "not tried again, to keep the account from being locked. "
                    f"{LOGIN_HELP}, then retry.",
                    attempts=0,
                )
            if cred.is_token and cred.expired():
                raise CredentialRejected(
                    f"the alias token {cred.name!r} expired at {cred.expires}; "
                    "issue a new one with 'datalad fmrif-login --token'",
                    attempts=0,
                )
            jsession = self._request_jsession()
        old, self._http = self._http, None
        self._xnatpy = None  # made again over the new connection when asked for
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001
                pass
        http = http_session(self.server, jsession, self.verify,
                            user_agent(f"datalad-fmrif/{__version__}"))
        self._check_login(http)
        self._jsession = jsession
        self._http = http
        self._generation += 1

    def _check_login(self, http: requests.Session) -> None:
        """One request that only XNAT answers as XNAT does: ``GET
        /data/auth`` on the new session says ``User 'NAME' is logged in``
        (xnatpy's login check, the same request). Anything else after a
        login that seemed to work is not an XNAT we can use."""
        try:
            response = http.get(f"{self.server}/data/auth",
                                timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout))
        except requests.exceptions.SSLError as e:
            raise self._tls_error(e) from None
        except requests.exceptions.RequestException as e:
            raise ServerUnreachable(
                f"cannot reach XNAT at {self.server}: {type(e).__name__}"
            ) from None
        text = response.text[:1000] if response.status_code == 200 else ""
        response.close()
        if not re.search(r"User '[^']+' is logged in", text):
            self._log_out(http)
            raise NotXnat(
                f"{self.server} did not answer like XNAT after login (GET "
                f"/data/auth: HTTP {response.status_code})")

    def _request_jsession(self) -> str:
        """The one login request. Alias tokens log in by basic auth, like xnatpy."""
        cred = self.credential
        probe = requests.Session()
        probe.verify = self.verify
        pin_ca_bundle(probe, self.verify)
        self.login_attempts += 1
        try:
            if cred.is_token:
                response = probe.get(
                    f"{self.server}/data/JSESSION",
                    auth=(cred.user, cred.secret),
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            else:
                response = probe.put(
                    f"{self.server}/data/services/auth",
                    data=login_form(cred),
                    timeout=self.timeout,
                    allow_redirects=False,
                )
        except requests.exceptions.SSLError as e:
            raise self._tls_error(e) from None
        except requests.exceptions.RequestException as e:
            raise ServerUnreachable(
                f"cannot reach XNAT at {self.server}: {type(e).__name__}. "
                "Check the URL and your network (NIH VPN?)"
            ) from None
        except OSError as e:  # requests: the configured CA bundle cannot be read
            raise TlsError(
                f"cannot verify the TLS certificate of {self.server}: {e}. Point "
                "git config datalad.fmrif.ca-bundle (or REQUESTS_CA_BUNDLE) at a "
                "readable CA bundle; verification is never turned off."
            ) from None
        finally:
            probe.close()
        if response.status_code == 401:
            self.rejections.remember(cred, self.server)
            what = "alias token" if cred.is_token else "password"
            if cred.is_token:
                advice = f"{LOGIN_HELP} or issue a new token with --token."
            elif cred.auth_provider:
                advice = (f"{LOGIN_HELP} (with --auth-provider "
                          f"{cred.auth_provider}).")
            else:
                advice = f"{LOGIN_HELP}. {PROVIDER_HELP}."
            via = (f" through provider {cred.auth_provider!r}"
                   if cred.auth_provider and not cred.is_token else "")
            raise CredentialRejected(
                f"XNAT at {self.server} rejected the {what} of {cred.name!r} "
                f"(user {cred.user}, from the {cred.source}){via}; login "
                f"attempts made: {self.login_attempts}. It is not tried again, "
                f"to keep the account from being locked. {advice}",
                attempts=self.login_attempts,
            )
        if response.status_code == 400 and cred.auth_provider and not cred.is_token:
            raise UnknownAuthProvider(
                f"XNAT at {self.server} has no authentication provider "
                f"{cred.auth_provider!r} (HTTP 400; the password was not "
                "checked). 'datalad fmrif-login' lists the providers the "
                "login page offers; set the right one with --auth-provider "
                "or git config datalad.fmrif.auth-provider"
            )
        if response.status_code != 200:
            raise NotXnat(
                f"login at {self.server} answered HTTP {response.status_code}; "
                "is this an XNAT server?"
            )
        token = response.cookies.get("JSESSIONID") or response.text.strip()
        if not token or looks_like_html(token.encode()) or len(token) > 256:
            raise NotXnat(
                f"login at {self.server} returned no session; is this an XNAT server?"
            )
        return token

    def _tls_error(self, e: Exception) -> TlsError:
        return TlsError(
            f"cannot verify the TLS certificate of {self.server} "
            f"({type(e).__name__}). If your institution uses its own CA, point "
            "git config datalad.fmrif.ca-bundle (or REQUESTS_CA_BUNDLE) at "
            "its certificate bundle; verification is never turned off."
        )

    def _reauthenticate(self, seen_generation: int) -> None:
        """Log in again, once, unless another thread already did."""
        with self._lock:
            if self._generation != seen_generation:
                return
            lgr.info("XNAT session at %s expired; logging in again", self.server)
            self._login()

    # -- requests ---------------------------------------------------------------

    def request(self, method: str, path: str, *, params: dict | None = None,
                headers: dict | None = None, stream: bool = False,
                budget: RetryBudget | None = None) -> requests.Response:
        """A request with retries on transient failures and one re-login.

        ``path`` is a server path (``/data/...``); it is never a full URL, so
        nothing is ever sent to another host. ``budget`` is the retry budget
        to spend (a file's, shared by all requests of its transfer); without
        one, the request has a budget of its own.
        """
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"not a server path: {path!r}")
        url = self.server + path
        if budget is None:
            budget = self.budget()
        reauthenticated = False
        while True:
            http = self.http  # may log in first (lazily): the generation is
            generation = self._generation  # that of the session used here
            try:
                response = http.request(
                    method, url, params=params, headers=headers, stream=stream,
                    timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout),
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as e:
                raise self._tls_error(e) from None
            except (requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                failure = f"{type(e).__name__}"
                unreachable = _could_not_connect(e)
                response = None
            else:
                expired = response.status_code == 401 or (
                    response.status_code in (301, 302, 303, 307)
                    and "login" in response.headers.get("Location", "").lower()
                )
                if expired:
                    response.close()
                    if reauthenticated:
                        raise CredentialRejected(
                            f"XNAT at {self.server} refused a fresh session for "
                            f"{method} {path}", attempts=self.login_attempts)
                    self._reauthenticate(generation)
                    self._pages_are_errors = False
                    reauthenticated = True
                    continue
                if response.status_code not in TRANSIENT_STATUS:
                    response.generation = generation
                    return self._check_status(response, method, path)
                failure = f"HTTP {response.status_code}"
                unreachable = False
                response.close()
            if not budget.spend(f"{method} {path}: {failure}"):
                if unreachable:
                    # not one file's problem: callers stop instead of
                    # spending the same retries on every other request
                    raise ServerUnreachable(
                        f"cannot reach XNAT at {self.server}: {method} {path} "
                        f"failed after {budget.attempts} attempts: {failure}"
                    )
                raise TransientError(
                    f"{method} {self.server}{path} failed after "
                    f"{budget.attempts} attempts: {failure}"
                )

    def budget(self, retries: int | None = None) -> RetryBudget:
        """A fresh retry budget: what one request, or one file, may spend
        (``retries``: fewer than the session's, for a request whose failure
        is itself the answer)."""
        return RetryBudget(self.retries if retries is None else retries, self.backoff)

    @property
    def pages_are_errors(self) -> bool:
        """XNAT answered an HTML page again right after a fresh login."""
        return self._pages_are_errors

    def login_page(self, response: requests.Response, retried: bool) -> bool:
        """After an HTML page where data was expected: log in again, once.

        XNAT, or a single-sign-on proxy in front of it, may answer an
        expired session with its login page and status 200. Returns True
        when the request is worth one more try on a fresh session; False
        when ``retried`` (the page came again right after a fresh login: an
        error page, not expiry). From then on pages in this process are
        taken as errors at once, so that a persistent page costs no login
        per file. The password is never re-sent after a 401: :meth:`_login`
        refuses.
        """
        if retried:
            self._pages_are_errors = True
        if self._pages_are_errors:
            return False
        self._reauthenticate(getattr(response, "generation", self._generation))
        return True

    def _check_status(self, response: requests.Response, method: str, path: str):
        status = response.status_code
        if status in (200, 206):
            return response
        response.close()
        where = f"{method} {self.server}{path}"
        if status == 403:
            raise AccessDenied(f"{where}: access denied (403); ask the project "
                               "owner for access on the XNAT web page")
        if status == 404:
            raise NotFound(f"{where}: not found (404)")
        raise XnatError(f"{where}: HTTP {status}")

    def get_json(self, path: str, params: dict | None = None, *,
                 budget: RetryBudget | None = None) -> Any:
        """GET a JSON document, re-logging in once if XNAT answers its login page."""
        params = dict(params or {}, format="json")
        retried = False
        while True:
            response = self.request("GET", path, params=params, budget=budget)
            body = response.content
            if not looks_like_html(body[:512]):
                try:
                    return json.loads(body)
                except ValueError:
                    raise BadResponse(
                        f"GET {self.server}{path}: malformed JSON from the server"
                    ) from None
            if not self.login_page(response, retried):
                raise BadResponse(
                    f"GET {self.server}{path}: the server sent an HTML page where JSON "
                    "was expected"
                )
            retried = True

    def result_set(self, path: str, params: dict | None = None, *,
                   budget: RetryBudget | None = None) -> list[dict]:
        """The rows of an XNAT listing (``{"ResultSet": {"Result": [...]}}``).

        A listing whose ``totalRecords`` is not its number of rows was cut
        short or changed while XNAT built it: it is asked for once more,
        then refused (never taken as complete).
        """
        for again in (False, True):
            doc = self.get_json(path, params, budget=budget)
            try:
                rows = doc["ResultSet"]["Result"]
            except (KeyError, TypeError):
                raise BadResponse(
                    f"GET {self.server}{path}: not an XNAT listing (no ResultSet)"
                ) from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise BadResponse(f"GET {self.server}{path}: malformed listing rows")
            total = str(doc["ResultSet"].get("totalRecords", "")).strip()
            if not total.isdigit() or int(total) == len(rows):
                return rows
            lgr.debug("GET %s: totalRecords %s, %d rows", path, total, len(rows))
        raise BadResponse(
            f"GET {self.server}{path}: the listing says it has {total} rows but "
            f"holds {len(rows)}, twice; XNAT may be changing this data. Run the "
            "command again later"
        )
