"""``datalad fmrif-finish``: the end of a Slurm job array of fmrif-download."""

from __future__ import annotations

from datalad_next.commands import (
    EnsureCommandParameterization,
    Parameter,
    ValidatedInterface,
    build_doc,
    datasetmethod,
    eval_results,
)
from datalad_next.constraints import EnsureBool, EnsureDataset

from ..slurm import FINISH, finish
from ._common import NotInDataset, dataset_here, dataset_param, not_in_dataset


@build_doc
class FmrifFinish(ValidatedInterface):
    """Register the subdatasets a Slurm job array of fmrif-download delivered

    After 'datalad fmrif-download --slurm' and the end of its job array:
    registers every subject's subdataset that a task delivered in the
    superdataset, in ONE commit whose run record names the job array(s) and
    the subjects (by their names in the dataset), and reports every task
    that failed (killed, out of time, an XNAT error), with its log. With
    --resubmit it submits only the failed tasks again, with a fresh copy of
    the alias token (checked for expiry), and registers nothing yet: run
    fmrif-finish again when they have ended. Running it twice changes
    nothing.
    """

    _validator_ = EnsureCommandParameterization(dict(
        dataset=EnsureDataset(installed=True, purpose="finish a Slurm download in"),
        resubmit=EnsureBool(),
    ))

    _params_ = dict(
        dataset=dataset_param("""the superdataset the job array was submitted from.
            Default: the dataset of the current directory."""),
        resubmit=Parameter(
            args=("--resubmit",),
            action="store_true",
            doc="""submit the failed tasks again instead of registering."""),
    )

    _examples_ = [
        {"text": "Register what the job array delivered",
         "code_cmd": "datalad fmrif-finish"},
        {"text": "Run the failed tasks again, then finish when they have ended",
         "code_cmd": "datalad fmrif-finish --resubmit"},
    ]

    # 'nothing to do' is news here: say it, like fmrif-status does
    result_renderer = "tailored"

    @staticmethod
    def custom_result_renderer(res, **kwargs):
        from datalad.interface.utils import generic_result_renderer
        from datalad.ui import ui

        if res.get("action") == FINISH and res.get("status") == "notneeded":
            ui.message(res.get("message", ""))
            return
        generic_result_renderer(res)

    @staticmethod
    @datasetmethod(name="fmrif_finish")
    @eval_results
    def __call__(*, dataset=None, resubmit=False):
        try:
            ds = dataset.ds if dataset else dataset_here("finish a Slurm download in")
        except NotInDataset as e:
            yield not_in_dataset(FINISH, e)
            return
        yield from finish(ds, resubmit=resubmit, command="datalad fmrif-finish -d .")
