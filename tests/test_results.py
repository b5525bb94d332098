"""Result records of the thin commands: one builder
(commands/_common.py:result_record), and the exception that caused a
failure attached as DataLad's CapturedException."""

from __future__ import annotations

import datalad.api as dl
from datalad.support.exceptions import CapturedException

from datalad_fmrif.credentials import env_names
from datalad_fmrif.xnat.errors import AccessDenied, ServerUnreachable

FORBIDDEN = "01-M-0192"


def test_a_failure_carries_its_cause(sb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [res] = dl.fmrif_list(FORBIDDEN, server=sb.url, result_renderer="disabled",
                          on_failure="ignore", return_type="list")
    assert res["status"] == "impossible"
    assert isinstance(res["exception"], CapturedException)
    assert res["exception"].name == AccessDenied.__name__
    assert res["exception_traceback"]
    # a success has none
    [ok] = dl.fmrif_list("17-M-0181", server=sb.url, result_renderer="disabled",
                         on_failure="ignore", return_type="list", output="x.csv")
    assert ok["status"] == "ok" and "exception" not in ok


def test_a_login_outcome_carries_its_cause_but_never_the_secret(
        secret_service, state_dir, tmp_path, monkeypatch):
    """fmrif-login --check against nothing: the error names the cause; the
    record holds no text with the secret."""
    monkeypatch.chdir(tmp_path)
    server = "http://127.0.0.1:9"  # discard: nothing listens
    user_var, secret_var = env_names("probe")
    monkeypatch.setenv(user_var, "someone")
    monkeypatch.setenv(secret_var, "s3cret-Pa55")
    [res] = dl.fmrif_login(check=True, server=server, credential="probe",
                           result_renderer="disabled", on_failure="ignore",
                           return_type="list")
    assert res["status"] == "error"
    assert res["exception"].name == ServerUnreachable.__name__
    assert "s3cret-Pa55" not in repr(res) and "s3cret-Pa55" not in str(res["exception"])


def test_a_download_failure_carries_its_cause(ds, tmp_path):
    """fmrif-download refusing a path template: the PlanError is attached."""
    from datalad_fmrif.plan import PlanError

    subjects = tmp_path / "subjects.txt"
    subjects.write_text("Subject,Pseudonym\n12345678,P01\n")
    [res] = dl.fmrif_download(str(subjects), dataset=ds.path, project="17-M-0181",
                              path="{nonsense}/{file}", server="http://127.0.0.1:9",
                              result_renderer="disabled", on_failure="ignore",
                              return_type="list")
    assert res["status"] == "impossible"
    assert res["exception"].name == PlanError.__name__
