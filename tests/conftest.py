"""Test set-up: a scratch HOME, the real Secret Service, the sandbox XNAT.

Everything runs for real: DataLad, git-annex (from the PyPI wheel in the
venv), the keyring through gnome-keyring's Secret Service (``make test``
starts it with tools/with-keyring), and the sandbox XNAT on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# -- before DataLad is imported: a HOME of our own -------------------------------
# DataLad keeps credential properties in the global git config, and the
# lockout memory lives in the user's state dir: neither may touch a real HOME.
_HOME = Path(tempfile.mkdtemp(prefix="fmrif-test-home-"))
os.environ["HOME"] = str(_HOME)
for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
    os.environ.pop(var, None)
os.environ.pop("GIT_CONFIG_GLOBAL", None)
(_HOME / ".gitconfig").write_text(
    "[user]\n\tname = FMRIF Test\n\temail = test@example.invalid\n"
    "[init]\n\tdefaultBranch = main\n"
)
# git-annex and our special remote come from the venv
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

SECRET_SERVICE = "keyring.backends.SecretService.Keyring"


def _secret_service_available() -> bool:
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return False
    try:
        import keyring
        from keyring.backends import SecretService

        backend = SecretService.Keyring()
        backend.priority  # raises when no Secret Service answers
        keyring.set_keyring(backend)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False


HAVE_SECRET_SERVICE = _secret_service_available()
if HAVE_SECRET_SERVICE:
    # every test uses the real Secret Service unless it says otherwise
    os.environ["PYTHON_KEYRING_BACKEND"] = SECRET_SERVICE


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--run-slow"):
        skip = pytest.mark.skip(reason="slow: use --run-slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture
def secret_service():
    """The real Secret Service; in CI its absence is a failure, not a skip."""
    if not HAVE_SECRET_SERVICE:
        msg = ("no Secret Service: run the tests with 'make test' "
               "(gnome-keyring in dbus-run-session)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    import keyring

    assert type(keyring.get_keyring()).__module__ == "keyring.backends.SecretService"
    return keyring.get_keyring()


@pytest.fixture
def sandbox():
    from datalad_fmrif.sandbox import Sandbox

    with Sandbox() as sb:
        yield sb


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A fresh state dir, so remembered rejections do not leak between tests."""
    path = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(path))
    return path


@pytest.fixture
def sb(secret_service, state_dir):
    """A small sandbox whose demo credential is stored in the real keyring."""
    from helpers import keyring_sandbox

    from datalad_fmrif.sandbox import StudySpec

    with keyring_sandbox(StudySpec(seed=1, subjects=3, files_per_scan=3,
                                   file_size=4096)) as box:
        yield box


@pytest.fixture
def ds(tmp_path):
    """A fresh DataLad dataset."""
    import datalad.api as dl

    return dl.create(tmp_path / "study", result_renderer="disabled")


@pytest.fixture(scope="module")
def slurm():
    """A real one-node Slurm cluster (tests/slurm_cluster.py); in CI its
    absence is a failure, not a skip."""
    from slurm_cluster import one_node_cluster, unavailable

    def cannot(why):
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)

    why = unavailable()
    if why:
        cannot(why)
    try:
        cluster = one_node_cluster()
        where = cluster.__enter__()
    except RuntimeError as e:
        cannot(str(e))
    try:
        yield where
    finally:
        cluster.__exit__(None, None, None)
