"""A local HTTP server that behaves like the parts of XNAT 1.8 we use.

Written from XNAT's own source (xnat-web 1.8.10.1, with Restlet 1.1.10 as
XNAT 1.8 pins it; each behaviour's test in ``tests/sandbox/`` names the
source file it follows) and XNAT's documented behaviour; it shares no code
with the client.  It serves the synthetic
:class:`~datalad_fmrif.sandbox.study.Study` on 127.0.0.1 with XNAT's login
flow (form login, basic auth, JSESSIONID cookies, alias tokens, idle expiry,
account lockout, authentication providers such as NIH's LDAP with XNAT's
cached provider-less lookup, a cap on concurrent sessions), its JSON listings, single-file downloads (with ranges), zip
streams, and injectable faults, latency and bandwidth limits.

One module of about 1,400 lines, on purpose: it is one server, read as XNAT
is read (login and sessions, listings, files and ranges, zips, faults), in
that order, and a test that names a behaviour finds it here by its URL.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import random
import re
import secrets
import socket
import ssl
import struct
import threading
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources as importlib_resources
from typing import Callable, Iterable, Optional, Union
from urllib.parse import parse_qsl, unquote, urlsplit

from .study import FORBIDDEN_PROJECT, Study, StudySpec

XNAT_VERSION = "1.8.10"
UUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
#: How ``Range: bytes=N-`` is answered. "restlet" is what XNAT 1.8 sends:
#: it pins Restlet 1.1.10, whose RangeFilter wraps the file in a
#: RangeRepresentation, Representation.getAvailableSize gives the length of
#: the rest (size - N) and RangeUtils.formatContentRange the range
#: ``bytes N-(size-1)/size`` (restlet-framework-java, tag 1.1, 1.1.10/), which
#: is a correct 206. Two shapes a client must survive as well: "restlet-1.1.0",
#: the same classes in Restlet 1.1.0 (``bytes N-(N+size)/size`` and an unknown
#: available size, so no Content-Length; the body ends when the connection
#: closes), and "whole-length", a 206 whose Content-Length is the whole file's
#: (what DESIGN.md and issue 15 described; no Restlet version sends it, but a
#: proxy or another XNAT stand-in may).
RANGE_ANSWERS = ("restlet", "restlet-1.1.0", "whole-length")
#: How zips are written: "java" as XNAT's ZipOutputStream (STORED entries with
#: size and CRC in the local header, UTF-8 flag, no data descriptor),
#: "descriptor" with sizes in a data descriptor after each entry.
ZIP_SHAPES = ("java", "descriptor")
FILE_COLUMNS = ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content",
                "cat_ID", "digest"]
LOCALDB = "localdb"   # XdatUserAuthService.LOCALDB
TOKEN = "token"       # XdatUserAuthService.TOKEN
FAULT_KINDS = ("status", "reset", "truncate", "html200", "slow", "expire", "body", "hold")


# ====================================================================== public records

@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict
    status: int  # 0: the connection was reset before a status was sent
    auth: str    # "basic", "cookie", "form" or "none"


@dataclass
class Fault:
    """A misbehaviour injected into matching requests.

    kind: ``status`` (answer ``status`` with an HTML page), ``reset`` (drop the
    connection; after ``after_bytes`` body bytes if given, else before any
    response), ``truncate`` (announce the full Content-Length, send
    ``after_bytes`` bytes, close), ``html200`` (200 with an HTML error page),
    ``slow`` (wait ``delay`` seconds, then answer normally), ``hold`` (keep
    the request waiting, unanswered, until :meth:`release`, then answer
    normally; :meth:`wait_held` tells when one arrived), ``expire``
    (invalidate this request's session, answer 401), ``body`` (a server that
    answers something else than it claims: ``body`` bytes are sent with
    ``status`` (default 200) as ``content_type``, or, when ``body`` is a
    callable, the normal response is sent with its body replaced by
    ``body(original_bytes)``, e.g. one row of a real listing altered).
    ``headers`` are added to a ``status`` or ``body`` answer (e.g. a
    ``Location`` for a redirect).
    ``path`` is a regular expression searched in the request path; ``times``
    is how many matching requests are affected (None: all of them).
    ``rate``: affect each matching request only with this probability
    (drawn from ``random.Random(seed)``, so a run is repeatable), for faults
    sprinkled over a long run.
    """

    kind: str
    path: str = ".*"
    method: Optional[str] = None
    times: Optional[int] = 1
    status: Optional[int] = None
    after_bytes: Optional[int] = None
    delay: Optional[float] = None
    body: Union[bytes, Callable[[bytes], bytes], None] = None
    content_type: str = "application/json;charset=UTF-8"
    headers: Optional[dict] = None
    rate: Optional[float] = None
    seed: int = 0
    hits: int = field(default=0, compare=False)

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}, expected one of {FAULT_KINDS}")
        if self.kind == "status" and self.status is None:
            self.status = 500
        if self.kind == "truncate" and self.after_bytes is None:
            self.after_bytes = 0
        if self.kind == "slow" and self.delay is None:
            self.delay = 1.0
        if self.kind == "body" and self.body is None:
            raise ValueError("a body fault needs body= (bytes, or a callable rewriting the body)")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        self._regex = re.compile(self.path)
        self._random = random.Random(self.seed)
        self._arrived = threading.Event()
        self._released = threading.Event()

    def wait_held(self, timeout: float) -> bool:
        """Has a ``hold`` fault a request waiting (within ``timeout`` s)?"""
        return self._arrived.wait(timeout)

    def release(self):
        """Let every request a ``hold`` fault keeps, and any later one, go on."""
        self._released.set()

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self._regex.search(path) is not None

    def draw(self) -> bool:
        """Whether this matching request is affected (always, without a rate)."""
        return self.rate is None or self._random.random() < self.rate


# ====================================================================== errors used for control flow

class _HTTPError(Exception):
    def __init__(self, status: int, message: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message


class _ConnectionReset(Exception):
    pass


class _Done(Exception):
    """The response was already sent (by a fault)."""


_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 416: "Range Not Satisfiable"}


def _html_page(status: int, message: str) -> bytes:
    title = f"HTTP Status {status} – {_REASONS.get(status, 'Error')}"
    return (f"<!DOCTYPE html><html lang=\"en\"><head><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><hr class=\"line\" />"
            f"<p><b>Message</b> {html.escape(message)}</p>"
            f"<hr class=\"line\" /><h3>Apache Tomcat</h3></body></html>").encode()


LOGIN_FAILED_PAGE = (
    "<!DOCTYPE html><html><head><title>XNAT - Login</title></head><body>"
    "<div id=\"login_box\"><h3>Login attempt failed. Please try again.</h3></div>"
    "</body></html>").encode()


def _login_page(user: Optional[str], providers: dict) -> bytes:
    """XNAT's Login.vm: the providers as ``<select id="login_method">`` when
    there is more than one, else a hidden field with the one provider ID."""
    if user:
        info = (f"<span id=\"user_info\">Logged in as: &nbsp;<a id=\"username-link\" "
                f"href=\"/app/template/XDATScreen_UpdateUser.vm\">{html.escape(user)}</a></span>")
    else:
        if len(providers) == 1:
            choice = ("<input type=\"hidden\" id=\"login_method\" name=\"login_method\" "
                      f"value=\"{html.escape(next(iter(providers)))}\"/>")
        else:
            options = "".join(f"<option value=\"{html.escape(p)}\">{html.escape(_PROVIDER_NAMES.get(m, p))}</option>"
                              for p, m in providers.items())
            choice = ("<label for=\"login_method\">Login</label>\n"
                      "<select id=\"login_method\" class=\"xnat-menu\" data-menu-opts=\"width:160px\" "
                      f"name=\"login_method\">\n{options}\n</select>")
        info = ("<form name=\"form1\" method=\"post\" action=\"/login\" id=\"login_form\">"
                f"{choice}"
                "<input type=\"text\" name=\"username\"/><input type=\"password\" name=\"password\"/>"
                "</form>")
    return (f"<!DOCTYPE html><html><head><title>XNAT Sandbox</title></head><body>"
            f"<h1>FMRIF XNAT sandbox (synthetic data)</h1>{info}</body></html>").encode()


_PROVIDER_NAMES = {LOCALDB: "Database", "ldap": "NIH Login"}


# ====================================================================== server state

class _ServerState:
    """Everything the request handlers share; all access under ``lock``."""

    def __init__(self, study: Study, users: dict, lockout_after: int, session_timeout: float,
                 forbidden_projects: Iterable[str], token_lifetime: float, *,
                 auth_providers: dict | None = None, user_providers: dict | None = None,
                 lockout_duration: float = 3600.0, max_sessions: Optional[int] = None):
        self.study = study
        self.users = dict(users)
        self.lockout_after = lockout_after
        self.lockout_duration = lockout_duration
        self.max_sessions = max_sessions
        self.session_timeout = session_timeout
        self.forbidden = set(forbidden_projects)
        self.token_lifetime = token_lifetime
        # provider ID -> auth method; XNAT always has the local database
        self.providers = {LOCALDB: LOCALDB, **(auth_providers or {})}
        self.user_providers = dict(user_providers or {})  # user -> provider ID
        unknown = set(self.user_providers.values()) - set(self.providers)
        if unknown:
            raise ValueError(f"users of unknown providers: {sorted(unknown)}")
        # xdat_user_auth: users XNAT has a record of (local users always;
        # users of another provider after their first successful login)
        self.user_auth = {u: LOCALDB for u in self.users if u not in self.user_providers}
        self.cached_methods: dict[str, str] = {}  # XnatProviderManager.CACHED_AUTH_METHODS
        self.lock = threading.Lock()
        self.sessions: dict[str, dict] = {}     # JSESSIONID -> {"user", "last"}
        self.tokens: dict[str, dict] = {}       # alias -> {"user", "secret", "expires"}
        self.failed: dict[str, int] = {}
        self.locked_at: dict[str, float] = {}
        self.faults: list[Fault] = []
        self.log: list[RequestRecord] = []
        self.latency = 0.0
        self.bandwidth: Optional[float] = None
        self.range_answer = "restlet"
        self.zip_shape = "java"

    # ---- login
    def retrieve_auth_method(self, name: str) -> str:
        """XnatProviderManager.retrieveAuthMethod: the user's record, else
        ``token`` for an alias, else ``localdb``; cached per name for good."""
        with self.lock:
            method = self.cached_methods.get(name)
            if method is None:
                if name in self.user_auth:
                    method = self.providers[self.user_auth[name]]
                elif UUID_RE.match(name):
                    method = TOKEN
                else:
                    method = LOCALDB
                self.cached_methods[name] = method
            return method

    def providers_with_method(self, method: str) -> list[str]:
        return [p for p, m in self.providers.items() if m.lower() == method.lower()]

    def check_login(self, name: str, password: str, provider: Optional[str] = None,
                    method: Optional[str] = None) -> Optional[str]:
        """The XNAT user for these credentials checked by one provider, or
        None (and count the failure).

        ``provider`` is a provider ID (``authenticatorId``, ``ID/user`` in
        basic auth); else ``method`` an auth method; else the method is
        looked up as XNAT does, with its per-name cache.
        """
        if provider is None:
            if method is None:
                method = self.retrieve_auth_method(name)
            if method.lower() == TOKEN:
                provider = TOKEN
            else:
                matching = self.providers_with_method(method)
                provider = matching[0] if len(matching) == 1 else None
        with self.lock:
            locked = self.locked_at.get(name)
            if locked is not None and time.time() - locked >= self.lockout_duration:
                # ResetFailedLogins: the lock ends after its duration
                del self.locked_at[name]
                self.failed.pop(name, None)
            if self.failed.get(name, 0) >= self.lockout_after:
                self.failed[name] = self.failed.get(name, 0) + 1
                return None
            user = None
            token = self.tokens.get(name)
            if provider == TOKEN or (provider is None and token is not None):
                if token is not None and token["secret"] == password and token["expires"] > time.time():
                    user = token["user"]
            elif (provider is not None and name in self.users and self.users[name] == password
                  and self.user_providers.get(name, LOCALDB) == provider):
                user = name
                self.user_auth.setdefault(name, provider)  # first login makes the record
            if user is None:
                self.failed[name] = self.failed.get(name, 0) + 1
                if self.failed[name] >= self.lockout_after:
                    self.locked_at.setdefault(name, time.time())
            elif self.max_sessions is not None and self._open_sessions(user) >= self.max_sessions:
                # ConcurrentSessionControlAuthenticationStrategy with
                # exceptionIfMaximumExceeded: the login is refused, and
                # logged as a failed attempt like any AuthenticationException
                self.failed[name] = self.failed.get(name, 0) + 1
                return None
            return user

    def _open_sessions(self, user: str) -> int:
        now = time.monotonic()
        return sum(1 for s in self.sessions.values()
                   if s["user"] == user and now - s["last"] <= self.session_timeout)

    def new_session(self, user: str) -> str:
        jsid = secrets.token_hex(16).upper()
        now = time.monotonic()
        with self.lock:
            if len(self.sessions) >= 10_000:  # basic auth opens one per request: forget idle ones
                for k in [k for k, v in self.sessions.items() if now - v["last"] > self.session_timeout]:
                    del self.sessions[k]
            self.sessions[jsid] = {"user": user, "last": now}
        return jsid

    def session_user(self, jsid: str) -> Optional[str]:
        with self.lock:
            s = self.sessions.get(jsid)
            if s is None:
                return None
            now = time.monotonic()
            if now - s["last"] > self.session_timeout:
                del self.sessions[jsid]
                return None
            s["last"] = now
            return s["user"]

    def drop_session(self, jsid: Optional[str]):
        with self.lock:
            self.sessions.pop(jsid, None)

    # ---- faults
    def take_fault(self, method: str, path: str) -> Optional[Fault]:
        with self.lock:
            for fault in self.faults:
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                if fault.matches(method, path) and fault.draw():
                    fault.hits += 1
                    return fault
        return None

    def record(self, rec: RequestRecord):
        with self.lock:
            self.log.append(rec)


# ====================================================================== streaming helpers

class _BodyWriter:
    """Writes a response body honouring bandwidth limits and truncate/reset faults."""

    def __init__(self, handler: "XNATRequestHandler", chunked: bool, cut_after: Optional[int],
                 cut_kind: Optional[str]):
        self.h = handler
        self.chunked = chunked
        self.cut_after = cut_after
        self.cut_kind = cut_kind
        self.sent = 0
        self.start = time.monotonic()
        self.position = 0  # for zipfile

    def _raw(self, data: bytes):
        bw = self.h.state.bandwidth
        # with a cap, send small pieces, each no earlier than the cap allows
        step = 256 * 1024 if not bw else int(min(256 * 1024, max(1024, bw / 50)))
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            if bw:
                delay = self.start + (self.sent + len(piece)) / bw - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if self.chunked:
                self.h.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                self.h.wfile.write(piece)
            self.sent += len(piece)

    def write(self, data) -> int:
        data = bytes(data)
        n = len(data)
        self.position += n
        if not data:
            return 0
        if self.cut_after is not None and self.sent + len(data) >= self.cut_after:
            self._raw(data[:max(0, self.cut_after - self.sent)])
            self.h.wfile.flush()
            raise _ConnectionReset(self.cut_kind)
        self._raw(data)
        return n

    def tell(self) -> int:
        return self.position

    def flush(self):
        pass

    def finish(self):
        if self.chunked:
            self.h.wfile.write(b"0\r\n\r\n")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


# ====================================================================== the handler

class XNATRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Apache-Coyote/1.1"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped after this

    state: _ServerState  # set on the subclass made per server

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ValueError, OSError):  # the connection was dropped on purpose (fault) or by the client
            self.close_connection = True

    # ---- entry points
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ---- request plumbing
    def _dispatch(self, method: str):
        self.method = method
        split = urlsplit(self.path)
        self.req_path = split.path
        self.query = dict(parse_qsl(split.query, keep_blank_values=True))
        self.auth_kind = "none"
        self.user = None
        self.jsid = None
        self.new_cookies: list[str] = []
        self.fault: Optional[Fault] = None
        self.rewrite: Optional[Callable[[bytes], bytes]] = None
        self.logged = False
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""

        try:
            if self.state.latency:
                time.sleep(self.state.latency)
            fault = self.state.take_fault(method, self.req_path)
            if fault is not None:
                self._pre_fault(fault)
            self._route(method)
        except _ConnectionReset as exc:
            self._reset(graceful=(str(exc) == "truncate"))
        except _HTTPError as exc:
            self._send_error_page(exc.status, exc.message)
        except _Done:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _pre_fault(self, fault: Fault):
        kind = fault.kind
        if kind == "slow":
            time.sleep(fault.delay)
        elif kind == "hold":
            fault._arrived.set()
            fault._released.wait()
        elif kind == "status":
            self._send_error_page(fault.status, "Injected fault", fault.headers)
            raise _Done
        elif kind == "body":
            if callable(fault.body):
                self.rewrite = fault.body
                self.rewrite_headers = fault.headers
                return
            self._send(fault.status or 200, fault.body, fault.content_type, fault.headers)
            raise _Done
        elif kind == "html200":
            self._log(200)
            self._send(200, _html_page(500, "The server encountered an internal error"), "text/html;charset=UTF-8",
                       record=False)
            raise _Done
        elif kind == "reset" and fault.after_bytes is None:
            self._log(0)
            raise _ConnectionReset("reset")
        elif kind == "expire":
            self.state.drop_session(self._cookie("JSESSIONID"))
            raise _HTTPError(401, "Session expired")
        else:  # truncate, or reset after some bytes
            self.fault = fault

    def _cookie(self, name: str) -> Optional[str]:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        for part in raw.split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return None

    def _reset(self, graceful: bool):
        """Drop the connection; with RST unless ``graceful``."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            if not graceful:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.connection.close()
        except OSError:
            pass

    def _log(self, status: int):
        if not self.logged:
            self.logged = True
            self.state.record(RequestRecord(self.method, self.req_path, dict(self.query), status, self.auth_kind))

    def _session_cookies(self, jsid: str) -> list[str]:
        now_ms = int(time.time() * 1000)
        timeout_ms = int(self.state.session_timeout * 1000)
        return [f"JSESSIONID={jsid}; Path=/; HttpOnly",
                f"SESSION_EXPIRATION_TIME=\"{now_ms},{timeout_ms}\"; Path=/"]

    def _send(self, status: int, body: bytes | None, ctype: str, headers: dict | None = None,
              record: bool = True, length: int | None = None):
        """Send a complete response (``body`` None with HEAD semantics handled
        here); *length* announces another Content-Length than the body's, -1
        none at all."""
        if record:
            self._log(status)
        fault = self.fault
        if self.rewrite is not None and body is not None:
            body, self.rewrite = self.rewrite(body), None
            headers = {**(headers or {}), **(self.rewrite_headers or {})}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for c in self.new_cookies:
            self.send_header("Set-Cookie", c)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        total = len(body) if length is None else length
        if total >= 0:  # -1: no length, the body ends with the connection
            self.send_header("Content-Length", str(total))
        if fault is not None and fault.kind == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if self.method == "HEAD" or body is None:
            return
        cut_after = fault.after_bytes if fault is not None else None
        writer = _BodyWriter(self, chunked=False, cut_after=cut_after,
                             cut_kind=fault.kind if fault is not None else None)
        writer.write(body)
        if cut_after is not None:
            # the body was shorter than the cut: cut now anyway
            raise _ConnectionReset(fault.kind)

    def _send_error_page(self, status: int, message: str, extra: dict | None = None):
        headers = {"WWW-Authenticate": 'Basic realm="XNAT"'} if status == 401 else {}
        self._send(status, _html_page(status, message), "text/html;charset=UTF-8",
                   {**headers, **(extra or {})})

    def _send_text(self, text: str, status: int = 200, ctype: str = "text/plain;charset=UTF-8"):
        self._send(status, text.encode("utf-8"), ctype)

    def _send_json(self, obj, status: int = 200):
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json;charset=UTF-8")

    # ---- authentication
    def _authenticate(self, required: bool = True) -> Optional[str]:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(auth[6:].strip()).decode("utf-8").partition(":")
            except Exception:
                raise _HTTPError(401, "Malformed credentials")
            self.auth_kind = "basic"
            # XnatBasicAuthenticationFilter: "providerID/username" names the provider
            provider, slash, rest = name.partition("/")
            if slash:
                name = rest
            user = self.state.check_login(name, password, provider=provider if slash else None)
            if user is None:
                self.new_cookies = []
                raise _HTTPError(401, "Login attempt failed")
            self.jsid = self.state.new_session(user)
            self.new_cookies = self._session_cookies(self.jsid)
            self.user = user
            return user
        jsid = self._cookie("JSESSIONID")
        if jsid:
            user = self.state.session_user(jsid)
            if user is not None:
                self.auth_kind = "cookie"
                self.jsid = jsid
                self.user = user
                return user
        if required:
            raise _HTTPError(401, "The request requires user authentication")
        return None

    # ---- routing
    def _route(self, method: str):
        path = self.req_path
        if path == "/login" and method == "POST":
            return self._web_login()
        if path in ("/", "") or path.startswith("/app/") or path == "/login":
            user = None
            if self.headers.get("Authorization"):
                user = self._authenticate()
            elif self._cookie("JSESSIONID"):
                user = self._authenticate(required=False)
            return self._send(200, _login_page(user, self.state.providers), "text/html;charset=UTF-8")

        if path.rstrip("/") == "/data/services/auth" and method in ("PUT", "POST"):
            return self._form_login()

        if not (path.startswith("/data") or path.startswith("/xapi")):
            raise _HTTPError(404, f"{path} not found")

        self._authenticate()

        if path == "/data/auth":
            return self._send_text(f"User '{self.user}' is logged in")
        if path == "/data/JSESSION":
            if method == "DELETE":
                self.state.drop_session(self.jsid)
                self.new_cookies = ["JSESSIONID=; Path=/; Max-Age=0"]
                return self._send_text("")
            self.new_cookies = self.new_cookies or self._session_cookies(self.jsid)
            return self._send_text(self.jsid)
        if path == "/data/version":
            raise _HTTPError(404, "The requested resource is not available")
        if path.startswith("/xapi/"):
            return self._xapi(path)
        if path.startswith("/data/services/tokens/"):
            return self._tokens(path)
        if path.startswith("/data/search/elements"):
            return self._send_json({"ResultSet": {"Result": [], "totalRecords": "0"}})

        if method not in ("GET", "HEAD"):
            raise _HTTPError(405, f"{method} is not supported by the sandbox")

        rest = path[len("/data"):]
        if rest.startswith("/archive"):
            rest = rest[len("/archive"):]
        segments = [unquote(s) for s in rest.strip("/").split("/") if s != ""]
        return self._catalog(segments)

    def _form_login(self):
        """AuthenticationRestlet (``/data/services/auth``): the form fields of
        the body choose how the password is checked."""
        fields = {}
        for entry in self.body.decode("utf-8", "replace").split("&"):
            key, eq, value = entry.partition("=")
            if eq:
                fields[key] = unquote(value.replace("+", " "))
        self.auth_kind = "form"
        name = fields.get("username", fields.get("j_username", ""))
        password = fields.get("password", fields.get("j_password", ""))
        method = fields.get("provider") or fields.get("login_method") or None
        provider = fields.get("authenticatorId") or None
        state = self.state
        if not name or not password:
            return self._send(401, LOGIN_FAILED_PAGE, "text/html;charset=UTF-8")
        if provider is not None:
            if provider not in state.providers:
                raise _HTTPError(400, "Authentication failed: No authentication provider "
                                      f"identified by id {provider} found.")
            user = state.check_login(name, password, provider=provider)
        elif method is not None:
            count = len(state.providers_with_method(method))
            if count > 1:
                raise _HTTPError(400, "Authentication failed: Multiple authentication providers "
                                      "with identical authMethod exist. Use query parameter "
                                      "authenticatorId to specify a particular provider.")
            user = state.check_login(name, password, method=method) if count else None
        else:
            user = state.check_login(name, password)
        if user is None:
            return self._send(401, LOGIN_FAILED_PAGE, "text/html;charset=UTF-8")
        self.jsid = state.new_session(user)
        self.new_cookies = self._session_cookies(self.jsid)
        return self._send_text(self.jsid)

    def _web_login(self):
        """XnatAuthenticationFilter (``POST /login`` of the login page): the
        ``login_method`` field is a provider ID, blank means XNAT's lookup."""
        fields = dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))
        self.auth_kind = "form"
        provider = fields.get("login_method") or None
        user = None
        if fields.get("username") and (provider is None or provider in self.state.providers):
            user = self.state.check_login(fields["username"], fields.get("password", ""),
                                          provider=provider)
        if user is None:
            return self._send(302, b"", "text/html;charset=UTF-8",
                              {"Location": "/app/template/Login.vm?failed=true"})
        self.jsid = self.state.new_session(user)
        self.new_cookies = self._session_cookies(self.jsid)
        return self._send(302, b"", "text/html;charset=UTF-8", {"Location": "/"})

    def _xapi(self, path: str):
        if path.startswith("/xapi/siteConfig/buildInfo"):
            info = {"version": XNAT_VERSION, "buildNumber": "8", "buildDate": "Mon Jan 15 12:00:00 UTC 2024",
                    "commit": "sandbox", "sha": "sandbox", "isDirty": "false", "branch": "sandbox"}
            sub = path[len("/xapi/siteConfig/buildInfo"):].strip("/")
            if sub:
                if sub not in info:
                    raise _HTTPError(404, f"No such property {sub}")
                return self._send_text(info[sub])
            return self._send_json(info)
        if path.rstrip("/") == "/xapi/schemas":
            return self._send_json(["xdat", "xnat"])
        m = re.fullmatch(r"/xapi/schemas/([A-Za-z]+)(?:\.xsd)?", path)
        if m:
            try:
                xsd = importlib_resources.files(__package__).joinpath("schemas", f"{m.group(1)}.xsd").read_bytes()
            except FileNotFoundError:
                raise _HTTPError(404, f"No schema {m.group(1)}")
            return self._send(200, xsd, "application/xml;charset=UTF-8")
        if path.rstrip("/") == "/xapi/siteConfig/uptime":
            return self._send_json({"days": 0, "hours": 1, "minutes": 0, "seconds": 0})
        raise _HTTPError(404, f"{path} not found")

    def _tokens(self, path: str):
        state = self.state
        if path.rstrip("/") == "/data/services/tokens/issue":
            alias = str(uuid.uuid4())
            secret = secrets.token_urlsafe(48)
            now = time.time()
            expires = now + state.token_lifetime
            with state.lock:
                state.tokens[alias] = {"user": self.user, "secret": secret, "expires": expires}
                token_id = len(state.tokens)
            return self._send_json({
                "alias": alias, "secret": secret, "xdatUserId": self.user, "singleUse": False,
                "enabled": True, "id": token_id, "created": int(now * 1000), "timestamp": int(now * 1000),
                "estimatedExpirationTime": int(expires * 1000), "validIPAddresses": [],
                "disabled": 0})
        m = re.fullmatch(r"/data/services/tokens/(validate|invalidate)/([^/]+)/([^/]+)", path)
        if m:
            action, alias, secret = m.group(1), unquote(m.group(2)), unquote(m.group(3))
            with state.lock:
                token = state.tokens.get(alias)
                ok = token is not None and token["secret"] == secret and token["expires"] > time.time()
                if ok and action == "invalidate":
                    del state.tokens[alias]
            if not ok:
                raise _HTTPError(404, "No valid token with that alias and secret")
            if action == "invalidate":
                return self._send_text("")
            return self._send_json({"valid": token["user"],
                                    "estimatedExpirationTime": int(token["expires"] * 1000)})
        raise _HTTPError(404, f"{path} not found")

    # ---- catalog
    def _check_project(self, project_id: str):
        study = self.state.study
        if study.project(project_id) is None:
            raise _HTTPError(404, f"Unable to find project {project_id}")
        if project_id in self.state.forbidden:
            raise _HTTPError(403, f"Access denied to project {project_id}")

    def _catalog(self, seg: list[str]):
        """Resolve /data/... paths of (collection, id) pairs and answer them."""
        study = self.state.study
        project = subject = session = scan = resource = None
        scan_all = False
        i = 0

        def nxt():
            return seg[i + 1] if i + 1 < len(seg) else None

        while i < len(seg):
            coll, ident = seg[i], nxt()
            if ident is None:
                return self._listing(coll, project, subject, session, scan, scan_all, resource)
            if coll == "projects" and not any((project, subject, session)):
                self._check_project(ident)
                project = study.project(ident)
            elif coll == "subjects" and session is None and subject is None:
                if project is not None:
                    subject = study.subject_by_label(project.id, ident)
                else:
                    subject = study.subject(ident)
                    if subject is not None:
                        self._check_project(subject.project)
                if subject is None:
                    raise _HTTPError(404, f"Unable to find subject {ident}")
            elif coll == "experiments" and session is None:
                if subject is not None:
                    session = study.session_by_label(subject.project, ident, subject.id)
                elif project is not None:
                    session = study.session_by_label(project.id, ident)
                else:
                    session = study.session(ident)
                    if session is not None:
                        self._check_project(session.project)
                if session is None or not study.readable(session.id):
                    self._unreadable_session(ident, seg[i + 2:], missing=session is None)
            elif coll == "scans" and session is not None and scan is None and not scan_all:
                if ident == "ALL" or "," in ident:
                    scan_all = ident
                else:
                    scan = study.scan(session.id, ident)
                    if scan is None:
                        raise _HTTPError(404, f"Unable to find scan {ident}")
            elif coll == "resources" and session is not None and resource is None and not scan_all:
                pool = study.scan_resources(session.id, scan.id) if scan else study.session_resources(session.id)
                resource = next((r for r in pool if ident in (r.id, r.label)), None)
                if resource is None and seg[i + 2:] == ["files"] and scan is None:
                    # FileList.java: a session resource that does not exist
                    # lists no files (200), it is not a 404
                    return self._empty_files()
                if resource is None:
                    raise _HTTPError(404, f"Unable to find resource {ident}")
            elif coll == "files" and session is not None:
                name = "/".join(seg[i + 1:])
                return self._file(session, scan, resource, name)
            else:
                raise _HTTPError(404, f"Unsupported path /data/{'/'.join(seg)}")
            i += 2
        return self._item(project, subject, session, scan, resource)

    def _unreadable_session(self, ident: str, rest: list, missing: bool):
        """What XNAT 1.8 answers for a session that is gone, or that this user
        may not read (xnat-web 1.8.10.1): ScanList.java dereferences the
        session it could not load (500, a NullPointerException page);
        FileList.java finds no catalogs and lists nothing (200, empty); the
        session itself is not found."""
        if rest == ["scans"]:
            raise _HTTPError(500, "java.lang.NullPointerException")
        if len(rest) == 3 and rest[0] in ("scans", "resources") and rest[2] == "files":
            return self._empty_files()
        raise _HTTPError(404, f"Unable to find experiment {ident}")

    def _empty_files(self):
        if self.query.get("format") == "zip":
            raise _HTTPError(404, "No files to zip")
        self._send_rows([], FILE_COLUMNS, honour_columns=False)
        raise _Done

    # ---- rows
    def _project_row(self, p):
        return {"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name, "description": p.description,
                "pi_firstname": p.pi_firstname, "pi_lastname": p.pi_lastname,
                "URI": f"/data/projects/{p.id}", "xsiType": "xnat:projectData"}

    def _subject_row(self, s):
        return {"ID": s.id, "label": s.label, "project": s.project, "insert_date": s.insert_date,
                "insert_user": "sandbox_admin", "URI": f"/data/subjects/{s.id}", "xsiType": "xnat:subjectData"}

    def _session_row(self, e):
        return {"ID": e.id, "label": e.label, "project": e.project, "xsiType": e.xsi_type,
                "date": e.date, "insert_date": e.insert_date, "URI": f"/data/experiments/{e.id}",
                "subject_ID": e.subject_id, "subject_label": e.subject_label}

    def _scan_row(self, sc):
        return {"ID": sc.id, "type": sc.type, "xsiType": sc.xsi_type, "quality": sc.quality,
                "series_description": sc.series_description, "note": sc.note,
                "URI": f"/data/experiments/{sc.session_id}/scans/{sc.id}",
                "xnat_imagescandata_id": sc.imagescandata_id}

    def _resource_row(self, r, scan=None):
        files = self.state.study.resource_files(r)
        return {"xnat_abstractresource_id": r.id, "label": r.label, "element_name": "xnat:resourceCatalog",
                "category": "scans" if r.scan_id else "resources", "cat_id": r.scan_id or "",
                "cat_desc": scan.series_description if scan else "", "format": r.format,
                "content": r.content, "tags": "", "file_count": str(len(files)),
                "file_size": str(sum(f.size for f in files))}

    def _file_row(self, f):
        if f.scan_id is not None:
            uri = f"/data/experiments/{f.session_id}/scans/{f.scan_id}/resources/{f.resource_id}/files/{f.name}"
        else:
            uri = f"/data/experiments/{f.session_id}/resources/{f.resource_id}/files/{f.name}"
        # FileList.java: Name is the file's name, URI its path relative to the
        # resource, as stored: never URL-encoded; Size and digest come from
        # the catalog, which may be stale
        study = self.state.study
        return {"Name": f.name.rsplit("/", 1)[-1], "Size": str(study.listed_size(f)), "URI": uri, "collection": f.resource,
                "file_tags": "", "file_format": "DICOM" if f.name.endswith(".dcm") else "",
                "file_content": "RAW" if f.name.endswith(".dcm") else "", "cat_ID": f.resource_id,
                "digest": f.md5}

    def _listing(self, coll, project, subject, session, scan, scan_all, resource):
        study = self.state.study
        default = None
        if coll == "projects" and not any((project, subject, session)):
            rows = [self._project_row(study.project(p)) for p in study.projects if p not in self.state.forbidden]
            default = ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"]
        elif coll == "subjects" and session is None and subject is None:
            if project is not None:
                subjects = study.subjects(project.id)
            else:
                subjects = [s for p in study.projects if p not in self.state.forbidden for s in study.subjects(p)]
            rows = [self._subject_row(s) for s in subjects]
            default = ["ID", "label", "project", "insert_date", "insert_user", "URI"]
        elif coll == "experiments" and session is None:
            if subject is not None:
                sessions = study.sessions(subject.id)
            elif project is not None:
                sessions = study.project_sessions(project.id)
            else:
                sessions = [e for p in study.projects if p not in self.state.forbidden
                            for e in study.project_sessions(p)]
            rows = [self._session_row(e) for e in sessions]
            default = ["ID", "label", "project", "xsiType", "date", "insert_date", "URI"]
            filters = ("xsiType", "date", "label")
            if subject is None and project is None:
                # /data/experiments filters on any experiment field (a comma
                # separates alternatives); a subject-assessor field in the
                # query (subject_ID, or a session xsiType) makes XNAT list
                # subject assessors, whose default columns add the subject
                filters += ("project", "subject_ID", "subject_label")
                if ({"subject_ID", "subject_label"} & set(self.query)
                        or self.query.get("xsiType", "").endswith("SessionData")):
                    default = default[:-1] + ["subject_ID", "subject_label", "URI"]
            for key in filters:
                if key in self.query:
                    wanted = set(self.query[key].split(","))
                    rows = [r for r in rows if r[key] in wanted]
        elif coll == "scans" and session is not None and scan is None and not scan_all:
            rows = [self._scan_row(sc) for sc in study.scans(session.id)]
            default = ["xnat_imagescandata_id", "ID", "type", "xsiType", "quality", "series_description",
                       "note", "URI"]
        elif coll == "resources" and session is not None and resource is None and not scan_all:
            pool = study.scan_resources(session.id, scan.id) if scan else study.session_resources(session.id)
            rows = [self._resource_row(r, scan) for r in pool]
            return self._send_rows(rows, list(rows[0]) if rows else [], honour_columns=False)
        elif coll == "files" and session is not None:
            if resource is not None:
                files = study.resource_files(resource)
                scans = [scan] if scan else []
            elif scan is not None:
                files = study.scan_files(session.id, scan.id)
                scans = [scan]
            elif scan_all:
                wanted = None if scan_all == "ALL" else set(scan_all.split(","))
                scans = [sc for sc in study.scans(session.id) if wanted is None or sc.id in wanted]
                files = [f for sc in scans for f in study.scan_files(session.id, sc.id)]
            else:
                scans = study.scans(session.id)
                files = study.files(session.id)
            if self.query.get("format") == "zip":
                return self._zip(session, files, scans)
            rows = [self._file_row(f) for f in files]
            return self._send_rows(rows, FILE_COLUMNS, honour_columns=False)
        else:
            raise _HTTPError(404, "Unsupported listing")
        return self._send_rows(rows, default)

    def _send_rows(self, rows: list[dict], default: list[str], honour_columns: bool = True):
        # XNAT's resource and file listings are catalog dumps: they ignore columns=
        columns = self.query.get("columns") if honour_columns else None
        if columns and columns != "DEFAULT":
            wanted = [c for c in columns.split(",") if c]
            if "URI" not in wanted:
                wanted.append("URI")
        else:
            wanted = default
        rows = [{k: r[k] for k in wanted if k in r} for r in rows]
        fmt = self.query.get("format", "html").lower()
        if fmt == "json":
            return self._send_json({"ResultSet": {"Result": rows, "totalRecords": str(len(rows)),
                                                  "title": "Sandbox listing"}})
        if fmt == "csv":
            out = io.StringIO()
            w = csv.DictWriter(out, fieldnames=wanted, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            return self._send_text(out.getvalue(), ctype="text/csv;charset=UTF-8")
        if fmt == "xml":
            parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<ResultSet totalRecords="%d"><results>'
                     % len(rows)]
            parts.append("<columns>" + "".join(f"<column>{html.escape(c)}</column>" for c in wanted)
                         + "</columns><rows>")
            for r in rows:
                parts.append("<row>" + "".join(f"<cell>{html.escape(r.get(c, ''))}</cell>" for c in wanted)
                             + "</row>")
            parts.append("</rows></results></ResultSet>")
            return self._send(200, "".join(parts).encode(), "text/xml;charset=UTF-8")
        table = ["<!DOCTYPE html><html><body><table><tr>"]
        table += [f"<th>{html.escape(c)}</th>" for c in wanted]
        table.append("</tr>")
        for r in rows:
            table.append("<tr>" + "".join(f"<td>{html.escape(r.get(c, ''))}</td>" for c in wanted) + "</tr>")
        table.append("</table></body></html>")
        return self._send(200, "".join(table).encode(), "text/html;charset=UTF-8")

    # ---- items
    def _item(self, project, subject, session, scan, resource):
        study = self.state.study
        if resource is not None:
            # XNAT answers a resource with its catalog; a listing is what clients need
            files = study.resource_files(resource)
            rows = [self._file_row(f) for f in files]
            return self._send_rows(rows, list(rows[0]) if rows else [], honour_columns=False)
        if scan is not None:
            xsi, fields = scan.xsi_type, {
                "ID": scan.id, "type": scan.type, "series_description": scan.series_description,
                "quality": scan.quality, "note": scan.note, "image_session_ID": scan.session_id,
                "xnat_imagescandata_id": scan.imagescandata_id, "project": study.session(scan.session_id).project}
        elif session is not None:
            xsi, fields = session.xsi_type, {
                "ID": session.id, "label": session.label, "project": session.project, "date": session.date,
                "subject_ID": session.subject_id, "modality": "MR", "scanner/manufacturer": "GE MEDICAL SYSTEMS"}
        elif subject is not None:
            xsi, fields = "xnat:subjectData", {"ID": subject.id, "label": subject.label,
                                               "project": subject.project}
        elif project is not None:
            xsi, fields = "xnat:projectData", {"ID": project.id, "secondary_ID": project.secondary_id,
                                               "name": project.name, "description": project.description}
        else:
            raise _HTTPError(404, "Nothing here")
        fmt = self.query.get("format", "xml").lower()
        if fmt == "json":
            item = {"children": [], "meta": {"create_event_id": 1, "xsi:type": xsi, "isHistory": False,
                                             "start_date": "Mon Jan 15 12:00:00 UTC 2024"},
                    "data_fields": fields}
            return self._send_json({"items": [item]})
        tag = xsi.split(":")[1]
        tag = tag[0].upper() + tag[1:]
        attrs = " ".join(f'{k}="{html.escape(str(v))}"' for k, v in fields.items()
                         if k in ("ID", "label", "project", "type"))
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<xnat:{tag} {attrs} '
               f'xmlns:xnat="http://nrg.wustl.edu/xnat" '
               f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>')
        return self._send(200, xml.encode(), "text/xml;charset=UTF-8")

    # ---- files
    def _file(self, session, scan, resource, name: str):
        study = self.state.study
        if scan is None and resource is None:
            raise _HTTPError(404, "Files must be addressed under a scan or a resource")
        f = study.file(session.id, scan.id if scan else None, name)
        if f is None or (resource is not None and f.resource_id != resource.id) \
                or not study.on_disk(f):
            raise _HTTPError(404, f"Unable to find file {name}")
        data = f.content()
        ctype = "application/dicom" if name.endswith(".dcm") else "text/plain"
        headers = {"Accept-Ranges": "bytes",
                   # Tomcat writes header bytes as they are (ISO-8859-1)
                   "Content-Disposition": 'attachment; filename="%s"' % name.rsplit("/", 1)[-1]
                   .encode("utf-8").decode("latin-1"),
                   "Last-Modified": "Mon, 15 Jan 2024 12:00:00 GMT"}
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            size = len(data)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                raise _HTTPError(416, "Bad range")
            if m.group(1) == "":
                start, end = max(0, size - int(m.group(2))), size - 1
            else:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
            end = min(end, size - 1)
            if start >= size or start > end:
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
            odd = self.state.range_answer
            if odd != "restlet" and m.group(1) and not m.group(2):
                # Restlet 1.1.0 ends the range at start + size; the rest is
                # sent, closed by the connection, with no length ("restlet-1.1.0")
                # or with the whole file's length ("whole-length").
                headers["Content-Range"] = f"bytes {start}-{start + size}/{size}"
                self.close_connection = True
                headers["Connection"] = "close"
                return self._send(206, data[start:], ctype, headers,
                                  length=size if odd == "whole-length" else -1)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return self._send(206, data[start:end + 1], ctype, headers)
        return self._send(200, data, ctype, headers)

    def _zip(self, session, files, scans):
        """A zip as XNAT 1.8 streams it (ZipRepresentation and ZipUtils of
        xnat-web 1.8.10.1): files missing on disk are skipped without a word,
        and a zip with nothing in it is a 404."""
        scan_by_id = {sc.id: sc for sc in scans}
        files = [f for f in files if self.state.study.on_disk(f)]
        if not files:
            raise _HTTPError(404, "No files to zip")
        self._log(200)
        fault = self.fault
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Disposition", f'attachment; filename="{session.label}.zip"')
        for c in self.new_cookies:
            self.send_header("Set-Cookie", c)
        self.send_header("Transfer-Encoding", "chunked")
        if fault is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.method == "HEAD":
            return
        writer = _BodyWriter(self, chunked=True, cut_after=fault.after_bytes if fault else None,
                             cut_kind=fault.kind if fault else None)
        entries = []
        for f in files:
            if f.scan_id is not None:
                sc = scan_by_id.get(f.scan_id)
                stype = _safe(sc.type) if sc else ""
                arc = f"{session.label}/scans/{f.scan_id}-{stype}/resources/{f.resource}/files/{f.name}"
            else:
                arc = f"{session.label}/resources/{f.resource}/files/{f.name}"
            entries.append((arc, f.content()))
        if self.state.zip_shape == "java":
            _write_java_zip(writer, entries)
        else:
            with zipfile.ZipFile(writer, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for arc, data in entries:
                    info = zipfile.ZipInfo(arc, date_time=(2024, 1, 15, 12, 0, 0))
                    info.compress_type = zipfile.ZIP_STORED
                    zf.writestr(info, data)
        if fault is not None:
            raise _ConnectionReset(fault.kind)
        writer.finish()


_DOS_TIME, _DOS_DATE = (12 << 11), ((2024 - 1980) << 9) | (1 << 5) | 15  # 2024-01-15 12:00


def _write_java_zip(out, entries) -> None:
    """Entries as java.util.zip.ZipOutputStream writes STORED ones: the CRC
    and both sizes in the local header (Java demands them before the data),
    no data descriptor, general purpose flag 0x800 (names in UTF-8: Java
    sets it for every entry with its default charset), version 10."""
    central, offset = [], 0
    for name, data in entries:
        raw = name.encode("utf-8")
        crc = zlib.crc32(data)
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 10, 0x800, 0, _DOS_TIME, _DOS_DATE,
                           crc, len(data), len(data), len(raw), 0)
        out.write(head + raw)
        out.write(data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 10, 10, 0x800, 0,
                                   _DOS_TIME, _DOS_DATE, crc, len(data), len(data), len(raw),
                                   0, 0, 0, 0, 0, offset) + raw)
        offset += len(head) + len(raw) + len(data)
    directory = b"".join(central)
    out.write(directory)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central),
                          len(directory), offset, 0))


