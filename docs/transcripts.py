"""Run the documented commands against the sandbox XNAT; write what they print.

    python docs/transcripts.py OUTDIR

``make docs`` runs this (in a scratch HOME, with a private unlocked
gnome-keyring, like ``make demo``) before Sphinx, and the pages include
``OUTDIR/<step>.txt`` with ``literalinclude``: every command shown in the
tutorial, the credentials, privacy and provenance pages is the command that
ran, and every output is what it printed. A step that fails where it should
succeed (or succeeds where the page shows an error) fails the docs build.

The story is one researcher's, in order; the sandbox is changed between
steps the way FMRIF's server changes over time (a new session, a file that
XNAT now lists with another MD5, an alias token that expires).

Run it in a scratch HOME only: it stores credentials in the keyring and
writes the user's git configuration (``make docs`` takes care of that).
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datalad_fmrif.sandbox.demo import OFFLINE
from datalad_fmrif.sandbox.server import Sandbox
from datalad_fmrif.sandbox.study import MAIN_PROJECT, StudySpec

PROJECT = MAIN_PROJECT  # 17-M-0181, the NIMH Healthy Volunteers protocol ID
CREDENTIAL = "fmrif-xnat"  # what fmrif-login names it at FMRIF
#: the token goes into the variables of the credential the datasets use
CREDENTIAL_ENV = "DATALAD_CREDENTIAL_FMRIF__XNAT"
DATASET_FOLDER = "sub-P01/ses-01"
BIDS_SESSION = "sub-P03/ses-01"  # its series have ReproIn names (anat-T1w, ...)
#: what the dcm2bids step maps: the FMRIF-named series of sub-P01/ses-01
DCM2BIDS_CONFIG = """{
  "descriptions": [
    {"datatype": "anat", "suffix": "T1w",
     "criteria": {"SeriesDescription": "T1w_MPRAGE"}},
    {"datatype": "func", "suffix": "bold", "custom_entities": "task-rest",
     "criteria": {"SeriesDescription": "rsfMRI*"},
     "sidecar_changes": {"TaskName": "rest"}},
    {"datatype": "dwi", "suffix": "dwi",
     "criteria": {"SeriesDescription": "DTI*"}}
  ]
}
"""
STEP_TIMEOUT = 120


@dataclass
class Step:
    name: str
    command: str
    cwd: str = "."  # relative to HOME
    fails: bool = False  # the page shows this command failing
    before: Callable[[Story], None] | None = None  # change the sandbox first
    answers: tuple[tuple[str, str], ...] = ()  # (prompt text, typed answer)


class Story:
    """The sandbox, the scratch HOME, and the steps of the documentation."""

    def __init__(self, sandbox: Sandbox, home: Path, out: Path):
        self.sb = sandbox
        self.home = home
        self.out = out
        self.env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        self.env["PATH"] = os.pathsep.join([bindir, self.env.get("PATH", "")])
        # the command line as a researcher sees it: no colours, no pager
        self.env.update(DATALAD_UI_COLOR="off", GIT_PAGER="cat", PAGER="cat",
                        COLUMNS="100")
        self.env.update(OFFLINE)  # the converters' version checks stay offline
        labels = [s.label for s in sandbox.study.subjects(PROJECT)]
        self.subjects = {f"P{n:02d}": s for n, s in
                         enumerate(sandbox.study.subjects(PROJECT), 1)}
        self.labels = labels

    # -- what the sandbox stands in for --------------------------------------------

    def prepare(self) -> None:
        """Files a researcher already has: the old ~/.xnat, a pseudonym
        list, and the web page's CSV export (single-project view)."""
        xnat = self.home / ".xnat"
        fd = os.open(xnat, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"username: {self.sb.user}\npassword: {self.sb.password}\n")
        secure = self.home / "secure"
        secure.mkdir(mode=0o700)
        (secure / "pseudonyms.csv").write_text(
            "Subject,Pseudonym\n" + "".join(
                f"{s.label},{p}\n" for p, s in self.subjects.items()))
        (self.home / "dcm2bids_config.json").write_text(DCM2BIDS_CONFIG)
        downloads = self.home / "Downloads"
        downloads.mkdir()
        # as XNAT's Processing Dashboard writes it in a project's own view:
        # every field quoted, CRLF, a non-breaking space after the header
        # cell, no final line end
        rows = ['"Subject\u00a0"'] + [f'"{label}"' for label in self.labels]
        (downloads / "processing_data.csv").write_bytes(
            "\r\n".join(rows).encode("utf-8"))

    # -- changes on the server between steps -------------------------------------

    def new_session(self) -> None:
        self.sb.study.add_session(self.subjects["P01"].id)

    def changed_file(self) -> None:
        subject = self.subjects["P02"]
        session = self.sb.study.sessions(subject.id)[0]
        scan = self.sb.study.scans(session.id)[1]
        name = self.sb.study.scan_files(session.id, scan.id)[0].name
        self.sb.study.change_file(session.id, scan.id, name)

    def tokens_expire(self) -> None:
        self.sb.expire_tokens()

    # -- running -------------------------------------------------------------------

    def shown(self, text: str) -> str:
        """Output as the page shows it: paths under HOME start with '~'."""
        return text.replace(str(self.home), "~")

    def run(self, step: Step) -> tuple[int, list[str]]:
        """Exit status of the step's last command, and each command's output.

        The commands run in one shell (an ``export`` or ``source`` holds for
        those after it); a marker line between them tells their outputs
        apart, so the page shows each command above what it printed.
        """
        cwd = self.home / step.cwd
        if step.answers:
            code, output = self._run_on_terminal(step, cwd)
            return code, [output]
        commands = split_commands(step.command)
        script = f"\nprintf '\\n%s\\n' '{NEXT_COMMAND}'\n".join(commands)
        proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=STEP_TIMEOUT,
                              check=False)
        output = proc.stdout.decode("utf-8", "replace")
        return proc.returncode, output.split(f"\n{NEXT_COMMAND}\n")

    def _run_on_terminal(self, step: Step, cwd: Path) -> tuple[int, str]:
        """Run on a pseudo-terminal and type the answers to its prompts:
        the output is what a terminal shows (a password is not echoed)."""
        pid, fd = pty.fork()
        if pid == 0:  # child
            try:
                os.chdir(cwd)
                os.execvpe("bash", ["bash", "-c", step.command], self.env)
            finally:
                os._exit(127)
        seen = b""
        answers = list(step.answers)
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if answers and answers[0][0].encode() in seen.rsplit(b"\n", 1)[-1]:
                os.write(fd, answers.pop(0)[1].encode() + b"\n")
        else:
            os.kill(pid, 9)
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        text = seen.decode("utf-8", "replace").replace("\r\n", "\n")
        return os.waitstatus_to_exitcode(status), text

    def write(self, step: Step, outputs: list[str]) -> None:
        commands = ([step.command] if step.answers
                    else split_commands(step.command))
        (self.out / f"{step.name}.txt").write_text(
            transcript(commands, [self.shown(o) for o in outputs],
                       cwd=None if step.cwd == "." else f"~/{step.cwd}"),
            encoding="utf-8")


