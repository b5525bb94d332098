"""Run the sandbox XNAT server from the command line.

    python -m datalad_fmrif.sandbox serve [--port N] [--seed S] [--subjects N]
        [--latency SECONDS] [--bandwidth BYTES_PER_S] [--files-per-scan N] [--file-size BYTES]
        [--ldap-user NAME:PASSWORD ...]
"""

from __future__ import annotations

import argparse
import sys
import threading

from .server import Sandbox
from .study import StudySpec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datalad_fmrif.sandbox",
                                     description="Local XNAT sandbox server with synthetic MRI data")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve on 127.0.0.1 until Ctrl-C")
    serve.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--subjects", type=int, default=3)
    serve.add_argument("--scans-per-session", type=int, default=6)
    serve.add_argument("--files-per-scan", type=int, default=4)
    serve.add_argument("--file-size", type=int, default=8192, help="bytes per DICOM file (>= 4096)")
    serve.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    serve.add_argument("--bandwidth", type=float, default=None, help="bytes/s cap on response bodies")
    serve.add_argument("--session-timeout", type=float, default=900.0)
    serve.add_argument("--ldap-user", metavar="NAME:PASSWORD", action="append", default=[],
                       help="a user of the authentication provider 'nihldap' (auth method "
                            "ldap), as NIH accounts are; the login page then lists two providers")
    args = parser.parse_args(argv)
    users = {"demo": "demo-password"}
    for entry in args.ldap_user:
        name, sep, password = entry.partition(":")
        if not (name and sep and password):
            parser.error(f"--ldap-user {entry!r}: expected NAME:PASSWORD")
        users[name] = password
    ldap = {name: "nihldap" for name in users if name != "demo"}

    spec = StudySpec(seed=args.seed, subjects=args.subjects, scans_per_session=args.scans_per_session,
                     files_per_scan=args.files_per_scan, file_size=args.file_size)
    sandbox = Sandbox(spec, latency=args.latency, bandwidth=args.bandwidth, port=args.port,
                      session_timeout=args.session_timeout, users=users,
                      auth_providers={"nihldap": "ldap"} if ldap else None, user_providers=ldap)
    with sandbox:
        print(f"XNAT sandbox serving synthetic data at {sandbox.url}")
        print(f"user: {sandbox.user}")
        print(f"password: {sandbox.password}")
        for name in ldap:
            print(f"LDAP user (provider nihldap): {name}")
        print("projects: " + ", ".join(p for p in sandbox.study.projects))
        print("Press Ctrl-C to stop.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
