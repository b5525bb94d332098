"""The whole FMRIF story on the sandbox XNAT: ``make demo``.

Starts the sandbox, points DataLad at it (``datalad.fmrif.server`` in the
user's git config, so every command reads exactly as it would at FMRIF), and
runs the steps a researcher takes, printing each command and its output.
(The documentation's tutorial is made the same way, by docs/transcripts.py.)

Run it in a scratch HOME (``make demo`` does): it stores a credential in the
keyring and writes the user's git config.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from .server import Sandbox
from .study import StudySpec

PROJECT = "17-M-0181"
BIDS_SESSION = "sub-P03/ses-01"  # its series have ReproIn names (anat-T1w, ...)

#: The converters of the BIDS step ask the internet for newer versions of
#: themselves (nipype and heudiconv through etelemetry, dcm2bids by a request
#: to GitHub, deno at start-up). The demo, the documentation's transcripts and
#: the tests talk to the sandbox on loopback only, so those checks are turned
#: off, and whatever still asks goes to a proxy on a closed loopback port and
#: fails at once; requests to the sandbox itself bypass the proxy.
OFFLINE = {
    "NO_ET": "1",
    "NIPYPE_NO_ET": "1",
    "DENO_NO_UPDATE_CHECK": "1",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
}


def steps() -> list[tuple[str, str, str]]:
    """(name, explanation, shell command) of each step, run in the work dir."""
    first = "sub-P01/ses-01"
    return [
        ("old-credentials",
         "The tutorial this replaces kept the NIH password in ~/.xnat (shown "
         "here with the password masked):",
         "sed 's/password: .*/password: ********/' ~/.xnat"),
        ("login",
         "Move it into the OS keyring (checked with one login request first):",
         "datalad fmrif-login --import ~/.xnat --remove-imported"),
        ("credentials", "It is a DataLad credential now; the file is gone:",
         "datalad credentials | grep -v legacy-credential; "
         "ls ~/.xnat 2>&1 || true"),
        ("list", "The subject list, as the Processing Dashboard's Download CSV "
         "gives it (or from fmrif-list):",
         f"datalad fmrif-list {PROJECT} -o processing_data.csv && "
         "cat processing_data.csv; echo"),
        ("pseudonyms", "Pseudonyms, kept outside the dataset: labels are MRNs "
         "and names.",
         "cat pseudonyms.csv"),
        ("create", "A dataset for the study:", "datalad create study"),
        ("dry-run", "What a download would take (files, bytes, the series "
         "left out), changing nothing:",
         "cd study && datalad fmrif-download --dry-run --pseudonyms "
         "../pseudonyms.csv ../processing_data.csv"),
        ("download", "Download:",
         "cd study && datalad fmrif-download --pseudonyms ../pseudonyms.csv "
         "../processing_data.csv"),
        ("tree", "What arrived (REQUISITION/SCREEN-SAVE/SAVE series are left "
         "out by default):",
         f"cd study && find {first} -maxdepth 1 | sort && "
         f"ls {first}/*T1w* | head -3"),
        ("log", "Two commits: the files, then the manifests with a run record:",
         "cd study && git log --format='%h %s' -3"),
        ("whereis", "Every file knows its XNAT URL and its metadata:",
         f"cd study && f=$(ls {first}/*T1w*/* | head -1) && "
         "git annex whereis \"$f\" && git annex metadata \"$f\""),
        ("drop-get", "Drop content and get it back through the fmrif special "
         "remote:",
         f"cd study && datalad drop {first} && datalad get {first}"),
        ("clone", "A clone fetches from XNAT with no set-up (the fmrif remote "
         "is enabled automatically):",
         f"datalad clone study clone && cd clone && "
         f"datalad get --source fmrif {first}/*T1w*"),
        ("status", "Later: is the dataset still what XNAT holds?",
         "cd study && datalad fmrif-status"),
        ("again", "A second run fetches only what is new:",
         "cd study && datalad fmrif-download --pseudonyms ../pseudonyms.csv "
         "../processing_data.csv"),
        # the hand-off to BIDS, as docs/bids.md shows and tests/test_bids.py tests
        ("bids-rawdata", "On to BIDS: a subdataset for it; heudiconv's notes "
         "(DICOM headers) stay out of git:",
         "cd study && datalad create -d . -c text2git rawdata && "
         "echo .heudiconv/ > rawdata/.gitignore && "
         "datalad save -d . -r -m 'Keep heudiconv notes out of git' rawdata"),
        ("bids", f"Convert {BIDS_SESSION} (its series have ReproIn names) with "
         "heudiconv, recorded by datalad run:",
         f"cd study && datalad get {BIDS_SESSION} && "
         f"datalad run -m 'Convert {BIDS_SESSION} to BIDS' -i {BIDS_SESSION} -o rawdata "
         "\"heudiconv -f reproin -c dcm2niix --bids --minmeta -o rawdata "
         "-d 'sub-{{subject}}/ses-{{session}}/*/*.dcm' -s P03 -ss 01\" "
         "> ../heudiconv.log 2>&1 && tail -n 1 ../heudiconv.log && "
         f"find rawdata/{BIDS_SESSION} -name '*.nii.gz' | sort"),
        ("bids-validate", "The BIDS validator finds no errors:",
         "cd study && bids-validator-deno --ignoreWarnings rawdata"),
    ]


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datalad_fmrif.sandbox.demo")
    parser.add_argument("--workdir", help="where to work; kept afterwards "
                        "(default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fmrif-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env.update(OFFLINE)

    with Sandbox(StudySpec(subjects=3, files_per_scan=4, file_size=16384)) as sb:
        home = Path(env.get("HOME", "~")).expanduser()
        subprocess.run(["git", "config", "--global", "datalad.fmrif.server", sb.url],
                       check=True, env=env)
        for key, value in (("user.name", "FMRIF Demo"),
                           ("user.email", "demo@example.invalid")):
            if subprocess.run(["git", "config", "--global", key], env=env,
                              capture_output=True).returncode:
                subprocess.run(["git", "config", "--global", key, value], env=env)
        xnat_file = home / ".xnat"
        fd = os.open(xnat_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"username: {sb.user}\npassword: {sb.password}\n")
        labels = [s.label for s in sb.study.subjects(PROJECT)]
        (work / "pseudonyms.csv").write_text(
            "Subject,Pseudonym\n" + "".join(
                f"{label},P{i:02d}\n" for i, label in enumerate(labels, 1)))

        print(f"Sandbox XNAT at {sb.url} (synthetic data; user {sb.user!r})")
        if args.workdir:
            print(f"Working in {work} (kept afterwards)\n")
        else:
            print(f"Working in {work}, a temporary directory that is removed at "
                  "the end (--workdir DIR keeps the results)\n")
        for name, text, command in steps():
            print(textwrap.fill(f"# {text}", 78, subsequent_indent="# "))
            print(f"$ {command}")
            proc = subprocess.run(["bash", "-c", command], cwd=work, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            output = (proc.stdout.replace(str(work) + "/", "")
                      .replace(str(work), ".").replace(str(home), "~"))
            print(output.rstrip() + "\n")
            if proc.returncode:
                print(f"demo step {name!r} failed (exit {proc.returncode})",
                      file=sys.stderr)
                return 1
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print("Demo complete.")
    return 0


if __name__ == "__main__":
    sys.exit(run())
