"""``datalad fmrif-download``: the subjects of a list, from XNAT into a dataset."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from pathlib import Path

from datalad_next.commands import (
    EnsureCommandParameterization,
    Parameter,
    ValidatedInterface,
    build_doc,
    datasetmethod,
    eval_results,
)
from datalad_next.constraints import (
    EnsureBool,
    EnsureDataset,
    EnsureInt,
    EnsureListOf,
    EnsureRange,
    EnsureStr,
)

from ..annex import AnnexError
from ..credentials import CredentialError, resolve_server
from ..pipeline import ACTION, Download, DownloadOptions
from ..inputs import CommittableInput, refuse_if_committable
from ..plan import DEFAULT_EXCLUDE_SERIES, DEFAULT_TEMPLATE, PlanError, PlanOptions
from ..remote_setup import RemoteSetupError
from ..report import download_summary
from ..runguard import dataset_lock, signals_interrupt
from ..slurm import DEFAULT_MAX_RUNNING, DEFAULT_SUBJECTS_PER_TASK, schedule
from ..subdatasets import LayoutError, SubdatasetDownload, check_layout, inner_template
from ..subjects import (
    SubjectListError,
    apply_pseudonyms,
    parse_subject_list,
    read_pseudonyms,
)
from ..xnat.errors import XnatError
from ..xnat.http import POOL_SIZE as MAX_JOBS  # a connection per job
from ._common import (
    NotInDataset,
    credential_param,
    dataset_here,
    dataset_param,
    not_in_dataset,
    result_record,
    server_param,
    xnat_session,
)

lgr = logging.getLogger("datalad.fmrif.commands.download")

LABELS_NEED_CONSENT = (
    "the subject list has no Pseudonym column and no --pseudonyms FILE was "
    "given. FMRIF subject labels are MRNs or names and session labels are "
    "accession numbers; in file names and commit messages they stay in the "
    "dataset's history for good and are published with it. Give pseudonyms "
    "(a Pseudonym column, or --pseudonyms FILE with 'label,pseudonym' lines, "
    "kept outside the dataset), or pass --keep-labels to accept labels in "
    "the dataset."
)


@build_doc
class FmrifDownload(ValidatedInterface):
    """Download the MRI data of the subjects in a list from XNAT into a dataset

    SUBJECTS is the list exported from the FMRIF XNAT web page (Processing
    Dashboard -> Subjects -> Download CSV), a hand-edited version of it, or a
    plain list with one subject label per line. Every file is registered with
    its XNAT MD5 as its git-annex key and its XNAT URL, its content is fetched
    (one zip stream per scan, what a zip did not deliver one file at a
    time) and every file is verified against that digest, and the run is committed
    with a machine-readable record of where everything came from. Files can
    be dropped and fetched again later with 'datalad get', here or in a
    clone, through the 'fmrif' git-annex special remote.

    A second run with the same list fetches only what is new. Subject labels
    (MRNs, names) never enter the dataset unless --keep-labels says so:
    give pseudonyms instead. Series that carry burned-in identifying text
    (REQUISITION, SCREEN-SAVE, SAVE) are excluded by default.

    One download works in a dataset at a time; a second one waits for it.
    A run that is interrupted (Ctrl-C, kill, a full disk) leaves nothing
    half-done committed, and the same command again completes it.
    """

    _validator_ = EnsureCommandParameterization(dict(
        subjects=EnsureStr(min_len=1),
        dataset=EnsureDataset(installed=True, purpose="download XNAT data into"),
        server=EnsureStr(min_len=1),
        project=EnsureStr(min_len=1),
        credential=EnsureStr(min_len=1),
        path=EnsureStr(min_len=1),
        pseudonyms=EnsureStr(min_len=1),
        keep_labels=EnsureBool(),
        include_series=EnsureStr(),
        exclude_series=EnsureStr(),
        resource=EnsureListOf(EnsureStr(min_len=1)),
        no_content=EnsureBool(),
        jobs=EnsureInt() & EnsureRange(min=1, max=MAX_JOBS),
        dry_run=EnsureBool(),
        message=EnsureStr(),
        subdatasets=EnsureBool(),
        slurm=EnsureBool(),
        subjects_per_task=EnsureInt() & EnsureRange(min=1),
        max_running=EnsureInt() & EnsureRange(min=1, max=64),
        sbatch_option=EnsureListOf(EnsureStr(min_len=1)),
    ))

    _params_ = dict(
        subjects=Parameter(
            args=("subjects",),
            metavar="SUBJECTS",
            doc="""path of the subject list (CSV from the Processing
            Dashboard, or one label per line), or '-' to read it from stdin.
            Optional columns: Project, Pseudonym, Session."""),
        dataset=dataset_param("""dataset to download into (create it first with 'datalad
            create'). Default: the dataset of the current directory."""),
        server=server_param(),
        project=Parameter(
            args=("--project",),
            metavar="ID",
            doc="""XNAT project (FMRIF protocol number, e.g. 17-M-0181) for
            lists without a Project column; an error if it contradicts one."""),
        credential=credential_param(
            """name of the credential stored by 'datalad fmrif-login'.
            Default: git config datalad.fmrif.credential, else the one the
            dataset's fmrif remote records, else derived from the server
            (fmrif-xnat). Recorded in the remote when given (for an alias
            token credential NAME-token: NAME), so name a token with
            the environment instead (see 'datalad fmrif-login --token')."""),
        path=Parameter(
            args=("--path",),
            metavar="TEMPLATE",
            doc="""where files go in the dataset. Fields: {subject},
            {session} (names in the dataset), {subject_id}, {session_id}
            (XNAT accession IDs), {project}, {scan}, {scan_type},
            {series_description}, {resource}, {resource_id}, {file}.
            The default makes the layout that heudiconv reads."""),
        pseudonyms=Parameter(
            args=("--pseudonyms",),
            metavar="FILE",
            doc="""file of 'label,pseudonym' lines: the pseudonym names the
            subject in the dataset, and sessions are named 01, 02, ... in
            acquisition order. Keep it outside the dataset: a file inside
            a dataset that git does not ignore is refused (it would be
            committed by the next 'datalad save'); so is such a SUBJECTS
            file."""),
        keep_labels=Parameter(
            args=("--keep-labels",),
            action="store_true",
            doc="""use XNAT's labels (MRNs, names, accession numbers) in the
            dataset. They stay in its history for good: only with the
            consent of whoever governs the data."""),
        include_series=Parameter(
            args=("--include-series",),
            metavar="REGEX",
            doc="""only scans whose series description or type matches
            (case-insensitive search)."""),
        exclude_series=Parameter(
            args=("--exclude-series",),
            metavar="REGEX",
            doc="""leave out scans whose series description or type matches
            (case-insensitive). Giving it replaces the default, which leaves
            out series with burned-in identifying text."""),
        resource=Parameter(
            args=("--resource",),
            action="append",
            metavar="LABEL",
            doc="""XNAT resource to download; repeat for several. Default:
            DICOM. 'supplementary' adds FMRIF's session-level physio
            files."""),
        no_content=Parameter(
            args=("--no-content",),
            action="store_true",
            doc="""register files (keys, URLs, metadata) without downloading
            them; 'datalad get' fetches them later."""),
        jobs=Parameter(
            args=("-J", "--jobs"),
            metavar="N",
            doc="""parallel transfers (1-32): zip streams of scans, or single
            files; the default is low to be polite to the server."""),
        dry_run=Parameter(
            args=("--dry-run",),
            action="store_true",
            doc="""show what would be downloaded (sessions, files, bytes,
            what is new) and change nothing."""),
        message=Parameter(
            args=("-m", "--message",),
            metavar="MESSAGE",
            doc="""commit message; the machine-readable record is added to
            it. Do not put labels here when using pseudonyms."""),
        subdatasets=Parameter(
            args=("--subdatasets",),
            action="store_true",
            doc="""put each subject in a DataLad subdataset of its own,
            sub-NAME/ (for protocols of many subjects: one dataset slows
            down past ~100k files). Each subdataset has its own fmrif
            remote, manifests and run record; the superdataset gets one
            commit naming the subjects that changed. A dataset keeps the
            layout of its first download: switching is refused."""),
        slurm=Parameter(
            args=("--slurm",),
            action="store_true",
            doc="""download with a Slurm job array instead of here (implies
            --subdatasets; run it on the login node): the list is split into
            tasks of --subjects-per-task subjects, written with a job script
            and a Biowulf swarm file to .git/fmrif-slurm/, and submitted with
            sbatch. Each task fills its subjects' subdatasets in a clone on
            node-local scratch and pushes them back; it logs in with the
            alias token of 'datalad fmrif-login --token', never the
            password. Afterwards 'datalad fmrif-finish' registers them in
            one commit. With --dry-run: write the files, submit nothing."""),
        subjects_per_task=Parameter(
            args=("--subjects-per-task",),
            metavar="K",
            doc="""with --slurm: subjects per task of the job array."""),
        max_running=Parameter(
            args=("--max-running",),
            metavar="M",
            doc="""with --slurm: tasks that run (and download from XNAT) at
            once (the limit of sbatch --array); the default is polite to
            XNAT."""),
        sbatch_option=Parameter(
            args=("--sbatch-option",),
            action="append",
            metavar="OPTION",
            doc="""with --slurm: an option for the job script's #SBATCH
            lines, e.g. --time=8:00:00 or --gres=lscratch:50; repeat for
            several."""),
    )

    _examples_ = [
        {"text": "Download the subjects of a Processing Dashboard export, "
                 "with a Pseudonym column added",
         "code_cmd": "datalad fmrif-download processing_data.csv"},
        {"text": "A plain list of labels of one project, with pseudonyms "
                 "kept outside the dataset",
         "code_cmd": "datalad fmrif-download --project 17-M-0181 "
                     "--pseudonyms ~/secure/pseudonyms.csv subjects.txt"},
        {"text": "Register only (no content), fetch one subject later",
         "code_cmd": "datalad fmrif-download --no-content subjects.csv && "
                     "datalad get sub-P01"},
        {"text": "A whole protocol, each subject in its own subdataset",
         "code_cmd": "datalad fmrif-download --subdatasets processing_data.csv"},
        {"text": "The same with a Slurm job array of 10 subjects per task, 4 at "
                 "once (on Biowulf's login node, after 'datalad fmrif-login "
                 "--token'); 'datalad fmrif-finish' when it has ended",
         "code_cmd": "datalad fmrif-download --slurm --subjects-per-task 10 "
                     "--sbatch-option=--gres=lscratch:20 processing_data.csv"},
    ]

    @staticmethod
    @datasetmethod(name="fmrif_download")
    @eval_results
    def __call__(subjects, *, dataset=None, server=None, project=None,
                 credential=None, path=DEFAULT_TEMPLATE, pseudonyms=None,
                 keep_labels=False, include_series=None,
                 exclude_series=DEFAULT_EXCLUDE_SERIES, resource=None,
                 no_content=False, jobs=4, dry_run=False, message=None,
                 subdatasets=False, slurm=False,
                 subjects_per_task=DEFAULT_SUBJECTS_PER_TASK,
                 max_running=DEFAULT_MAX_RUNNING, sbatch_option=None):
        try:
            ds = dataset.ds if dataset else dataset_here("download XNAT data into")
        except NotInDataset as e:
            yield not_in_dataset(ACTION, e)
            return

        def failed(msg, status="impossible", exception=None):
            return result_record(ACTION, status, msg, exception=exception,
                                 path=ds.path, type="dataset", refds=ds.path)

        subdatasets = subdatasets or slurm
        if pseudonyms and keep_labels:
            yield failed("--pseudonyms and --keep-labels exclude each other")
            return
        try:
            for given, what in ((subjects, "the subject list"),
                                (pseudonyms, "the pseudonym file")):
                if given and given != "-":
                    refuse_if_committable(given, what)
        except CommittableInput as e:
            yield failed(str(e), exception=e)
            return
        options = PlanOptions(
            template=path, include_series=include_series or None,
            exclude_series=exclude_series or None,
            resources=tuple(resource or ("DICOM",)))
        try:
            options.validate()
            check_layout(ds, subdatasets)
            if subdatasets:
                inner_template(path)
            subject_list = _read_subjects(subjects, project, pseudonyms)
        except (PlanError, SubjectListError, LayoutError, OSError) as e:
            yield failed(str(e), exception=e)
            return
        pseudonymous = any(r.pseudonym for r in subject_list.requests)
        if not pseudonymous and not keep_labels:
            yield failed(LABELS_NEED_CONSENT)
            return
        if pseudonymous and not all(r.pseudonym for r in subject_list.requests):
            line = next(r.line for r in subject_list.requests if not r.pseudonym)
            yield failed(f"line {line}: no pseudonym for this subject")
            return
        missing = [r.line for r in subject_list.requests if not r.project]
        if missing:
            yield failed(f"line {missing[0]}: no project; the list has no "
                         "Project column, so give --project")
            return
        for note in subject_list.notes:
            lgr.info("%s", note)
        if slurm:
            # the login node needs no password: the tasks use a token
            try:
                server_url = resolve_server(server, ds.config)
            except CredentialError as e:
                yield failed(str(e), exception=e)
                return
            opts = DownloadOptions(
                server=server_url, plan=options, keep_labels=keep_labels,
                no_content=no_content, jobs=jobs, dry_run=dry_run,
                command=_command_line(ds, subjects, server, project, credential,
                                      path, pseudonyms, keep_labels, include_series,
                                      exclude_series, resource, no_content, jobs,
                                      True))
            yield from schedule(ds, subject_list, opts, credential=credential,
                                per_task=subjects_per_task, max_running=max_running,
                                sbatch_options=list(sbatch_option or ()))
            return

        try:
            xnat = xnat_session(ds.config, server, credential, dataset=ds.path)
        except CredentialError as e:
            yield failed(str(e), exception=e)
            return
        opts = DownloadOptions(
            server=xnat.server, plan=options, keep_labels=keep_labels,
            no_content=no_content, jobs=jobs, dry_run=dry_run,
            message=message, credential=credential,
            command=_command_line(ds, subjects, server, project, credential,
                                  path, pseudonyms, keep_labels, include_series,
                                  exclude_series, resource, no_content, jobs,
                                  subdatasets))
        run = SubdatasetDownload if subdatasets else Download
        try:
            # one run at a time in a dataset; a dry run changes nothing
            held = contextlib.nullcontext() if dry_run else dataset_lock(ds.pathobj)
            with signals_interrupt(), held, xnat:
                yield from run(ds, subject_list, opts, xnat).run()
        except (XnatError, RemoteSetupError, AnnexError) as e:
            yield failed(str(e), status="error", exception=e)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (Interrupted)
            signame = getattr(e, "signame", "SIGINT")
            yield failed(f"fmrif-download was interrupted ({signame}). The dataset "
                         "is consistent: every committed file is whole, and running "
                         "the same command again completes the download.",
                         status="error")

    @staticmethod
    def custom_result_summary_renderer(results):
        from datalad.ui import ui

        sessions = [r for r in results
                    if r.get("action") == ACTION and r.get("type") == "session"
                    and "files_new" in r]
        if sessions:
            ui.message(download_summary(sessions))


