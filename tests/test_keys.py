"""The key model (datalad_fmrif.annex.keys) against git-annex itself.

A key we build for a file must be the key ``git annex add`` makes for it,
or the same content gets a second key. Each name of the corpus is written
as a real file and ``git annex calckey --backend=MD5E`` (git-annex's own
key for it) is compared with ours.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from datalad_fmrif.annex.keys import extension, key_facts, key_problem, md5e, promises

# odd names: dots, unicode, long extensions, double extensions, none
CORPUS = [
    "x.c..d", "scan.ÄÖÜ", "a.tar.gz", "b.nii.gz", "c.1D", "noext", "trail.",
    ".hidden", ".abc", ".abc.gz", "..abc", ".a.b", "x..", "x...", "a..b",
    "f.tar.gz.verylong", "1.3.12.2.1107.dcm", "x.é", "x.é.é", "x.ÄÖ", "x.Ä",
    "x.日本", "x.ΣΣ", "x.½", "x.ab-c", "x.ab-c.gz", "x.a-b.c.d", "x.a b",
    "x .gz", "x._a", "x.abcd.ef", "x.abcde", "x.abcde.gz", "x.ABCD",
    "x.a.b.c", "x.a.b.c.d", "f.nii.gz.1", "x.c..d.e", "x..a.b", "a.b.c..",
    "ECG_2-5d1f3a.1D", "sub-01_T1w.json",
]


@pytest.fixture(scope="module")
def calckey(tmp_path_factory):
    repo = tmp_path_factory.mktemp("keys")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "annex", "init", "-q"], cwd=repo, check=True,
                   capture_output=True)

    def run(name: str, content: bytes) -> str:
        (repo / name).write_bytes(content)
        return subprocess.run(
            ["git", "annex", "calckey", "--backend=MD5E", "--", name], cwd=repo,
            check=True, capture_output=True, text=True).stdout.strip()

    return run


@pytest.mark.parametrize("name", CORPUS)
def test_key_is_git_annex_key(calckey, name):
    content = f"content of {name}".encode()
    md5 = hashlib.md5(content).hexdigest()
    assert md5e(len(content), md5, name) == calckey(name, content)


def test_extension_examples_from_the_docstring():
    assert extension("1.3.12.2.1107.dcm") == ".1107.dcm"
    assert extension("dir/x.nii.gz") == ".nii.gz"
    assert extension("x.c..d") == ".d"
    assert extension("scan.ÄÖÜ") == ""
    assert extension(".bashrc") == ""


def test_key_model_reads_what_it_builds():
    md5 = "0123456789abcdef0123456789abcdef"
    key = md5e(12, md5, "a.nii.gz")
    assert key_problem(key) is None
    assert key_facts(key) == (12, md5)
    assert promises(key, 12, md5) and promises(f"MD5-s12--{md5}", 12, md5)
    assert not promises(key, 13, md5)
    assert key_problem("MD5E-s1--x y") and key_problem("no key")
