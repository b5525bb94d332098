"""annexlog: git-annex branch records rendered as git-annex writes them.

What git-annex itself writes, and reads back, is compared in test_annex.py;
here is the rendering alone.
"""

from __future__ import annotations

import base64

import pytest

from datalad_fmrif.annexlog import BranchLogs, appended, log_files, metadata_value

KEY = "MD5E-s3--acbd18db4cc2f85cedef654fccc4a4d8.dcm"
HERE = "1481ce9b-e504-499a-9856-1fbcb3587fb8"
WEB = "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize("value", ["T1w", "17-M-0181", "a+b=c", "ü", "-1", "+", "x!"])
def test_plain_metadata_values_stay_as_they_are(value):
    assert metadata_value(value) == value


@pytest.mark.parametrize("value", ["3 Plane Loc", "tab\there", "line\nbreak", "!bang",
                                   "", "\x00nul", "trailing "])
def test_other_metadata_values_are_base64(value):
    encoded = metadata_value(value)
    assert encoded.startswith("!")
    assert base64.b64decode(encoded[1:]).decode() == value
    assert " " not in encoded and "\n" not in encoded


def test_log_files_of_one_key():
    logs = BranchLogs()
    logs.add_present(KEY, WEB)
    logs.add_present(KEY, HERE)
    logs.add_present(KEY, HERE)  # once is enough
    logs.add_url(KEY, "https://x.example/data/a.dcm", claimed=True)
    logs.add_url(KEY, "https://mirror.example/a.dcm", claimed=False)
    logs.add_metadata(KEY, {"xnat_series_description": "3 Plane Loc",
                            "xnat_scan_id": ["2", "10"]})
    files = dict(log_files(logs, {KEY: "837/8db/"}, 1796189159.9))
    assert files == {
        f"837/8db/{KEY}.log": f"1796189159s 1 {WEB}\n1796189159s 1 {HERE}\n".encode(),
        f"837/8db/{KEY}.log.web": b"1796189159s 1 :https://x.example/data/a.dcm\n"
                                  b"1796189159s 1 https://mirror.example/a.dcm\n",
        f"837/8db/{KEY}.log.met": b"1796189159s xnat_scan_id +10 +2 xnat_series_description +!"
                                  + base64.b64encode(b"3 Plane Loc") + b"\n",
    }


def test_only_the_logs_a_key_has_records_in():
    logs = BranchLogs()
    logs.add_metadata(KEY, {"xnat_file": "a.dcm", "empty": ""})
    assert not BranchLogs() and logs
    assert list(log_files(logs, {KEY: "837/8db/"}, 0)) == [
        (f"837/8db/{KEY}.log.met", b"0s xnat_file +a.dcm\n")]


@pytest.mark.parametrize("bad", [
    lambda logs: logs.add_present(KEY, "not a uuid!"),
    lambda logs: logs.add_url(KEY, "https://x.example/a b", claimed=False),
    lambda logs: logs.add_url(KEY, "https://x.example/a\nb", claimed=False),
    lambda logs: logs.add_url(KEY, "", claimed=False),
    lambda logs: logs.add_metadata(KEY, {"bad field": "x"}),
    lambda logs: logs.add_metadata(KEY, {"": "x"}),
])
def test_what_would_break_a_log_line_is_refused(bad):
    logs = BranchLogs()
    with pytest.raises(ValueError):
        bad(logs)
    assert not logs


def test_new_lines_come_after_the_existing_ones():
    old = b"1700000000s 1 aaaa\n1700000005.25s 0 bbbb\n"
    assert appended(b"", b"1600000000s 1 cccc\n") == b"1600000000s 1 cccc\n"
    # our clock is ahead: as it is
    assert appended(old, b"1800000000s 1 cccc\n") == old + b"1800000000s 1 cccc\n"
    # our clock is behind the newest line: the second after it, every line
    assert appended(old, b"1600000000s 1 cccc\n1600000000s 1 dddd\n") == \
        old + b"1700000006s 1 cccc\n1700000006s 1 dddd\n"
    assert appended(b"1700000000s 1 aaaa", b"1700000000s 1 aaaa\n") == \
        b"1700000000s 1 aaaa\n1700000001s 1 aaaa\n"
