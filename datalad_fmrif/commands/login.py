"""``datalad fmrif-login``: check an XNAT password once, then keep it in the keyring.

NIH accounts lock after a few failed logins, so every path through this
command sends at most ONE login request, and only a credential that XNAT
accepted is stored. The secret goes to the OS keyring as a DataLad credential
(``datalad credentials`` lists and removes it); it never appears in a result,
a message, a log line, a file we write, or a URL.
"""

from __future__ import annotations

__docformat__ = "restructuredtext"

import dataclasses
import getpass
import logging
import os
import re
import stat
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from datalad_next.commands import (
    EnsureCommandParameterization,
    Parameter,
    ParameterConstraintContext,
    ValidatedInterface,
    build_doc,
    datasetmethod,
    eval_results,
    get_status_dict,
)
from datalad_next.constraints import (
    EnsureBool,
    EnsureDataset,
    EnsurePath,
    EnsureStr,
    WithDescription,
)

from ..credentials import (
    Credential,
    CredentialError,
    CredentialStore,
    NoKeyring,
    Rejections,
    env_names,
    resolve_auth_provider,
    resolve_credential_name,
    resolve_server,
    resolve_verify,
)
from ..xnat.errors import CredentialRejected, XnatError
from ..xnat.session import XnatSession, login_providers
from ._common import command_config

lgr = logging.getLogger("datalad.fmrif.login")

ACTION = "fmrif-login"
#: lower-case, digits and "-": DataLad maps ``-`` to ``__`` in environment
#: variable names and lower-cases them back, so only these names round-trip.
CREDENTIAL_NAME = r"[a-z0-9][a-z0-9-]*"
#: an import file or a password on stdin larger than this is not a credential
MAX_INPUT = 64 * 1024
#: XNAT provider IDs are configuration keys: no spaces, no '/' (which basic
#: auth uses to separate provider and user)
AUTH_PROVIDER = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
LOGIN_TIMEOUT = 30.0


class LoginParamValidator(EnsureCommandParameterization):
    def __init__(self):
        super().__init__(
            param_constraints=dict(
                dataset=EnsureDataset(installed=True,
                                      purpose="read its XNAT configuration"),
                server=EnsureStr(min_len=1),
                user=EnsureStr(),
                credential=WithDescription(
                    EnsureStr(min_len=1, match=CREDENTIAL_NAME),
                    error_message="a credential name has only lower-case "
                    "letters, digits and '-' (so that its environment "
                    "variables map back to it)"),
                import_file=EnsurePath(),
                remove_imported=EnsureBool(),
                token=EnsureBool(),
                check=EnsureBool(),
                forget=EnsureBool(),
                auth_provider=WithDescription(
                    EnsureStr(min_len=1, match=AUTH_PROVIDER),
                    error_message="an authentication provider ID is a "
                    "single word such as 'localdb' or 'ldap1'; the login "
                    "page of XNAT lists them"),
            ),
            joint_constraints={
                ParameterConstraintContext(
                    ("import_file", "token", "check", "forget"),
                    "one action at a time"): self._one_action,
                ParameterConstraintContext(
                    ("import_file", "remove_imported"),
                    "--remove-imported needs --import"): self._remove_needs_import,
                ParameterConstraintContext(
                    ("user", "import_file", "token", "check", "forget"),
                    "--user only for a new login"): self._user_for_login_only,
                ParameterConstraintContext(
                    ("auth_provider", "token", "forget"),
                    "--auth-provider only for a login"): self._provider_for_login,
            },
        )

    def _one_action(self, import_file, token, check, forget):
        given = dict(import_file=import_file, token=token, check=check,
                     forget=forget)
        if sum(bool(v) for v in given.values()) > 1:
            self.raise_for(given, "give only one of --import, --token, "
                                  "--check and --forget")

    def _remove_needs_import(self, import_file, remove_imported):
        if remove_imported and not import_file:
            self.raise_for(dict(import_file=import_file,
                                remove_imported=remove_imported),
                           "--remove-imported only applies to --import FILE")

    def _provider_for_login(self, auth_provider, token, forget):
        if auth_provider is not None and (token or forget):
            self.raise_for(
                dict(auth_provider=auth_provider, token=token, forget=forget),
                "--auth-provider applies to a login or --check (alias "
                "tokens are always checked by XNAT's token method)")

    def _user_for_login_only(self, user, import_file, token, check, forget):
        if user is not None and (import_file or token or check or forget):
            self.raise_for(
                dict(user=user, import_file=import_file, token=token,
                     check=check, forget=forget),
                "--user applies to a new login only (with --import the user "
                "comes from the file; otherwise from the stored credential)")


