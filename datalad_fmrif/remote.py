"""The ``fmrif`` git-annex special remote: get content back from XNAT.

A download registers each file with its XNAT URL (claimed by this remote) and
an ``MD5E`` key built from XNAT's size and digest. Later, here or in a clone,
``datalad get`` asks git-annex, git-annex asks this remote, and this remote
downloads the file through one logged-in XNAT session per process, verified
against the key (:mod:`datalad_fmrif.content.transfer`).

Set-up (``fmrif-download`` does this)::

    git annex initremote fmrif type=external externaltype=fmrif \\
        encryption=none autoenable=true server=https://fmrif-xnat.nimh.nih.gov

The remote configuration lives in the git-annex branch, which is published
with the dataset: it holds the server URL and, optionally, the name of the
DataLad credential, never a user name or secret. The credential comes from
the environment or the keyring of whoever runs ``datalad get``.

XNAT is the archive: the remote is read-only. ``datalad drop`` still works,
because CHECKPRESENT confirms that XNAT lists the file with the key's MD5.

There is no WHEREIS handler: ``git annex whereis`` already lists the URLs
claimed by this remote under its name (an answer would show each twice).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from annexremote import Master, RemoteError, SpecialRemote

from .annex.keys import key_facts
from .credentials import (
    CredentialError,
    CredentialStore,
    credential_names,
    env_names,
    normalize_server,
    resolve_verify,
)
from .xnat.errors import (
    AccessDenied,
    CredentialRejected,
    NotFound,
    NotXnat,
    ServerUnreachable,
    TlsError,
    TransientError,
    UnknownAuthProvider,
    XnatError,
)

if TYPE_CHECKING:
    from .xnat.session import XnatSession

lgr = logging.getLogger("datalad.fmrif.remote")

READ_ONLY = "the fmrif remote is read-only: XNAT is the archive"

# Errors that no retry in this process can fix: after the first one, every
# further request fails at once with the same message, without contacting
# XNAT or the keyring again (a rejected password must never be re-sent).
_FATAL = (CredentialRejected, CredentialError, TlsError, NotXnat, ServerUnreachable,
          UnknownAuthProvider)

GIVE_UP_AFTER = 3

# git-annex's costs (Config/Cost.hs): cheap 100 (a local clone), semi-cheap
# 110, expensive 200 (ssh clones, RIA stores, the web), very expensive 1000
XNAT_COST = 250

def one_line(message: str) -> str:
    """The special-remote protocol is line based: a message must be one line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def repeated(message: str) -> str:
    """A final failure again: what it was, without the fix said the first time.

    git-annex shows every failed key's message; the fix (often several
    lines) is given once per process, with the first key that failed.
    """
    # the first clause: up to the end of the first sentence, a ';' or the
    # ': run ...' that starts the advice
    what = re.split(r"\. |; |: run ", one_line(message), maxsplit=1)[0].rstrip(".:")
    return (f"{one_line(what)} (not tried again by this process; the first "
            "failure of this run says what to do)")