# ====================================================================== the server object

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr, handler, ssl_context=None):
        self.ssl_context = ssl_context
        self.connections: set = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.conn_lock:
            self.connections.add(sock)
        return sock, addr

    def handle_error(self, request, client_address):
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError, ssl.SSLError)):
            return  # clients going away are no error of the server's
        super().handle_error(request, client_address)

    def shutdown_request(self, request):
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_all(self):
        with self.conn_lock:
            conns = list(self.connections)
            self.connections.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Sandbox:
    """A running sandbox XNAT server on 127.0.0.1.

    Use as a context manager (``with Sandbox() as sb: ...``) or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(self, spec: StudySpec | None = None, *, latency: float = 0.0,
                 bandwidth: Optional[float] = None, users: dict | None = None,
                 lockout_after: int = 20, lockout_duration: float = 3600.0,
                 session_timeout: float = 900.0,
                 forbidden_projects: Iterable[str] = (FORBIDDEN_PROJECT,),
                 token_lifetime: float = 48 * 3600.0, port: int = 0,
                 https: tuple | None = None, range_answer: str = "restlet",
                 zip_shape: str = "java", auth_providers: dict | None = None,
                 user_providers: dict | None = None, max_sessions: Optional[int] = None):
        self.spec = spec or StudySpec()
        self.study = Study(self.spec)
        users = dict(users) if users is not None else {"demo": "demo-password"}
        if not users:
            raise ValueError("at least one user is needed")
        self._state = _ServerState(self.study, users, lockout_after, session_timeout,
                                   forbidden_projects, token_lifetime,
                                   auth_providers=auth_providers, user_providers=user_providers,
                                   lockout_duration=lockout_duration, max_sessions=max_sessions)
        self._state.latency = latency
        self._state.bandwidth = bandwidth
        if range_answer not in RANGE_ANSWERS:
            raise ValueError(f"range_answer must be one of {RANGE_ANSWERS}")
        if zip_shape not in ZIP_SHAPES:
            raise ValueError(f"zip_shape must be one of {ZIP_SHAPES}")
        self._state.range_answer = range_answer
        self._state.zip_shape = zip_shape
        self._port = port
        self._https = https
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle
    def start(self) -> "Sandbox":
        if self._server is not None:
            return self
        handler = type("SandboxHandler", (XNATRequestHandler,), {"state": self._state})
        ctx = None
        if self._https:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self._https)
        self._server = _Server(("127.0.0.1", self._port), handler, ssl_context=ctx)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="xnat-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_all()
        self._server.server_close()
        self._thread.join(5)
        self._server = None
        self._thread = None

    def pause(self):
        """The server goes away: stop listening and drop every connection.

        Clients then get "connection refused". The study, server sessions,
        faults and request log stay; :meth:`resume` listens again on the
        same port, so a URL recorded in a dataset stays valid.
        """
        if self._server is None:
            return
        self._port = self.port
        self.stop()

    def resume(self) -> "Sandbox":
        return self.start()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- connection facts
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("sandbox is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self._https else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def user(self) -> str:
        return next(iter(self._state.users))

    @property
    def password(self) -> str:
        return self._state.users[self.user]

    @property
    def users(self) -> dict:
        return dict(self._state.users)

    # ---- request log
    @property
    def requests(self) -> list[RequestRecord]:
        with self._state.lock:
            return list(self._state.log)

    def clear_requests(self):
        with self._state.lock:
            self._state.log.clear()

    # ---- auth state
    def failed_logins(self, user: str) -> int:
        with self._state.lock:
            return self._state.failed.get(user, 0)

    def locked(self, user: str) -> bool:
        with self._state.lock:
            return self._state.failed.get(user, 0) >= self._state.lockout_after

    def has_user_record(self, user: str) -> bool:
        """Whether XNAT has an auth record of ``user`` (local users always;
        users of another provider after their first successful login)."""
        with self._state.lock:
            return user in self._state.user_auth

    def restart(self):
        """What a Tomcat restart forgets: the cached auth method per user
        name (XnatProviderManager's static map) and every server session."""
        with self._state.lock:
            self._state.cached_methods.clear()
            self._state.sessions.clear()

    def set_password(self, user: str, password: str):
        """Change a user's password (as on XNAT's web page); sessions stay valid."""
        with self._state.lock:
            if user not in self._state.users:
                raise KeyError(user)
            self._state.users[user] = password

    def expire_sessions(self):
        with self._state.lock:
            self._state.sessions.clear()

    def expire_tokens(self):
        """Make every issued alias token expired."""
        with self._state.lock:
            for t in self._state.tokens.values():
                t["expires"] = 0

    # ---- faults
    def add_fault(self, fault: Fault) -> Fault:
        with self._state.lock:
            self._state.faults.append(fault)
        return fault

    def clear_faults(self):
        with self._state.lock:
            for fault in self._state.faults:
                fault.release()  # no request stays waiting for a fault gone
            self._state.faults.clear()

    # ---- cost
    @property
    def latency(self) -> float:
        return self._state.latency

    @latency.setter
    def latency(self, value: float):
        self._state.latency = float(value or 0.0)

    @property
    def bandwidth(self) -> Optional[float]:
        return self._state.bandwidth

    @bandwidth.setter
    def bandwidth(self, value: Optional[float]):
        self._state.bandwidth = float(value) if value else None
