"""Run the sandbox XNAT server from the command line.

    python -m datalad_fmrif.sandbox serve [--port N] [--seed S] [--subjects N] ...

``python -m datalad_fmrif.sandbox serve --help`` explains every option.
"""

from __future__ import annotations

import argparse
import sys
import threading

from .server import Sandbox
from .study import StudySpec

#: the sandbox's one account (Sandbox() without ``users``)
USER, PASSWORD = "demo", "demo-password"

SERVE_EPILOG = f"""\
Log in as user {USER!r} with password {PASSWORD!r} (synthetic data only; the
server listens on 127.0.0.1 and nowhere else). To point datalad-fmrif at it:

  git config --global datalad.fmrif.server http://127.0.0.1:PORT
  datalad fmrif-login           # user {USER}, password {PASSWORD}

The data are the same for the same --seed and sizes. Projects: 17-M-0181
(the main one, --subjects subjects), 20-M-0042 (small) and 01-M-0192 (this
account may not read it: a 403, as XNAT answers).
"""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datalad_fmrif.sandbox",
        description="A local XNAT 1.8 stand-in with synthetic MRI data, for "
                    "trying datalad-fmrif, its tests and benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve on 127.0.0.1 until Ctrl-C",
        description="Serve a synthetic XNAT study on 127.0.0.1 until Ctrl-C.",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--port", type=int, metavar="N", default=0,
                       help="TCP port to listen on (default: a free one, printed "
                            "at start)")
    serve.add_argument("--seed", type=int, metavar="N", default=0,
                       help="seed of the synthetic study: the same seed gives the "
                            "same subjects, sessions and files (default: 0)")
    serve.add_argument("--subjects", type=int, metavar="N", default=3,
                       help="subjects in the main project 17-M-0181 (default: 3)")
    serve.add_argument("--scans-per-session", type=int, metavar="N", default=6,
                       help="scans of each session in 17-M-0181, one of them a "
                            "one-file series with burned-in text (REQUISITION, "
                            "SCREEN-SAVE or SAVE) (default: 6)")
    serve.add_argument("--files-per-scan", type=int, metavar="N", default=4,
                       help="DICOM files of each scan (default: 4)")
    serve.add_argument("--file-size", type=int, metavar="BYTES", default=8192,
                       help="bytes per DICOM file, at least 4096 (default: 8192)")
    serve.add_argument("--latency", type=float, metavar="SECONDS", default=0.0,
                       help="seconds added to every request, as a distant server "
                            "would (default: 0)")
    serve.add_argument("--bandwidth", type=float, metavar="BYTES_PER_S", default=None,
                       help="cap on the bytes per second of each response body "
                            "(default: none)")
    serve.add_argument("--session-timeout", type=float, metavar="SECONDS", default=900.0,
                       help="seconds after which an idle login session expires, "
                            "as XNAT's 15 minutes (default: 900)")
    serve.add_argument("--ldap-user", metavar="NAME:PASSWORD", action="append", default=[],
                       help="a user of the authentication provider 'nihldap' (auth "
                            "method ldap), as NIH accounts are; the login page then "
                            "lists two providers (may be given more than once)")
    return parser


def main(argv=None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    users = {USER: PASSWORD}
    for entry in args.ldap_user:
        name, sep, password = entry.partition(":")
        if not (name and sep and password):
            cli.error(f"--ldap-user {entry!r}: expected NAME:PASSWORD")
        users[name] = password
    ldap = {name: "nihldap" for name in users if name != USER}
    spec = StudySpec(seed=args.seed, subjects=args.subjects,
                     scans_per_session=args.scans_per_session,
                     files_per_scan=args.files_per_scan, file_size=args.file_size)
    sandbox = Sandbox(spec, latency=args.latency, bandwidth=args.bandwidth,
                      port=args.port, session_timeout=args.session_timeout,
                      users=users, auth_providers={"nihldap": "ldap"} if ldap else None,
                      user_providers=ldap)
    with sandbox:
        print(f"XNAT sandbox serving synthetic data at {sandbox.url}\n"
              f"  user:     {USER}\n"
              f"  password: {PASSWORD}\n"
              + "".join(f"  LDAP user (provider nihldap): {name}\n" for name in ldap)
              + f"  projects: {', '.join(sandbox.study.projects)}\n"
              f"Use it with:  git config --global datalad.fmrif.server {sandbox.url}\n"
              "Press Ctrl-C to stop.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