#: printed between two commands of a step, to tell their outputs apart
NEXT_COMMAND = "@@fmrif-transcript: next command@@"


def split_commands(script: str) -> list[str]:
    """The commands of a step, one per entry: a line that continues an open
    parenthesis or brace, or a line ending in '\\', '|' or '&&', belongs to
    the command before it."""
    commands: list[str] = []
    depth = 0
    for line in script.splitlines():
        if commands and (depth > 0 or commands[-1].rstrip().endswith(("\\", "|", "&&"))):
            commands[-1] += "\n" + line
        else:
            commands.append(line)
        depth += line.count("(") + line.count("{") - line.count(")") - line.count("}")
    return commands


def transcript(commands: list[str], outputs: list[str], cwd: str | None = None) -> str:
    """Each command after a '$' prompt (its continuation lines indented, not
    behind a '>' prompt that reads like a heredoc), then what it printed."""
    parts = [f"$ cd {cwd}"] if cwd else []
    for command, output in zip(commands, outputs):
        first, *rest = command.splitlines()
        parts.append("\n".join([f"$ {first}"] + [f"  {line}" for line in rest]))
        if output.strip():
            parts.append(output.strip("\n").rstrip())
    return "\n".join(parts) + "\n"


def steps(story: Story) -> list[Step]:
    sb = story.sb
    first = DATASET_FOLDER
    t1 = f"{first}/2-T1w_MPRAGE"
    manifest = ".datalad/fmrif/sessions/FMRIF_E00001.json"
    return [
        # -- set-up of the sandbox (what https://fmrif-xnat.nimh.nih.gov is) --
        Step("sandbox",
             f"git config --global datalad.fmrif.server {sb.url}\n"
             f"git config --global datalad.fmrif.credential {CREDENTIAL}"),
        # -- credentials --
        Step("login", "datalad fmrif-login",
             answers=(("user name", sb.user), ("password", sb.password))),
        Step("credentials", "datalad credentials | grep -v legacy-credential"),
        Step("check", "datalad fmrif-login --check"),
        Step("old-xnat", "ls -l ~/.xnat && sed 's/password: .*/password: ********/' ~/.xnat"),
        Step("import", "datalad fmrif-login --import ~/.xnat --remove-imported"),
        Step("token", "datalad fmrif-login --token"),
        Step("token-file",
             "( umask 077  # the file is for your eyes only\n"
             f"  {{ echo \"export {CREDENTIAL_ENV}_USER=$(datalad -f '{{cred_user}}' credentials get {CREDENTIAL}-token)\"\n"
             f"    echo \"export {CREDENTIAL_ENV}_SECRET=$(datalad -f '{{cred_secret}}' credentials get {CREDENTIAL}-token)\"\n"
             "  } > ~/fmrif-token.env )\n"
             "ls -l ~/fmrif-token.env\n"
             "sed 's/SECRET=.*/SECRET=********/' ~/fmrif-token.env"),
        # -- the subject list --
        Step("list", f"datalad fmrif-list {PROJECT}"),
        Step("list-sessions", f"datalad fmrif-list --sessions {PROJECT}"),
        Step("list-file", f"datalad fmrif-list {PROJECT} -o ~/secure/subjects.csv"),
        Step("export", "cat ~/Downloads/processing_data.csv; echo"),
        Step("export-bytes", "head -c 40 ~/Downloads/processing_data.csv | od -c | head -n 3"),
        Step("pseudonyms", "cat ~/secure/pseudonyms.csv"),
        # -- the dataset --
        Step("create", "datalad create study"),
        Step("no-pseudonyms", "datalad fmrif-download ~/secure/subjects.csv",
             cwd="study", fails=True),
        Step("dry-run",
             f"datalad fmrif-download --dry-run --project {PROJECT} "
             "--pseudonyms ~/secure/pseudonyms.csv ~/Downloads/processing_data.csv",
             cwd="study"),
        Step("download",
             "datalad fmrif-download --pseudonyms ~/secure/pseudonyms.csv "
             "~/secure/subjects.csv", cwd="study"),
        # -- what arrived --
        Step("tree", f"find sub-P01 -maxdepth 2 | sort\nls {t1}",
             cwd="study"),
        Step("log", "git log --format='%h %s'", cwd="study"),
        Step("run-record", "git log -1 --format=%B", cwd="study"),
        Step("manifest", f"head -n 16 {manifest}\ntail -n 26 {manifest}",
             cwd="study"),
        Step("whereis", f"git annex whereis {t1}/*.dcm | head -n 6", cwd="study"),
        Step("metadata", f"git annex metadata {t1}/*.dcm | head -n 24 | grep -v lastchanged",
             cwd="study"),
        Step("find-by-metadata",
             "git annex find --metadata xnat_series_description='T1w*' | head -n 5",
             cwd="study"),
        # -- drop, get, clone --
        Step("drop-get", f"datalad drop {t1}\ndatalad get {t1}", cwd="study"),
        Step("clone", "datalad clone study study-clone"),
        Step("clone-get", f"datalad get --source fmrif {t1}", cwd="study-clone"),
        Step("batch-job",
             "export PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring  # no keyring here\n"
             "source ~/fmrif-token.env\n"
             "datalad get --source fmrif sub-P02/ses-01/4-T2w_CUBE", cwd="study-clone"),
        Step("token-expired", f"datalad fmrif-login --check --credential {CREDENTIAL}-token",
             fails=True, before=Story.tokens_expire),
        Step("token-again", "datalad fmrif-login --token"),
        # -- later: XNAT has more --
        Step("status", "datalad fmrif-status", cwd="study", before=Story.new_session),
        Step("rerun", "datalad rerun", cwd="study"),
        Step("log-rerun", "git log --graph --format='%h %s' -4", cwd="study"),
        Step("status-changed", "datalad fmrif-status sub-P02", cwd="study",
             before=Story.changed_file),
        Step("again",
             "datalad fmrif-download --pseudonyms ~/secure/pseudonyms.csv "
             "~/secure/subjects.csv", cwd="study", fails=True),
        Step("changed-manifest",
             "git log -1 --format='%h %s'\n"
             "git show --format= HEAD -- .datalad/fmrif/sessions/ | grep -B 3 -A 3 server_md5",
             cwd="study"),
        # -- privacy --
        Step("history-check",
             "cut -d, -f1 ~/secure/pseudonyms.csv | tail -n +2 > ~/secure/labels.txt\n"
             "git log --all -p | grep -c -w -F -f ~/secure/labels.txt",
             cwd="study", fails=True),
        Step("dicom-header",
             "python -c 'import sys, pydicom; d = pydicom.dcmread(sys.argv[1]); "
             "print(d.PatientID, d.PatientName, d.AccessionNumber, sep=\" | \")' "
             f"\"$(ls {t1}/*.dcm | head -n 1)\"",
             cwd="study"),
        # -- hand-over to BIDS conversion --
        Step("heudiconv-input", "ls sub-P01/ses-01/*/*.dcm | head -n 5", cwd="study"),
        # -- BIDS conversion (docs/bids.md), tested in tests/test_bids.py --
        Step("bids-series", f"ls {BIDS_SESSION}", cwd="study"),
        Step("bids-rawdata",
             "datalad create -d . -c text2git rawdata 2>&1 | grep '^create('\n"
             "echo .heudiconv/ > rawdata/.gitignore\n"
             "datalad save -d . -r -m 'Keep heudiconv notes out of git' rawdata | grep '^save('",
             cwd="study"),
        Step("heudiconv",
             f"datalad get {BIDS_SESSION}\n"
             f"datalad run -m 'Convert {BIDS_SESSION} to BIDS' -i {BIDS_SESSION} -o rawdata \\\n"
             "  \"heudiconv -f reproin -c dcm2niix --bids --minmeta -o rawdata \\\n"
             "-d 'sub-{{subject}}/ses-{{session}}/*/*.dcm' -s P03 -ss 01\" \\\n"
             "  > ~/heudiconv.log 2>&1\n"
             "tail -n 6 ~/heudiconv.log",
             cwd="study"),
        Step("bids-tree", "find rawdata/sub-P03 | sort\n"
             "git log -1 --format=%B | head -n 12", cwd="study"),
        Step("bids-validate", "bids-validator-deno --ignoreWarnings rawdata", cwd="study"),
        Step("dcm2bids-config", "cat ~/dcm2bids_config.json"),
        Step("dcm2bids",
             "dcm2bids_scaffold -o ~/bids-dcm2bids > /dev/null 2>&1\n"
             "dcm2bids -d sub-P01/ses-01 -p P01 -s 01 -c ~/dcm2bids_config.json \\\n"
             "  -o ~/bids-dcm2bids > ~/dcm2bids.log 2>&1\n"
             "find ~/bids-dcm2bids/sub-P01 -name '*.nii.gz' | sort\n"
             "echo 'Sandbox study, converted with dcm2bids' > ~/bids-dcm2bids/README\n"
             "bids-validator-deno --ignoreWarnings ~/bids-dcm2bids | head -n 1",
             cwd="study"),
    ]


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/transcripts.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="where to write <step>.txt")
    parser.add_argument("--only", nargs="*", default=None,
                        help="stop after the last of these steps (for debugging)")
    args = parser.parse_args(argv)
    home = Path(os.environ["HOME"]).resolve()
    if (home / ".gitconfig").exists() and "datalad.fmrif" not in (
            home / ".gitconfig").read_text():
        print("transcripts.py writes the git config and keyring of HOME; run it "
              "in a scratch HOME (make docs does)", file=sys.stderr)
        return 2
    out = Path(args.outdir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # 4 files a scan: fMRI and diffusion series of 2 slices x 2 volumes, which
    # dcm2niix converts without a warning (one slice would get one)
    spec = StudySpec(subjects=3, files_per_scan=4, file_size=4096)
    started = time.monotonic()
    with Sandbox(spec) as sb:
        for key, value in (("user.name", "Pat Researcher"),
                           ("user.email", "pat@example.invalid")):
            subprocess.run(["git", "config", "--global", key, value], check=True)
        story = Story(sb, home, out)
        story.prepare()
        for step in steps(story):
            if step.before:
                step.before(story)
            t0 = time.monotonic()
            code, outputs = story.run(step)
            story.write(step, outputs)
            output = "\n".join(outputs)
            took = time.monotonic() - t0
            print(f"  {step.name:<18} {took:5.1f}s  exit {code}", file=sys.stderr)
            if bool(code) != step.fails:
                expected = "fail" if step.fails else "succeed"
                print(f"step {step.name!r} should {expected} but exited with "
                      f"{code}:\n$ {step.command}\n{story.shown(output)}",
                      file=sys.stderr)
                return 1
            if args.only and step.name == args.only[-1]:
                break
    print(f"transcripts: {len(list(out.glob('*.txt')))} steps in "
          f"{time.monotonic() - started:.0f}s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run())
