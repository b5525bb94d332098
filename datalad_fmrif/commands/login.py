"""``datalad fmrif-login``: check an XNAT password once, then keep it in the keyring.

The command translates between DataLad and the login dialogue
(:mod:`datalad_fmrif.credentials.login`, which says how a lockout is
avoided): parameters in, one result record per outcome out.
"""

from __future__ import annotations

__docformat__ = "restructuredtext"

import re
from pathlib import Path

from datalad_next.commands import (
    EnsureCommandParameterization,
    Parameter,
    ParameterConstraintContext,
    ValidatedInterface,
    build_doc,
    datasetmethod,
    eval_results,
)
from datalad_next.constraints import (
    EnsureBool,
    EnsurePath,
    EnsureStr,
    WithDescription,
)

from ..credentials import CredentialError, resolve_credential_name, resolve_server
from ..credentials.login import LoginDialogue, Outcome
from ._common import (
    SERVER,
    command_config,
    credential_param,
    dataset_constraint,
    dataset_param,
    result_record,
    server_param,
)

ACTION = "fmrif-login"
#: lower-case, digits and "-": DataLad maps ``-`` to ``__`` in environment
#: variable names and lower-cases them back, so only these names round-trip.
CREDENTIAL_NAME = r"[a-z0-9][a-z0-9-]*"
#: XNAT provider IDs are configuration keys: no spaces, no '/' (which basic
#: auth uses to separate provider and user)
AUTH_PROVIDER = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class LoginParamValidator(EnsureCommandParameterization):
    def __init__(self):
        super().__init__(
            param_constraints=dict(
                dataset=dataset_constraint("read its XNAT configuration"),
                server=SERVER,
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
        dataset=dataset_param(),
        server=server_param(
            """XNAT server URL. Default: configuration
            `datalad.fmrif.server`, else https://fmrif-xnat.nimh.nih.gov"""),
        user=Parameter(
            args=("--user",),
            metavar="NAME",
            doc="""XNAT user name for a new login. Default: asked for, with
            the local login name as suggestion"""),
        credential=credential_param(
            """name of the DataLad credential (lower-case letters, digits,
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
            yield result_record(ACTION, "impossible", str(e), exception=e,
                                credential=credential)
            return
        if not re.fullmatch(CREDENTIAL_NAME, name):
            # --credential is validated as a parameter; this came from config
            yield result_record(
                ACTION, "impossible",
                f"credential name {name!r} (from datalad.fmrif.credential) "
                "may only have lower-case letters, digits and '-', so that "
                "its environment variables map back to it",
                credential=name, server=server, user=None)
            return
        login = LoginDialogue(cfg, server, name, auth_provider)
        if forget:
            outcome = login.forget()
        elif check:
            outcome = login.check()
        elif token:
            outcome = login.issue_token()
        elif import_file:
            outcome = login.import_file(Path(import_file).expanduser(),
                                        remove=remove_imported)
        else:
            outcome = login.prompt(user)
        yield _record(outcome)


def _record(outcome: Outcome) -> dict:
    """The result record of one outcome of the dialogue."""
    return result_record(ACTION, outcome.status, outcome.message,
                         exception=outcome.exception, **outcome.fields)
