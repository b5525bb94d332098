"""The login dialogue of ``datalad fmrif-login``: ask, check once, store.

NIH accounts lock after a few failed logins, so every path through the
dialogue sends at most ONE login request, and only a credential that XNAT
accepted is stored. The secret goes to the OS keyring as a DataLad credential
(``datalad credentials`` lists and removes it); it never appears in an
outcome, a message, a log line, a file we write, or a URL.

Each action returns an :class:`Outcome` (a DataLad status word, a message,
the fields of the result record, the exception that caused it); the command
turns it into a result record and nothing else.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..xnat.errors import XnatError
from ..xnat.loginpage import login_providers
from ..xnat.session import XnatSession
from .credential import Credential, CredentialError, NoKeyring, Refused
from .lockout import Rejections
from .naming import env_names, resolve_auth_provider, resolve_verify
from .store import CredentialStore
from .xnatfile import MAX_INPUT, read_credentials_file

lgr = logging.getLogger("datalad.fmrif.login")

LOGIN_TIMEOUT = 30.0


@dataclass
class Outcome:
    """What one action of the dialogue came to."""

    status: str  # DataLad's words: ok, notneeded, impossible, error
    message: str  # never holds the secret
    fields: dict = field(default_factory=dict)  # for the result record
    #: the exception that caused it; None when none did or when its text
    #: holds the secret
    exception: BaseException | None = None


class LoginDialogue:
    """The actions of ``datalad fmrif-login``, each returning one :class:`Outcome`."""

    def __init__(self, cfg, server: str, name: str, auth_provider: str | None):
        self.cfg = cfg
        self.server = server
        self.name = name
        self.store = CredentialStore(cfg)
        #: --auth-provider, else the configuration, else the provider stored
        #: with this credential before (a new password keeps it); else a
        #: new login discovers it
        self.auth_provider = auth_provider or resolve_auth_provider(
            cfg, cfg.get(f"datalad.credential.{name}.auth-provider"))

    def outcome(self, status: str, message: str, *, user: str | None = None,
                secret: str | None = None, exception: BaseException | None = None,
                **extra) -> Outcome:
        """An outcome naming this credential and server (``credential=``
        in *extra* names another one, e.g. the token's)."""
        if secret:
            # belt and braces: no message may ever carry the secret; only
            # where it stands alone, so that a short password does not
            # mangle the words around it ('x' in 'xnat-...')
            message = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])",
                             "***", message)
            if exception is not None and secret in str(exception):
                exception = None  # its text would be shown unredacted
        fields = dict(credential=extra.pop("credential", self.name),
                      server=self.server, user=user, **extra)
        return Outcome(status, message, fields, exception)

    # -- new credentials ----------------------------------------------------------

    def prompt(self, user: str | None) -> Outcome:
        """Ask for user and password, check them, store them."""
        try:
            self.store.ensure_writable(self.name)
        except CredentialError as e:
            return self.outcome("error", str(e), user=user, exception=e)
        try:
            user = _ask_user(user)
            password = _ask_password(user, self.server)
        except Refused as e:
            return self.outcome("impossible", str(e), user=user, exception=e)
        source = "standard input" if _stdin_is_pipe() else "prompt"
        return self._check_and_store(user, password, source=source)

    def import_file(self, path: Path, *, remove: bool) -> Outcome:
        """Take user and password from the tutorial's YAML file."""
        try:
            self.store.ensure_writable(self.name)
        except CredentialError as e:
            return self.outcome("error", str(e), path=str(path), exception=e)
        try:
            user, password, exposed = read_credentials_file(path)
        except Refused as e:
            return self.outcome("error", str(e), path=str(path), exception=e)
        res = self._check_and_store(user, password, source="import file",
                                    path=str(path))
        if res.status != "ok":
            if exposed:
                res.message += (f"; note that {path} is readable by other "
                                f"users (mode {exposed}): chmod 600 it")
            return res
        if remove:
            try:
                path.unlink()
            except OSError as e:
                res.status = "error"
                res.message = (f"{res.message}; but could not remove {path}: "
                               f"{e.strerror}. Please delete it yourself")
                res.exception = e
                return res
            res.message += f"; removed {path}"
        elif exposed:
            res.message += (
                f"; {path} is readable by other users (mode {exposed}) and "
                "still holds the password: delete it (or use --remove-imported)")
        else:
            res.message += (f"; {path} still holds the password: delete "
                            "it once you no longer need it")
        return res

    def _check_and_store(self, user: str, password: str, *, source: str,
                         **extra) -> Outcome:
        try:
            _check_single_line(user, "user name")
            _check_single_line(password, "password")
        except Refused as e:
            return self.outcome("impossible", str(e), user=user, exception=e,
                                **extra)
        # a password rejected before is refused before anything is sent,
        # even the request for the login page
        cred = Credential(self.name, user, password, source,
                          auth_provider=self.auth_provider)
        when = Rejections().rejected_at(cred)
        provider = self.auth_provider
        if not when:
            try:
                provider = self._choose_provider(user)
            except Refused as e:
                return self.outcome("impossible", str(e), user=user, exception=e,
                                **extra)
            cred = dataclasses.replace(cred, auth_provider=provider)
            when = Rejections().rejected_at(cred)
        if when:
            via = f" through provider {provider!r}" if provider else ""
            return self.outcome(
                "error",
                f"XNAT at {self.server} rejected this password of {user}{via} "
                f"earlier ({when}); it is not sent again, to keep the account "
                "from being locked. Run 'datalad fmrif-login' again with the "
                "right password"
                + ("" if provider else
                   " or name the provider that checks it (--auth-provider ID)"),
                user=user, secret=password, rejected=when, **extra)
        failure = self._log_in(cred)
        if failure:
            return self.outcome("error", str(failure), user=user, secret=password,
                                exception=failure, **extra)
        try:
            self.store.set(self.name, user, password, realm=self.server,
                           auth_provider=provider)
        except CredentialError as e:
            return self.outcome("error", str(e), user=user, secret=password,
                                exception=e, **extra)
        except Exception as e:  # noqa: BLE001 - keyring backends raise anything
            return self.outcome(
                "error",
                f"XNAT accepted the password, but storing it failed: "
                f"{type(e).__name__}: {e}", user=user, secret=password,
                exception=e, **extra)
        via = f" through provider {provider!r}" if provider else ""
        return self.outcome(
            "ok",
            f"logged in to {self.server} as {user}{via} and stored the "
            f"credential {self.name!r} (password in the OS keyring)",
            user=user, auth_provider=provider, **extra)

    def _choose_provider(self, user: str) -> str | None:
        """The provider ID for a new login: given or configured, else the
        one the login page offers, else asked for when it offers several."""
        if self.auth_provider:
            return self.auth_provider
        try:
            offered = login_providers(self.server, verify=resolve_verify(self.cfg),
                                      timeout=LOGIN_TIMEOUT)
        except XnatError as e:
            # the login request will say the same; nothing was sent yet
            lgr.debug("reading the login page of %s failed: %s", self.server, e)
            return None
        if len(offered) <= 1:
            only = offered[0][0] if offered else None
            # one provider that is not the local database: name it
            return only if only and only.lower() != "localdb" else None
        listing = ", ".join(f"{pid} ({label})" if label and label != pid else pid
                            for pid, label in offered)
        if _stdin_is_pipe() or sys.stdin is None:
            raise Refused(
                f"XNAT at {self.server} offers several ways to log in: "
                f"{listing}. Choose the one your account uses with "
                "--auth-provider ID (NIH accounts: not 'localdb'), or set "
                "git config datalad.fmrif.auth-provider ID; the password was "
                "not sent")
        from datalad.ui import ui

        ids = [pid for pid, _ in offered]
        default = next((p for p in ids if p.lower() != "localdb"), ids[0])
        try:
            chosen = ui.question(
                f"XNAT at {self.server} offers: {listing}. Which one checks "
                f"the password of {user}?", choices=ids, default=default)
        except RuntimeError:
            raise Refused(f"no terminal to ask which provider to use "
                           f"({listing}); give --auth-provider ID") from None
        return chosen

    # -- alias tokens ---------------------------------------------------------------

    def issue_token(self) -> Outcome:
        """An alias token from XNAT, stored as ``<name>-token``."""
        token_name = f"{self.name}-token"
        cred, failure = self._stored()
        if failure:
            return failure
        if cred.is_token:
            return self.outcome(
                "impossible",
                f"credential {self.name!r} is an alias token itself; issue "
                "tokens with the password credential (--credential NAME)",
                user=cred.user)
        try:
            self.store.ensure_writable(token_name)
        except CredentialError as e:
            return self.outcome("error", str(e), user=cred.user, credential=token_name,
                                exception=e)
        session = XnatSession(self.server, cred, verify=resolve_verify(self.cfg),
                              retries=1, timeout=LOGIN_TIMEOUT)
        try:
            with session:
                doc = session.get_json("/data/services/tokens/issue")
        except XnatError as e:
            return self.outcome("error", str(e), user=cred.user,
                                secret=cred.secret, exception=e)
        try:
            alias, secret, expires = _parse_token(doc)
        except Refused as e:
            return self.outcome("error", f"{self.server}: {e}", user=cred.user,
                                exception=e)
        token = Credential(token_name, alias, secret, "XNAT", expires)
        if not token.is_token:
            return self.outcome(
                "error", f"{self.server} issued a token whose alias is not a "
                "UUID; XNAT would not accept it as an alias token",
                user=cred.user)
        try:
            self.store.set(token_name, alias, secret, realm=self.server,
                           expires=expires)
        except Exception as e:  # noqa: BLE001 - keyring backends raise anything
            return self.outcome(
                "error", f"storing the alias token failed: {type(e).__name__}: "
                f"{e}", user=cred.user, secret=secret, credential=token_name,
                exception=e)
        # the token goes into the variables of the credential the datasets
        # already use, so that no dataset records the token's name (which
        # 'datalad fmrif-login' could not store again once it expired)
        user_var, secret_var = env_names(self.name)
        return self.outcome(
            "ok",
            f"issued an XNAT alias token for {cred.user}, stored as credential "
            f"{token_name!r}; it expires {_local_time(expires)}. On a compute "
            f"node or in a batch job, export {user_var} and {secret_var} with "
            f"the values of cred_user and cred_secret from "
            f"'datalad -f json credentials get {token_name}' (run that on a "
            f"trusted machine): every command and 'datalad get' then use the "
            f"token in place of the password, with no other change",
            user=alias, credential=token_name, expires=expires,
            env=[user_var, secret_var], secret=secret)

    # -- stored credentials ---------------------------------------------------------

    def check(self) -> Outcome:
        """One login with the stored credential: valid, rejected or expired."""
        cred, failure = self._stored()
        if failure:
            return failure
        if self.auth_provider and not cred.is_token:
            cred = dataclasses.replace(cred, auth_provider=self.auth_provider)
        when = Rejections().rejected_at(cred)
        if when:
            return self.outcome(
                "error",
                f"credential {self.name!r} (from the {cred.source}) was "
                f"rejected earlier by XNAT ({when}) and is not tried again, "
                "to keep the account from being locked. Run 'datalad "
                "fmrif-login' to store the right password"
                + (" or 'datalad fmrif-login --token' for a new token"
                   if cred.is_token else ""),
                user=cred.user, rejected=when)
        if cred.is_token and cred.expired():
            return self.outcome(
                "error",
                f"the alias token {self.name!r} expired "
                f"{_local_time(cred.expires)}; issue a new one with 'datalad "
                "fmrif-login --token'",
                user=cred.user, expires=cred.expires)
        failure = self._log_in(cred)
        if failure:
            return self.outcome("error", str(failure), user=cred.user,
                                secret=cred.secret, exception=failure)
        what = "alias token" if cred.is_token else "credential"
        valid = f"; it expires {_local_time(cred.expires)}" if cred.expires else ""
        return self.outcome(
            "ok",
            f"{what} {self.name!r} (from the {cred.source}) is valid at "
            f"{self.server}{valid}", user=cred.user,
            **({"expires": cred.expires} if cred.expires else {}))

    def forget(self) -> Outcome:
        try:
            removed = self.store.remove(self.name)
        except Exception as e:  # noqa: BLE001 - keyring backends raise anything
            return self.outcome("error", f"could not remove credential "
                                         f"{self.name!r}: {type(e).__name__}: {e}",
                                exception=e)
        still = [v for v in env_names(self.name) if os.environ.get(v)]
        note = (f"; note that {' and '.join(still)} are still set in the "
                "environment" if still else "")
        if removed:
            return self.outcome("ok", f"removed credential {self.name!r} from "
                                      f"the keyring and the configuration{note}")
        return self.outcome("notneeded",
                            f"no credential {self.name!r} was stored{note}")

    def _stored(self) -> tuple[Credential | None, Outcome | None]:
        """The stored (or environment) credential, or a result saying why not."""
        try:
            cred = self.store.get(self.name)
        except NoKeyring as e:
            return None, self.outcome("error", str(e), exception=e)
        except CredentialError as e:
            return None, self.outcome("impossible", str(e), exception=e)
        if cred is None:
            user_var, secret_var = env_names(self.name)
            return None, self.outcome(
                "impossible",
                f"no credential {self.name!r} for {self.server} is stored "
                f"(nor given by {user_var}/{secret_var}); run 'datalad "
                "fmrif-login' first")
        return cred, None

    def _log_in(self, cred: Credential) -> XnatError | None:
        """Exactly one login request (then log out); None or why it failed."""
        lgr.debug("checking credential %r (from the %s) at %s", cred.name,
                  cred.source, self.server)
        session = XnatSession(self.server, cred, verify=resolve_verify(self.cfg),
                              retries=0, timeout=LOGIN_TIMEOUT)
        try:
            session.connect()
        except XnatError as e:  # CredentialRejected among them
            return e
        finally:
            session.close()
        return None


