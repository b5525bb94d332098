"""Authentication providers, XNAT's lockout and its cap on sessions.

NIH users log in to FMRIF's XNAT through a provider other than the local
database (LDAP); how XNAT picks the provider decides whether a REST login of
such a user works at all.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from datalad_fmrif.sandbox import Sandbox




@pytest.fixture
def nih():
    """A site with the local database and an LDAP provider ``nihldap``;
    ``nihuser`` is an LDAP user who never logged in on the web page."""
    with Sandbox(users={"demo": "demo-password", "nihuser": "ldap-password"},
                 auth_providers={"nihldap": "ldap"},
                 user_providers={"nihuser": "nihldap"}) as box:
        yield box


def _login(sb, **fields):
    return requests.put(sb.url + "/data/services/auth", data=fields)


def test_provider_less_login_of_a_new_ldap_user_is_cached_as_localdb(nih):
    """follows XnatProviderManager.retrieveAuthMethod and AuthenticationRestlet.java
    (xnat-web 1.8.10.1): no user record -> localdb, cached per user name in a
    static map, so a later successful provider login does not fix it."""
    assert not nih.has_user_record("nihuser")
    assert _login(nih, username="nihuser", password="ldap-password").status_code == 401
    # the web page's login with the provider chosen works and makes the record
    web = requests.post(nih.url + "/login", allow_redirects=False,
                        data={"username": "nihuser", "password": "ldap-password",
                              "login_method": "nihldap"})
    assert web.status_code == 302 and web.headers["Location"] == "/"
    assert web.cookies.get("JSESSIONID")
    assert nih.has_user_record("nihuser")
    # ... but the cached choice (localdb) stays until Tomcat restarts
    assert _login(nih, username="nihuser", password="ldap-password").status_code == 401
    nih.restart()
    assert _login(nih, username="nihuser", password="ldap-password").status_code == 200


def test_web_login_first_then_provider_less_rest_login_works(nih):
    """follows XnatProviderManager.retrieveAuthMethod (xnat-web 1.8.10.1): a
    user with a record gets its provider's auth method."""
    web = requests.post(nih.url + "/login", allow_redirects=False,
                        data={"username": "nihuser", "password": "ldap-password",
                              "login_method": "nihldap"})
    assert web.headers["Location"] == "/"
    assert _login(nih, username="nihuser", password="ldap-password").status_code == 200


def test_authenticator_id_and_provider_fields(nih):
    """follows AuthenticationRestlet.java (xnat-web 1.8.10.1): authenticatorId
    names a provider ID (unknown -> 400), provider/login_method an auth method."""
    r = _login(nih, username="nihuser", password="ldap-password", authenticatorId="nihldap")
    assert r.status_code == 200 and re.fullmatch(r"[0-9A-F]{32}", r.text)
    assert _login(nih, username="nihuser", password="ldap-password",
                  provider="ldap").status_code == 200
    assert _login(nih, username="nihuser", password="ldap-password",
                  login_method="ldap").status_code == 200
    r = _login(nih, username="nihuser", password="ldap-password", authenticatorId="nosuch")
    assert r.status_code == 400 and "No authentication provider identified by id nosuch" in r.text
    # the wrong provider for the user, or a wrong password: 401
    assert _login(nih, username="nihuser", password="ldap-password",
                  authenticatorId="localdb").status_code == 401
    assert _login(nih, username="nihuser", password="wrong",
                  authenticatorId="nihldap").status_code == 401
    # local users still log in without (and with) naming their provider
    assert _login(nih, username="demo", password="demo-password").status_code == 200
    assert _login(nih, username="demo", password="demo-password",
                  authenticatorId="localdb").status_code == 200


def test_two_providers_with_one_auth_method_need_the_id():
    """follows AuthenticationRestlet.java (xnat-web 1.8.10.1): several
    providers with the same auth method -> 400 asking for authenticatorId."""
    with Sandbox(users={"demo": "pw", "u": "lp"}, auth_providers={"a": "ldap", "b": "ldap"},
                 user_providers={"u": "b"}) as sb:
        r = _login(sb, username="u", password="lp", provider="ldap")
        assert r.status_code == 400 and "authenticatorId" in r.text
        assert _login(sb, username="u", password="lp", authenticatorId="b").status_code == 200