@build_doc
class FmrifLogin(ValidatedInterface):
    """Store the credential for the FMRIF XNAT server in the OS keyring

    Without options, asks for the XNAT user name (default: the local login
    name) and the password (without echo), checks them with exactly one login
    request, and only then stores them as a DataLad credential: the password
    in the OS keyring (Secret Service, macOS Keychain, Windows Credential
    Locker), the user name and server in the user's git configuration
    (`datalad.credential.<name>.*`). `datalad credentials` lists and
    removes it like any other DataLad credential.

    When standard input is not a terminal, the password is read from it (a
    single line): `echo "$PW" | datalad fmrif-login --user NAME` works for
    automation, but puts the password through the shell; prefer
    `--import FILE`.

    The server is https://fmrif-xnat.nimh.nih.gov unless `--server` or the
    configuration `datalad.fmrif.server` (of the dataset, else the user's)
    say otherwise. The credential is named after the server (`fmrif-xnat`)
    unless `--credential` or `datalad.fmrif.credential` name it.

    NIH accounts are checked by an authentication provider of XNAT other
    than its local database (LDAP). `--auth-provider ID` names it and is
    stored with the credential, so that every later login (downloads,
    listings, `datalad get`) names it too; the configuration
    `datalad.fmrif.auth-provider` (dataset or user, or the environment
    variable `DATALAD_FMRIF_AUTH__PROVIDER`) does the same for any
    credential, e.g. one from the environment in a batch job. Without either,
    the command reads the providers from XNAT's login page: when it offers
    more than its local database, it asks which one (or, without a terminal,
    says how to choose) before the password is sent.

    NIH accounts lock after a few failed logins: a password that XNAT rejected
    is remembered (as a salted one-way fingerprint of user, password and
    provider) and never sent again with the same provider, by any process,
    until a new credential is stored with this command. Naming another
    provider allows one new attempt with the same password.

    Batch jobs and compute nodes without a keyring can use DataLad's
    environment variables `DATALAD_CREDENTIAL_<NAME>_USER` and
    `DATALAD_CREDENTIAL_<NAME>_SECRET` (`-` in the name becomes `__`),
    best with an alias token from `--token`, which expires, rather than the
    password. TLS certificates are always verified; a site CA bundle can be
    set with `datalad.fmrif.ca-bundle` or `REQUESTS_CA_BUNDLE`.
    """

    _params_ = dict(
        dataset=Parameter(
            args=("-d", "--dataset"),
            doc="""dataset whose configuration (`datalad.fmrif.server`,
            `datalad.fmrif.credential`, `datalad.fmrif.ca-bundle`) to
            use. Default: the dataset at the current directory, if any, else
            the user's configuration."""),
        server=Parameter(
            args=("--server",),
            metavar="URL",
            doc="""XNAT server URL. Default: configuration
            `datalad.fmrif.server`, else https://fmrif-xnat.nimh.nih.gov"""),
        user=Parameter(
            args=("--user",),
            metavar="NAME",
            doc="""XNAT user name for a new login. Default: asked for, with
            the local login name as suggestion"""),
        credential=Parameter(
            args=("--credential",),
            metavar="NAME",
            doc="""name of the DataLad credential (lower-case letters, digits,
            '-'). Default: configuration `datalad.fmrif.credential`, else
            derived from the server (`fmrif-xnat`)"""),
        import_file=Parameter(
            args=("--import",),
            dest="import_file",
            metavar="FILE",
            doc="""read user name and password from the YAML file of the
            original tutorial (`username:` and `password:`, e.g.
            `~/.xnat`) instead of asking for them"""),
        remove_imported=Parameter(
            args=("--remove-imported",),
            action="store_true",
            doc="""with --import: delete the file once its credential has been
            checked and stored"""),
        token=Parameter(
            args=("--token",),
            action="store_true",
            doc="""issue an XNAT alias token with the stored credential and
            store it as the credential `<name>-token`, with its expiry
            time, for compute nodes and batch jobs: there, put its alias and
            secret into `DATALAD_CREDENTIAL_<NAME>_USER` and `_SECRET` of
            the credential `<name>` itself, so nothing else changes"""),
        check=Parameter(
            args=("--check",),
            action="store_true",
            doc="""check the stored credential (or the one from the
            environment) with one login request; a credential rejected
            earlier is not tried again"""),
        forget=Parameter(
            args=("--forget",),
            action="store_true",
            doc="""remove the credential from the keyring and the
            configuration"""),
        auth_provider=Parameter(
            args=("--auth-provider",),
            metavar="ID",
            doc="""ID of XNAT's authentication provider that checks the
            password (XNAT's `authenticatorId`; the values of the "Login"
            choice on the login page), stored with the credential. Default:
            configuration `datalad.fmrif.auth-provider`, else the one
            stored with the credential before, else asked for when the login
            page offers more than the local database"""),
    )

    _examples_ = [
        dict(text="Store the FMRIF password in the keyring (asks for it)",
             code_py="fmrif_login()",
             code_cmd="datalad fmrif-login"),
        dict(text="Move the password from the tutorial's ~/.xnat file into "
                  "the keyring and delete the file",
             code_py="fmrif_login(import_file='~/.xnat', remove_imported=True)",
             code_cmd="datalad fmrif-login --import ~/.xnat --remove-imported"),
        dict(text="Issue an alias token for batch jobs on a compute node",
             code_py="fmrif_login(token=True)",
             code_cmd="datalad fmrif-login --token"),
        dict(text="Log in with an NIH account checked by the provider 'ldap1'",
             code_py="fmrif_login(auth_provider='ldap1')",
             code_cmd="datalad fmrif-login --auth-provider ldap1"),
        dict(text="Check that the stored credential still works",
             code_py="fmrif_login(check=True)",
             code_cmd="datalad fmrif-login --check"),
    ]

    _validator_ = LoginParamValidator()

    @staticmethod
    @datasetmethod(name="fmrif_login")
    @eval_results
    def __call__(*, dataset=None, server=None, user=None, credential=None,
                 import_file=None, remove_imported=False, token=False,
                 check=False, forget=False, auth_provider=None):
        cfg = command_config(dataset)
        try:
            server = resolve_server(server, cfg)
            name = resolve_credential_name(credential, server, cfg)
        except CredentialError as e:
            # not the server as given: it may carry a password
            yield get_status_dict(action=ACTION, status="impossible",
                                  message=str(e), credential=credential)
            return
        login = _Login(cfg, server, name, auth_provider)
        if not re.fullmatch(CREDENTIAL_NAME, name):
            # --credential is validated as a parameter; this came from config
            yield login.result(
                "impossible",
                f"credential name {name!r} (from datalad.fmrif.credential) "
                "may only have lower-case letters, digits and '-', so that "
                "its environment variables map back to it")
            return
        if forget:
            yield login.forget()
        elif check:
            yield login.check()
        elif token:
            yield login.issue_token()
        elif import_file:
            yield login.import_file(Path(import_file).expanduser(),
                                    remove=remove_imported)
        else:
            yield login.prompt(user)