def _read_subjects(subjects: str, project, pseudonyms):
    if subjects == "-":
        data = sys.stdin.buffer.read()
    else:
        data = Path(subjects).read_bytes()
    subject_list = parse_subject_list(data, project=project)
    if pseudonyms:
        mapping = read_pseudonyms(Path(pseudonyms).read_bytes())
        subject_list = apply_pseudonyms(subject_list, mapping)
    return subject_list


def _command_line(ds, subjects, server, project, credential, path, pseudonyms,
                  keep_labels, include_series, exclude_series, resource,
                  no_content, jobs, subdatasets=False) -> str:
    """The command that ``datalad rerun`` runs again, from the dataset root."""
    def where(p):
        if p == "-":
            return p
        full = Path(p).absolute()
        try:
            return str(full.relative_to(ds.pathobj))
        except ValueError:
            return str(full)

    argv = ["datalad", "fmrif-download", "-d", "."]
    for flag, value in (("--server", server), ("--project", project),
                        ("--credential", credential)):
        if value:
            argv += [flag, value]
    if path != DEFAULT_TEMPLATE:
        argv += ["--path", path]
    if pseudonyms:
        argv += ["--pseudonyms", where(pseudonyms)]
    if keep_labels:
        argv.append("--keep-labels")
    if include_series:
        argv += ["--include-series", include_series]
    if exclude_series != DEFAULT_EXCLUDE_SERIES:
        argv += ["--exclude-series", exclude_series or ""]
    for r in resource or ():
        argv += ["--resource", r]
    if no_content:
        argv.append("--no-content")
    if jobs != 4:
        argv += ["-J", str(jobs)]
    if subdatasets:
        argv.append("--subdatasets")
    argv.append(where(subjects))
    return shlex.join(argv)