# -- input ----------------------------------------------------------------------


def _stdin_is_pipe() -> bool:
    try:
        return sys.stdin is not None and not sys.stdin.isatty()
    except (ValueError, AttributeError):  # closed or odd stream
        return False


def _ask_user(user: str | None) -> str:
    if user is not None:
        return user
    try:
        default = getpass.getuser()
    except (OSError, KeyError):
        default = None
    if _stdin_is_pipe():
        if not default:
            raise Refused("cannot tell the local user name; give --user NAME")
        return default
    from datalad.ui import ui

    try:
        return ui.question("XNAT user name", default=default)
    except RuntimeError:
        raise Refused("no terminal to ask for the user name; give --user "
                       "NAME, or use --import FILE") from None


def _ask_password(user: str, server: str) -> str:
    """Without echo from the terminal, or one line from piped standard input."""
    if sys.stdin is None:
        raise Refused("no standard input to read the password from; use "
                       "--import FILE")
    if _stdin_is_pipe():
        text = sys.stdin.read(MAX_INPUT + 1)
        if len(text) > MAX_INPUT:
            raise Refused("standard input is too long to be a password")
        if text.endswith("\n"):
            text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            raise Refused("no password on standard input (it is not a "
                           "terminal, so the password is read from it)")
        return text
    from datalad.ui import ui

    try:
        # no repeat: XNAT itself checks the password before it is stored
        return ui.question(f"XNAT password of {user} at {server}", hidden=True,
                           repeat=False)
    except RuntimeError:
        raise Refused("no terminal to ask for the password; use --import "
                       "FILE") from None


