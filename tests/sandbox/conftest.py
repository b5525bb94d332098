"""Fixtures for the sandbox server's own tests."""

from __future__ import annotations

import pytest
import requests

from datalad_fmrif.sandbox import Sandbox, StudySpec

MAIN = "17-M-0181"


@pytest.fixture
def sb():
    """A fresh default sandbox (3 subjects, 8 KiB files)."""
    with Sandbox(StudySpec()) as box:
        yield box


@pytest.fixture
def http(sb):
    """A requests session logged in to ``sb`` with a JSESSIONID cookie."""
    s = requests.Session()
    r = s.put(f"{sb.url}/data/services/auth", data={"username": sb.user, "password": sb.password})
    assert r.status_code == 200
    yield s
    s.close()


@pytest.fixture
def get_rows(sb, http):
    """``get_rows(path, **query)``: the rows of a JSON listing (asserting its envelope)."""

    def get(path, **query):
        r = http.get(sb.url + path, params={"format": "json", **query})
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        body = r.json()
        result = body["ResultSet"]["Result"]
        assert body["ResultSet"]["totalRecords"] == str(len(result))
        return result

    return get