class _Refused(Exception):
    """Input we cannot use; the message says why (it never holds a secret)."""


class _Login:
    """The actions of the command, each returning one result record."""

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

    def result(self, status: str, message: str, *, user: str | None = None,
               secret: str | None = None, **extra) -> dict:
        if secret:
            # belt and braces: no message may ever carry the secret; only
            # where it stands alone, so that a short password does not
            # mangle the words around it ('x' in 'xnat-...')
            message = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])",
                             "***", message)
        return get_status_dict(action=ACTION, status=status, message=message,
                               credential=extra.pop("credential", self.name),
                               server=self.server, user=user, **extra)

    # -- new credentials ----------------------------------------------------------

    def prompt(self, user: str | None) -> dict:
        """Ask for user and password, check them, store them."""
        try:
            self.store.ensure_writable(self.name)
        except CredentialError as e:
            return self.result("error", str(e), user=user)
        try:
            user = _ask_user(user)
            password = _ask_password(user, self.server)
        except _Refused as e:
            return self.result("impossible", str(e), user=user)
        source = "standard input" if _stdin_is_pipe() else "prompt"
        return self._check_and_store(user, password, source=source)

    def import_file(self, path: Path, *, remove: bool) -> dict:
        """Take user and password from the tutorial's YAML file."""
        try:
            self.store.ensure_writable(self.name)
        except CredentialError as e:
            return self.result("error", str(e), path=str(path))
        try:
            user, password, exposed = _read_credentials_file(path)
        except _Refused as e:
            return self.result("error", str(e), path=str(path))
        res = self._check_and_store(user, password, source="import file",
                                    path=str(path))
        if res["status"] != "ok":
            if exposed:
                res["message"] += (f"; note that {path} is readable by other "
                                   f"users (mode {exposed}): chmod 600 it")
            return res
        if remove:
            try:
                path.unlink()
            except OSError as e:
                res.update(status="error", message=(
                    f"{res['message']}; but could not remove {path}: "
                    f"{e.strerror}. Please delete it yourself"))
                return res
            res["message"] += f"; removed {path}"
        elif exposed:
            res["message"] += (
                f"; {path} is readable by other users (mode {exposed}) and "
                "still holds the password: delete it (or use --remove-imported)")
        else:
            res["message"] += (f"; {path} still holds the password: delete "
                               "it once you no longer need it")
        return res

    def _check_and_store(self, user: str, password: str, *, source: str,
                         **extra) -> dict:
        try:
            _check_single_line(user, "user name")
            _check_single_line(password, "password")
        except _Refused as e:
            return self.result("impossible", str(e), user=user, **extra)
        # a password rejected before is refused before anything is sent,
        # even the request for the login page
        cred = Credential(self.name, user, password, source,
                          auth_provider=self.auth_provider)
        when = Rejections().rejected_at(cred)
        provider = self.auth_provider
        if not when:
            try:
                provider = self._choose_provider(user)
            except _Refused as e:
                return self.result("impossible", str(e), user=user, **extra)
            cred = dataclasses.replace(cred, auth_provider=provider)
            when = Rejections().rejected_at(cred)
        if when:
            via = f" through provider {provider!r}" if provider else ""
            return self.result(
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
            return self.result("error", failure, user=user, secret=password,
                               **extra)
        try:
            self.store.set(self.name, user, password, realm=self.server,
                           auth_provider=provider)
        except CredentialError as e:
            return self.result("error", str(e), user=user, secret=password,
                               **extra)
        except Exception as e:  # noqa: BLE001 - keyring backends raise anything
            return self.result(
                "error",
                f"XNAT accepted the password, but storing it failed: "
                f"{type(e).__name__}: {e}", user=user, secret=password, **extra)
        via = f" through provider {provider!r}" if provider else ""
        return self.result(
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
            raise _Refused(
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
            raise _Refused(f"no terminal to ask which provider to use "
                           f"({listing}); give --auth-provider ID") from None
        return chosen

    # -- alias tokens ---------------------------------------------------------------

    def issue_token(self) -> dict:
        """An alias token from XNAT, stored as ``<name>-token``."""
        token_name = f"{self.name}-token"
        cred, failure = self._stored()
        if failure:
            return failure
        if cred.is_token:
            return self.result(
                "impossible",
                f"credential {self.name!r} is an alias token itself; issue "
                "tokens with the password credential (--credential NAME)",
                user=cred.user)
        try:
            self.store.ensure_writable(token_name)
        except CredentialError as e:
            return self.result("error", str(e), user=cred.user, credential=token_name)
        session = XnatSession(self.server, cred, verify=resolve_verify(self.cfg),
                              retries=1, timeout=LOGIN_TIMEOUT)
        try:
            with session:
                doc = session.get_json("/data/services/tokens/issue")
        except XnatError as e:
            return self.result("error", str(e), user=cred.user,
                               secret=cred.secret)
        try:
            alias, secret, expires = _parse_token(doc)
        except _Refused as e:
            return self.result("error", f"{self.server}: {e}", user=cred.user)
        token = Credential(token_name, alias, secret, "XNAT", expires)
        if not token.is_token:
            return self.result(
                "error", f"{self.server} issued a token whose alias is not a "
                "UUID; XNAT would not accept it as an alias token",
                user=cred.user)
        try:
            self.store.set(token_name, alias, secret, realm=self.server,
                           expires=expires)
        except Exception as e:  # noqa: BLE001 - keyring backends raise anything
            return self.result(
                "error", f"storing the alias token failed: {type(e).__name__}: "
                f"{e}", user=cred.user, secret=secret, credential=token_name)
        # the token goes into the variables of the credential the datasets
        # already use, so that no dataset records the token's name (which
        # 'datalad fmrif-login' could not store again once it expired)
        user_var, secret_var = env_names(self.name)
        return self.result(
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

    def check(self) -> dict:
        """One login with the stored credential: valid, rejected or expired."""
        cred, failure = self._stored()
        if failure:
            return failure
        if self.auth_provider and not cred.is_token:
            cred = dataclasses.replace(cred, auth_provider=self.auth_provider)
        when = Rejections().rejected_at(cred)
        if when:
            return self.result(
                "error",
                f"credential {self.name!r} (from the {cred.source}) was "
                f"rejected earlier by XNAT ({when}) and is not tried again, "
                "to keep the account from being locked. Run 'datalad "
                "fmrif-login' to store the right password"
                + (" or 'datalad fmrif-login --token' for a new token"
                   if cred.is_token else ""),
                user=cred.user, rejected=when)
        if cred.is_token and cred.expired():
            return self.result(
                "error",
                f"the alias token {self.name!r} expired "
                f"{_local_time(cred.expires)}; issue a new one with 'datalad "
                "fmrif-login --token'",
                user=cred.user, expires=cred.expires)
        failure = self._log_in(cred)
        if failure:
            return self.result("error", failure, user=cred.user,
                               secret=cred.secret)
        what = "alias token" if cred.is_token else "credential"
        valid = f"; it expires {_local_time(cred.expires)}" if cred.expires else ""
        return self.result(
            "ok",
            f"{what} {self.name!r} (from the {cred.source}) is valid at "
            f"{self.server}{valid}", user=cred.user,
            **({"expires": cred.expires} if cred.expires else {}))

    def forget(self) -> dict:
        try:
            removed = self.store.remove(self.name)
        except Exception as e:  # noqa: BLE001 - keyring backends raise anything
            return self.result("error", f"could not remove credential "
                                        f"{self.name!r}: {type(e).__name__}: {e}")
        still = [v for v in env_names(self.name) if os.environ.get(v)]
        note = (f"; note that {' and '.join(still)} are still set in the "
                "environment" if still else "")
        if removed:
            return self.result("ok", f"removed credential {self.name!r} from "
                                     f"the keyring and the configuration{note}")
        return self.result("notneeded",
                           f"no credential {self.name!r} was stored{note}")

    def _stored(self) -> tuple[Credential | None, dict | None]:
        """The stored (or environment) credential, or a result saying why not."""
        try:
            cred = self.store.get(self.name)
        except NoKeyring as e:
            return None, self.result("error", str(e))
        except CredentialError as e:
            return None, self.result("impossible", str(e))
        if cred is None:
            user_var, secret_var = env_names(self.name)
            return None, self.result(
                "impossible",
                f"no credential {self.name!r} for {self.server} is stored "
                f"(nor given by {user_var}/{secret_var}); run 'datalad "
                "fmrif-login' first")
        return cred, None

    def _log_in(self, cred: Credential) -> str | None:
        """Exactly one login request (then log out); None or why it failed."""
        lgr.debug("checking credential %r (from the %s) at %s", cred.name,
                  cred.source, self.server)
        session = XnatSession(self.server, cred, verify=resolve_verify(self.cfg),
                              retries=0, timeout=LOGIN_TIMEOUT)
        try:
            session.connect()
        except CredentialRejected as e:
            return str(e)
        except XnatError as e:
            return str(e)
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
            raise _Refused("cannot tell the local user name; give --user NAME")
        return default
    from datalad.ui import ui

    try:
        return ui.question("XNAT user name", default=default)
    except RuntimeError:
        raise _Refused("no terminal to ask for the user name; give --user "
                       "NAME, or use --import FILE") from None


def _ask_password(user: str, server: str) -> str:
    """Without echo from the terminal, or one line from piped standard input."""
    if sys.stdin is None:
        raise _Refused("no standard input to read the password from; use "
                       "--import FILE")
    if _stdin_is_pipe():
        text = sys.stdin.read(MAX_INPUT + 1)
        if len(text) > MAX_INPUT:
            raise _Refused("standard input is too long to be a password")
        if text.endswith("\n"):
            text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            raise _Refused("no password on standard input (it is not a "
                           "terminal, so the password is read from it)")
        return text
    from datalad.ui import ui

    try:
        # no repeat: XNAT itself checks the password before it is stored
        return ui.question(f"XNAT password of {user} at {server}", hidden=True,
                           repeat=False)
    except RuntimeError:
        raise _Refused("no terminal to ask for the password; use --import "
                       "FILE") from None


def _check_single_line(value: str, what: str) -> None:
    if not value:
        raise _Refused(f"the {what} is empty")
    if any(c in value for c in "\n\r\0"):
        raise _Refused(f"the {what} contains a line break or NUL character; "
                       "XNAT credentials are a single line")


def _read_credentials_file(path: Path) -> tuple[str, str, str | None]:
    """User, password, and the file's mode if other users can read it.

    Messages name the file and the line, never a value from it: a YAML parser
    error would quote the offending line, which may be the password.
    """
    import yaml

    try:
        info = path.stat()
    except FileNotFoundError:
        raise _Refused(f"import file {path} does not exist") from None
    except OSError as e:
        raise _Refused(f"cannot read import file {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _Refused(f"import file {path} is not a regular file")
    if info.st_size > MAX_INPUT:
        raise _Refused(f"import file {path} is too large for a credentials file")
    # said once, in the result, and only where it still applies (not once
    # the file is removed)
    exposed = stat.filemode(info.st_mode) if info.st_mode & 0o077 else None
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise _Refused(f"cannot read import file {path}: permission denied") from None
    except UnicodeDecodeError:
        raise _Refused(f"import file {path} is not a text (UTF-8) file") from None
    except OSError as e:
        raise _Refused(f"cannot read import file {path}: {e.strerror}") from None
    expected = "expected 'username: ...' and 'password: ...'"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _Refused(f"import file {path} is not valid YAML{where}; "
                       f"{expected}") from None
    if not isinstance(doc, dict):
        raise _Refused(f"import file {path} is not a YAML mapping; {expected}")
    user = _field(doc, path, "user name", ("username", "user"))
    password = _field(doc, path, "password", ("password", "pass"))
    return user, password, exposed


def _field(doc: dict, path: Path, what: str, keys: tuple[str, ...]) -> str:
    for key in keys:
        if doc.get(key) is not None:
            value = doc[key]
            if not isinstance(value, str):
                # YAML reads 0123 as 83 and yes as True: never guess
                raise _Refused(
                    f"the {what} in {path} ('{key}:') is read by YAML as "
                    f"{type(value).__name__}, not text; put it in quotes")
            if not value:
                break
            return value
    raise _Refused(f"import file {path} is incomplete: no {what} "
                   f"('{keys[0]}:' or '{keys[1]}:')")


def _parse_token(doc) -> tuple[str, str, str]:
    """alias, secret, ISO expiry time from XNAT's token document."""
    try:
        alias = doc["alias"]
        secret = doc["secret"]
        millis = float(doc["estimatedExpirationTime"])
    except (KeyError, TypeError, ValueError):
        raise _Refused("the token answer lacks alias, secret or "
                       "estimatedExpirationTime") from None
    if not (isinstance(alias, str) and alias and isinstance(secret, str) and secret):
        raise _Refused("the token answer has an empty alias or secret")
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