def _check_single_line(value: str, what: str) -> None:
    if not value:
        raise Refused(f"the {what} is empty")
    if any(c in value for c in "\n\r\0"):
        raise Refused(f"the {what} contains a line break or NUL character; "
                       "XNAT credentials are a single line")


def _parse_token(doc) -> tuple[str, str, str]:
    """alias, secret, ISO expiry time from XNAT's token document."""
    try:
        alias = doc["alias"]
        secret = doc["secret"]
        millis = float(doc["estimatedExpirationTime"])
    except (KeyError, TypeError, ValueError):
        raise Refused("the token answer lacks alias, secret or "
                       "estimatedExpirationTime") from None
    if not (isinstance(alias, str) and alias and isinstance(secret, str) and secret):
        raise Refused("the token answer has an empty alias or secret")
    expires = datetime.fromtimestamp(millis / 1000, tz=timezone.utc)
    return alias, secret, expires.astimezone().isoformat(timespec="seconds")


def _local_time(iso: str | None) -> str:
    if not iso:
        return "never"
    try:
        when = datetime.fromisoformat(iso).astimezone()
    except ValueError:
        return iso
    hours = (when.timestamp() - time.time()) / 3600
    relative = f" (in {hours:.0f} h)" if hours >= 1 else ""
    return f"at {when:%Y-%m-%d %H:%M %Z}{relative}"