def test_basic_auth_names_the_provider(nih):
    """follows XnatBasicAuthenticationFilter.java (xnat-web 1.8.10.1):
    ``providerID/username`` chooses the provider; without it, the lookup."""
    r = requests.get(nih.url + "/data/auth", auth=("nihldap/nihuser", "ldap-password"))
    assert r.status_code == 200 and r.text == "User 'nihuser' is logged in"
    # the first login made the record, but a fresh name lookup would be needed
    nih.restart()
    assert requests.get(nih.url + "/data/auth", auth=("nihuser", "ldap-password")).status_code == 200
    assert requests.get(nih.url + "/data/auth", auth=("localdb/nihuser", "ldap-password")).status_code == 401


def test_alias_tokens_always_use_the_token_method(nih):
    """follows XnatProviderManager.retrieveAuthMethod (xnat-web 1.8.10.1):
    a UUID user name without a record is an alias token."""
    token = requests.get(nih.url + "/data/services/tokens/issue",
                         auth=("nihldap/nihuser", "ldap-password")).json()
    r = _login(nih, username=token["alias"], password=token["secret"])
    assert r.status_code == 200
    r = requests.get(nih.url + "/data/auth", cookies={"JSESSIONID": r.text})
    assert r.text == "User 'nihuser' is logged in"


def test_login_page_lists_providers(nih, sb):
    """follows xnat-templates/screens/Login.vm (xnat-web 1.8.10.1): a select
    ``login_method`` with one option per provider ID when there is more than
    one, else a hidden field."""
    for path in ("/", "/app/template/Login.vm"):
        page = requests.get(nih.url + path).text
        assert '<select id="login_method"' in page
        assert re.findall(r'<option value="([^"]+)"', page) == ["localdb", "nihldap"]
    page = requests.get(sb.url + "/app/template/Login.vm").text
    assert "<select" not in page
    assert 'type="hidden" id="login_method" name="login_method" value="localdb"' in page


def test_lockout_defaults_and_duration():
    """follows ResetFailedLogins.java and XnatAuthenticationFilter.logFailedAttempt
    (xnat-web 1.8.10.1): maxFailedLogins (default 20) failures lock the
    account for maxFailedLoginsLockoutDuration (default 1 hour)."""
    with Sandbox(users={"alice": "right"}) as sb:
        for _ in range(19):
            assert _login(sb, username="alice", password="wrong").status_code == 401
        assert not sb.locked("alice")
        assert _login(sb, username="alice", password="wrong").status_code == 401
        assert sb.locked("alice")
        assert _login(sb, username="alice", password="right").status_code == 401
    with Sandbox(users={"alice": "right"}, lockout_after=2, lockout_duration=0.3) as sb:
        for _ in range(2):
            _login(sb, username="alice", password="wrong")
        assert _login(sb, username="alice", password="right").status_code == 401
        time.sleep(0.4)
        assert _login(sb, username="alice", password="right").status_code == 200


def test_concurrent_sessions_cap_answers_401():
    """follows SecurityConfig.java (xnat-web 1.8.10.1): concurrentMaxSessions
    with exceptionIfMaximumExceeded -> a further login is refused (401)."""
    with Sandbox(users={"alice": "right"}, max_sessions=2) as sb:
        first = _login(sb, username="alice", password="right")
        assert _login(sb, username="alice", password="right").status_code == 200
        assert _login(sb, username="alice", password="right").status_code == 401
        assert requests.get(sb.url + "/data/auth", auth=("alice", "right")).status_code == 401
        # logging out frees a place
        requests.delete(sb.url + "/data/JSESSION", cookies={"JSESSIONID": first.text})
        assert _login(sb, username="alice", password="right").status_code == 200
