"""``python -m datalad_fmrif.sandbox serve``: what a person starting it by hand
reads. (The command line of the stand-in, not a behaviour of XNAT: no XNAT
source to follow here.)"""

from __future__ import annotations

import signal
import subprocess
import sys

import requests
from helpers import default_sigint

from datalad_fmrif.sandbox.__main__ import PASSWORD, USER, parser


def test_serve_help_explains_every_option_and_how_to_log_in():
    serve = parser()._subparsers._group_actions[0].choices["serve"]
    text = serve.format_help()
    assert f"user {USER!r} with password {PASSWORD!r}" in text
    options = [a for a in serve._actions if a.option_strings != ["-h", "--help"]]
    assert options and all(a.help for a in options)


def test_serve_prints_a_login_that_works_before_it_waits():
    proc = subprocess.Popen(
        [sys.executable, "-m", "datalad_fmrif.sandbox", "serve", "--subjects", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint)  # Ctrl-C stops it, also in a background job
    try:
        lines = []
        while not lines or not lines[-1].startswith("Press Ctrl-C"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line.rstrip("\n"))
        url = lines[0].rsplit(" ", 1)[-1]
        assert f"  user:     {USER}" in lines and f"  password: {PASSWORD}" in lines
        answer = requests.put(f"{url}/data/services/auth",
                              data={"username": USER, "password": PASSWORD})
        assert answer.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