class FmrifRemote(SpecialRemote):
    """Read-only special remote for files registered by their XNAT URL."""

    def __init__(self, annex):
        super().__init__(annex)
        self.configs = {
            "server": "XNAT base URL, e.g. https://fmrif-xnat.nimh.nih.gov (required)",
            "credential": "name of the DataLad credential (default: "
                          "git config datalad.fmrif.credential, else derived from the server)",
        }
        self._server: str | None = None
        self._cfg = None
        self._session: XnatSession | None = None
        #: a final failure of this process: every later request fails at once
        self._fatal: str | None = None
        self._failures_in_a_row = 0
        self._listings: dict[str, dict[str, dict]] = {}
        self._zips = None  # ResourceZips, made on the first transfer

    # -- set-up ----------------------------------------------------------------
    #
    # git-annex starts this program for every command that might need it
    # (even `git annex info` or `registerurl`), so start-up stays cheap:
    # DataLad's configuration, the keyring and requests are loaded only when
    # the first request to XNAT is made.

    def initremote(self):
        server = self.annex.getconfig("server")
        if not server:
            raise RemoteError(
                "server=URL is required, e.g. server=https://fmrif-xnat.nimh.nih.gov")
        try:
            server = normalize_server(server)
        except CredentialError as e:
            raise RemoteError(one_line(str(e))) from None
        self.annex.setconfig("server", server)
        # also run by 'enableremote', i.e. in every clone (autoenable)
        from .remote_setup import one_attempt_per_get

        one_attempt_per_get(self._repository())

    def prepare(self):
        """Check the configuration; logging in waits for the first request."""
        self.server  # noqa: B018 - raises RemoteError when it is missing or bad

    @property
    def server(self) -> str:
        """The server from the remote's configuration (CLAIMURL may come first)."""
        if self._server is None:
            value = self.annex.getconfig("server")
            if not value:
                raise RemoteError("the fmrif remote has no server configured; "
                                  "run 'git annex enableremote NAME server=URL'")
            try:
                self._server = normalize_server(value)
            except CredentialError as e:
                raise RemoteError(one_line(str(e))) from None
        return self._server

    @property
    def info(self) -> dict:
        """Shown by ``git annex info fmrif``."""
        return {"server": self.server, "credential": " or ".join(self._credential_names())}

    @info.setter
    def info(self, value) -> None:
        pass  # SpecialRemote.__init__ assigns {}; ours is computed

    def _config(self):
        """DataLad's configuration of the repository this remote serves.

        git-annex starts the remote in the repository, so dataset-level
        ``datalad.fmrif.*`` settings (``.datalad/config``, ``.git/config``)
        count, as do the global ones and DataLad's environment overrides.
        """
        if self._cfg is None:
            from datalad.support.gitrepo import GitRepo

            self._cfg = GitRepo(self._repository()).config
        return self._cfg

    @staticmethod
    def _repository() -> str:
        """git-annex runs the remote in the repository it serves."""
        from datalad.utils import get_dataset_root

        return get_dataset_root(os.getcwd()) or os.getcwd()

    def _credential_names(self) -> list[str]:
        """``datalad.fmrif.credential`` (configuration or environment), else
        the remote's recorded ``credential``, then the name derived from the
        server: a name recorded in a dataset never overrides the user's
        choice, and never locks out a clone whose user has the default one."""
        return credential_names(None, self.server, self._config(),
                                self.annex.getconfig("credential") or None)

    def _xnat(self) -> XnatSession:
        """The process's one XNAT session, made on first use (login is lazy)."""
        if self._fatal:
            raise RemoteError(repeated(self._fatal))
        if self._session is None:
            from .xnat.session import XnatSession

            names = self._credential_names()
            credential = CredentialStore(self._config()).find(names)
            if credential is None:
                name = names[-1]  # the configured one, else the server's default
                user_var, secret_var = env_names(name)
                raise CredentialError(
                    f"no credential {name!r} for XNAT at {self.server}: run "
                    f"'datalad fmrif-login' for this server (or, for batch "
                    f"jobs, set {user_var} and {secret_var})")
            from .xnat.session import request_limits

            try:
                limits = request_limits(self._config())
            except ValueError as e:
                raise RemoteError(str(e)) from None
            self._session = XnatSession(self.server, credential,
                                        verify=resolve_verify(self._config()), **limits)
        return self._session

    @contextlib.contextmanager
    def _errors(self):
        """Errors -> RemoteError with a one-line message for git-annex.

        A credential, TLS or connection problem ends all further requests
        of this process at once (a rejected password is never re-sent), and
        so does a server that failed ``GIVE_UP_AFTER`` requests in a row even
        after their retries: every file would otherwise wait through its
        own round of backoff.
        """
        try:
            yield
        except RemoteError:
            raise
        except _FATAL as e:
            self._fatal = one_line(str(e))
            raise RemoteError(self._fatal) from None
        except TransientError as e:
            self._failures_in_a_row += 1
            message = one_line(str(e))
            if self._failures_in_a_row >= GIVE_UP_AFTER:
                self._fatal = (f"{message} (XNAT failed {self._failures_in_a_row} "
                               "requests in a row; not trying the rest now)")
            raise RemoteError(message) from None
        except (XnatError, OSError) as e:
            raise RemoteError(one_line(str(e)) or type(e).__name__) from None
        except Exception as e:  # noqa: BLE001 - a bug or an unforeseen library error:
            # one failed request, not a dead remote process
            lgr.debug("unexpected error", exc_info=True)
            raise RemoteError(f"{type(e).__name__}: {one_line(str(e))}") from None
        else:
            self._failures_in_a_row = 0

    # -- URLs --------------------------------------------------------------------

    def claimurl(self, url):
        return url.startswith(self.server + "/data/")

    def _path(self, url: str) -> str:
        return url[len(self.server):]

    def _urls(self, key: str) -> list[str]:
        """The key's URLs on this server (registered with registerurl/addurl)."""
        return [u for u in self.annex.geturls(key, self.server + "/data/") if u]

    def checkurl(self, url):
        if not self.claimurl(url):
            return False
        with self._errors():
            try:
                response = self._xnat().request("HEAD", self._path(url))
            except NotFound:
                return False
            response.close()
        length = response.headers.get("Content-Length", "")
        return [{"size": int(length)}] if length.isdigit() else True

    # -- content -----------------------------------------------------------------

    def transfer_retrieve(self, key, filename):
        from .content.transfer import fetch

        size, md5 = key_facts(key)
        if self._resource_zips().cached(key, filename):
            self.annex.progress(os.path.getsize(filename))
            return
        urls = self._urls(key)
        if not urls:
            raise RemoteError(f"no URL on {self.server} is recorded for {key}")
        if self._from_zip(key, urls, filename):
            return
        failures = []
        for url in urls:
            with self._errors():
                try:
                    fetch(self._xnat(), self._path(url), Path(filename),
                          size=size, md5=md5, progress=self.annex.progress)
                    return
                except (NotFound, AccessDenied) as e:
                    failures.append(one_line(str(e)))  # another URL may have it
        raise RemoteError("; ".join(failures))

    def _from_zip(self, key, urls, filename) -> bool:
        """Serve ``key`` from a zip of its scan resource when that pays
        (:mod:`datalad_fmrif.content.remote_zip`); False: fetch it on its own."""
        in_a_row = self._failures_in_a_row
        with self._errors():  # a rejected credential during a zip is final
            try:
                served = self._resource_zips().retrieve(
                    key, [self._path(u) for u in urls], filename, self._xnat)
            except OSError as e:  # the cache, not XNAT: the file alone will do
                lgr.debug("zip cache: %s; fetching %s on its own", e, key)
                served = False
        if not served:  # the file's own request counts, not this
            self._failures_in_a_row = in_a_row
            return False
        self.annex.progress(os.path.getsize(filename))
        return True

    def _resource_zips(self):
        """The zip cache of this ``git annex get`` (made on the first transfer)."""
        if self._zips is None:
            from .content.remote_zip import ResourceZips

            self._zips = ResourceZips(self.server, self.annex.getgitdir())
        return self._zips

    def checkpresent(self, key):
        """Whether XNAT still holds this very content.

        ``drop`` deletes the local copy on a "yes", so a file at the URL is
        not enough: the listing of its resource (one request per resource,
        kept for the life of the process) must show the key's MD5, or its
        size where XNAT has no digest. A file changed on the server is then
        "not present", and the last good copy is kept.
        """
        size, md5 = key_facts(key)
        for url in self._urls(key):
            with self._errors():
                listed = self._listed(url)
            if listed is None:
                continue
            listed_size, listed_md5 = listed
            if md5 and listed_md5:
                matches = listed_md5.lower() == md5
            else:
                matches = size is None or listed_size == size
            if not matches:
                lgr.debug("%s: XNAT lists %s bytes, MD5 %s; the key is %s",
                          url, listed_size, listed_md5 or "-", key)
                continue
            # the catalog may list a file the archive no longer holds: only
            # a file XNAT would send counts (one HEAD, no body)
            with self._errors():
                if self._deliverable(url):
                    return True
            lgr.debug("%s: listed, but XNAT does not serve it", url)
        return False

    def _deliverable(self, url: str) -> bool:
        try:
            response = self._xnat().request("HEAD", self._path(url))
        except NotFound:
            return False
        response.close()
        return True

    def _listed(self, url: str) -> tuple[int | None, str | None] | None:
        """(size, MD5) of the file at ``url`` as XNAT reports it; None if absent."""
        path = self._path(url)
        folder, sep, name = path.partition("/files/")
        if not sep or not name:
            # not a resource file: all a HEAD can tell is its length
            try:
                response = self._xnat().request("HEAD", path)
            except NotFound:
                return None
            response.close()
            length = response.headers.get("Content-Length", "")
            return (int(length) if length.isdigit() else None), None
        listing = self._listings.get(folder)
        if listing is None:
            try:
                rows = self._xnat().result_set(folder + "/files")
            except NotFound:
                rows = []
            listing = {}
            for row in rows:
                # XNAT lists the path as stored, not URL-encoded
                rel = str(row.get("URI", "")).partition("/files/")[2] or str(row.get("Name", ""))
                listing[rel] = row
            self._listings[folder] = listing
            while len(self._listings) > 16:
                self._listings.pop(next(iter(self._listings)))
        row = listing.get(unquote(name))
        if row is None:
            return None
        size = str(row.get("Size", ""))
        return (int(size) if size.isdigit() else None), (str(row.get("digest") or "") or None)

    def close(self) -> None:
        """Log out, so that XNAT does not keep the session until it times out."""
        if self._zips is not None:
            self._zips.close()
        if self._session is not None:
            self._session.close()
            self._session = None

    def getcost(self):
        """Every file comes over the network from a server that spends tens of
        milliseconds on each request: dearer than git-annex's "expensive"
        remotes (200: ssh clones, RIA stores), so that git-annex tries a
        local clone or a RIA store holding the content first."""
        return XNAT_COST

    def getavailability(self):
        return "global"

    def transfer_store(self, key, filename):
        raise RemoteError(READ_ONLY)

    def remove(self, key):
        raise RemoteError(READ_ONLY)


