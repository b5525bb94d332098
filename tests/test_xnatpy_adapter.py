"""The xnatpy connection (datalad_fmrif/xnat/xnatpy_adapter.py): xnatpy's
session over a requests session of ours, without touching the process."""

from __future__ import annotations

import os

import requests

from datalad_fmrif.credentials import Credential, Rejections
from datalad_fmrif.xnat.session import XnatSession
from datalad_fmrif.xnat.http import POOL_SIZE, CaBundleAdapter, NoRedirects


class _Watched(dict):
    """os.environ, with a record of every change."""

    def __init__(self, real):
        super().__init__(real)
        self.changes = []

    def __setitem__(self, key, value):
        self.changes.append(key)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.changes.append(key)
        super().__delitem__(key)


def test_connecting_changes_no_environment(sandbox, tmp_path, monkeypatch):
    """A configured CA bundle reaches xnatpy's session without
    REQUESTS_CA_BUNDLE being set for the process (other threads would see
    it), and xnatpy's connection is ours: no redirects, the bundle pinned,
    a connection per job."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not needed for http\n")
    watched = _Watched(os.environ)
    monkeypatch.setattr(os, "environ", watched)
    cred = Credential("sandbox", sandbox.user, sandbox.password, "environment")
    with XnatSession(sandbox.url, cred, verify=str(bundle),
                     rejections=Rejections(tmp_path / "rejected")) as xnat:
        http = xnat.http
        assert xnat.get_json("/data/projects")  # the connection works
    assert watched.changes == []
    assert isinstance(http, NoRedirects)
    https = http.get_adapter("https://example.org")
    assert isinstance(https, CaBundleAdapter) and https.bundle == str(bundle)
    assert https._pool_maxsize == POOL_SIZE
    assert isinstance(http.get_adapter("http://example.org"), requests.adapters.HTTPAdapter)


def test_no_keepalive_pings_to_die_on_the_terminal(sandbox, tmp_path):
    """xnatpy's keep-alive thread would ping XNAT every few minutes and print
    a traceback when the server has gone away; xnatpy consults its
    ``keepalive`` before each ping, and ours is off (an expired session
    costs one fresh login instead)."""
    cred = Credential("sandbox", sandbox.user, sandbox.password, "environment")
    with XnatSession(sandbox.url, cred,
                     rejections=Rejections(tmp_path / "rejected")) as xnat:
        assert xnat.get_json("/data/projects")
        assert xnat.xnatpy.keepalive is False


def test_xnatpy_is_made_only_when_asked_for(sandbox, tmp_path):
    """Requests need no xnatpy: its session (and its set-up requests, GET /
    and /data/auth) comes when something asks for its objects or for the
    XNAT version, over the same connection, and is made again after a
    fresh login."""
    cred = Credential("sandbox", sandbox.user, sandbox.password, "environment")
    since = len(sandbox.requests)
    with XnatSession(sandbox.url, cred,
                     rejections=Rejections(tmp_path / "rejected")) as xnat:
        assert xnat.get_json("/data/projects")
        assert xnat.xnat_version == "1.8.10"  # read without xnatpy, once
        assert xnat.xnat_version == "1.8.10"
        assert [r.path for r in sandbox.requests[since:]] == [
            "/data/services/auth", "/data/auth", "/data/projects",
            "/xapi/siteConfig/buildInfo"]
        assert xnat.xnatpy.interface is xnat.http
        assert "17-M-0181" in xnat.xnatpy.projects  # xnatpy's own objects work
        first = xnat.xnatpy
        xnat._reauthenticate(xnat._generation)
        assert xnat.xnatpy is not first and xnat.xnatpy.interface is xnat.http
    assert sandbox.requests[-1].path == "/data/JSESSION"  # logged out
