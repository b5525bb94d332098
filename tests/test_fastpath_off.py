"""The download with the fast path switched off (``DATALAD_FMRIF_FAST_PATH=0``).

Where :func:`datalad_fmrif.annex.supported` says no, git-annex's own
commands do every job the fast path does (``fromkey``, ``registerurl``,
``reinject``). The same download tests run here that way: a focused subset
of tests/test_download.py, so that both ways stay correct without doubling
the suite's time.
"""

from __future__ import annotations

import pytest
from test_annex import annex_log, logged, verified  # noqa: F401 - fixture
from test_download import (  # noqa: F401 - collected here again, fast path off
    test_digest_mismatch_is_caught_and_nothing_bad_committed,
    test_download_with_pseudonyms,
    test_interrupted_run_is_repaired,
    test_no_content_then_get_and_drop,
    test_rerun_fetches_nothing_and_new_session_is_picked_up,
)

from datalad_fmrif.annex import Annex


@pytest.fixture(autouse=True)
def fast_path_off(monkeypatch):
    monkeypatch.setenv("DATALAD_FMRIF_FAST_PATH", "0")


def test_the_switch_hands_every_job_to_git_annex(ds, tmp_path, annex_log):  # noqa: F811
    annex = Annex(ds.path)
    assert not annex.supported()
    files = verified(tmp_path, n=2)
    results = annex.link([(k, f"f{i}.dcm") for i, (k, _, _, _) in enumerate(files)])
    assert all(r["success"] for r in results)
    with annex.ingest(k for k, _, _, _ in files) as ingest:
        for key, path, size, md5 in files:
            ingest.add(key, path, size=size, md5=md5)
    assert ingest.results == {k: None for k, _, _, _ in files}
    commands = " ".join(logged(annex_log))
    assert "fromkey" in commands and "reinject" in commands
    assert annex.find_present(["f0.dcm", "f1.dcm"]) == {"f0.dcm", "f1.dcm"}