class _AnnexLog(logging.Handler):
    """Log records as git-annex DEBUG messages (shown with ``--debug``).

    Only from the main thread: the protocol stream is not shared with any
    thread a library may start.
    """

    def __init__(self, annex: Master):
        super().__init__(logging.DEBUG)
        self.annex = annex
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record):
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            for line in self.format(record).splitlines():
                self.annex.debug(line)
        except (OSError, ValueError):
            # git-annex has gone (a closed pipe, a closed file): at exit,
            # e.g. a failed logout's debug line, there is nobody to tell,
            # and logging's "--- Logging error ---" traceback would only
            # alarm whoever reads stderr
            pass
        except Exception:  # noqa: BLE001 - logging must never break the protocol
            self.handleError(record)


def _protocol_streams():
    """Private copies of stdin/stdout for the protocol.

    File descriptors 0 and 1 then point at /dev/null and stderr, so nothing
    else (a library's print, a child process) can write into the protocol or
    read git-annex's requests.
    """
    proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8", errors="surrogateescape")
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="surrogateescape")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return proto_in, proto_out


def main():
    """Entry point of ``git-annex-remote-fmrif``."""
    proto_in, proto_out = _protocol_streams()
    master = Master(proto_out)
    remote = FmrifRemote(master)
    master.LinkRemote(remote)

    log = logging.getLogger("datalad.fmrif")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(_AnnexLog(master))
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    log.addHandler(warnings)

    try:
        master.Listen(proto_in)
    finally:
        remote.close()


if __name__ == "__main__":
    main()
