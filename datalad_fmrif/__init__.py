"""DataLad extension for reproducible downloads from the NIH FMRIF XNAT server."""

__version__ = "0.1.0"

# Each command is registered here once it works; never a placeholder.
command_suite = (
    "Download MRI data from the NIH FMRIF XNAT server",
    [
        ("datalad_fmrif.commands.login", "FmrifLogin", "fmrif-login", "fmrif_login"),
        ("datalad_fmrif.commands.download", "FmrifDownload", "fmrif-download",
         "fmrif_download"),
        ("datalad_fmrif.commands.list", "FmrifList", "fmrif-list", "fmrif_list"),
        ("datalad_fmrif.commands.status", "FmrifStatus", "fmrif-status",
         "fmrif_status"),
        ("datalad_fmrif.commands.finish", "FmrifFinish", "fmrif-finish",
         "fmrif_finish"),
    ],
)
