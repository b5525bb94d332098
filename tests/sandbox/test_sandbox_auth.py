"""Login flows of the sandbox: form, basic, cookie, expiry, lockout, alias tokens."""

from __future__ import annotations

import time

import requests

from datalad_fmrif.sandbox import Sandbox


def test_login_page_needs_no_auth(sb):
    r = requests.get(sb.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]
    assert sb.requests[-1].auth == "none"


def test_data_needs_auth(sb):
    r = requests.get(sb.url + "/data/projects", params={"format": "json"})
    assert r.status_code == 401
    assert requests.get(sb.url + "/xapi/siteConfig/buildInfo").status_code == 401
    assert sb.requests[-1].status == 401


def test_form_login_sets_cookie_and_returns_jsessionid(sb):
    s = requests.Session()
    r = s.put(sb.url + "/data/services/auth", data={"username": sb.user, "password": sb.password})
    assert r.status_code == 200
    assert r.text == s.cookies["JSESSIONID"]
    assert "HttpOnly" in r.headers["Set-Cookie"]
    exp = s.cookies["SESSION_EXPIRATION_TIME"]
    assert exp.startswith('"') and exp.endswith(',900000"')
    r = s.get(sb.url + "/data/auth")
    assert r.text == f"User '{sb.user}' is logged in"
    assert s.get(sb.url + "/data/JSESSION").text == s.cookies["JSESSIONID"]
    assert [x.auth for x in sb.requests] == ["form", "cookie", "cookie"]
    assert s.delete(sb.url + "/data/JSESSION").status_code == 200
    s.cookies.clear()
    s.cookies.set("JSESSIONID", r.request.headers["Cookie"].split("JSESSIONID=")[1].split(";")[0])
    assert s.get(sb.url + "/data/auth").status_code == 401


def test_bad_form_login(sb):
    r = requests.put(sb.url + "/data/services/auth", data={"username": sb.user, "password": "nope"})
    assert r.status_code == 401
    assert "<h3>Login attempt failed. Please try again.</h3>" in r.text
    assert sb.failed_logins(sb.user) == 1 and not sb.locked(sb.user)


def test_basic_auth_opens_a_session_per_request(sb):
    s = requests.Session()
    s.auth = (sb.user, sb.password)
    a = s.get(sb.url + "/data/auth")
    b = s.get(sb.url + "/data/auth")
    assert a.status_code == b.status_code == 200
    assert a.cookies["JSESSIONID"] != b.cookies["JSESSIONID"]
    assert {x.auth for x in sb.requests} == {"basic"}
    # the cookie of a basic-auth request is a full session
    c = requests.get(sb.url + "/data/auth", cookies={"JSESSIONID": a.cookies["JSESSIONID"]})
    assert c.status_code == 200 and sb.requests[-1].auth == "cookie"
    assert requests.get(sb.url + "/data/auth", auth=(sb.user, "bad")).status_code == 401


def test_idle_expiry_and_refresh():
    with Sandbox(session_timeout=0.5) as sb:
        s = requests.Session()
        s.put(sb.url + "/data/services/auth", data={"username": sb.user, "password": sb.password})
        for _ in range(4):  # activity keeps the session alive
            time.sleep(0.2)
            assert s.get(sb.url + "/data/JSESSION").status_code == 200
        time.sleep(0.8)
        assert s.get(sb.url + "/data/auth").status_code == 401


def test_expire_sessions(sb, http):
    assert http.get(sb.url + "/data/auth").status_code == 200
    sb.expire_sessions()
    assert http.get(sb.url + "/data/auth").status_code == 401


def test_lockout():
    with Sandbox(lockout_after=3, users={"alice": "right", "bob": "pw"}) as sb:
        assert sb.user == "alice" and sb.password == "right"
        for i in range(3):
            r = requests.put(sb.url + "/data/services/auth", data={"username": "alice", "password": "wrong"})
            assert r.status_code == 401
        assert sb.failed_logins("alice") == 3 and sb.locked("alice")
        # the right password no longer works, by form or basic auth
        r = requests.put(sb.url + "/data/services/auth", data={"username": "alice", "password": "right"})
        assert r.status_code == 401
        assert requests.get(sb.url + "/data/auth", auth=("alice", "right")).status_code == 401
        assert sb.failed_logins("alice") == 5
        # other users are not affected
        assert requests.get(sb.url + "/data/auth", auth=("bob", "pw")).status_code == 200
        assert not sb.locked("bob") and sb.failed_logins("bob") == 0


def test_tokens(http, sb):
    r = http.get(sb.url + "/data/services/tokens/issue")
    assert r.status_code == 200
    tok = r.json()
    assert set(tok) >= {"alias", "secret", "xdatUserId", "estimatedExpirationTime"}
    assert tok["xdatUserId"] == sb.user
    hours = (tok["estimatedExpirationTime"] / 1000 - time.time()) / 3600
    assert 47.9 < hours <= 48
    v = http.get(f"{sb.url}/data/services/tokens/validate/{tok['alias']}/{tok['secret']}")
    assert v.status_code == 200 and v.json()["valid"] == sb.user
    assert http.get(f"{sb.url}/data/services/tokens/validate/{tok['alias']}/wrong").status_code == 404

    # alias login: basic auth on GET / (as xnatpy does) and the form login
    r = requests.get(sb.url, auth=(tok["alias"], tok["secret"]))
    assert r.status_code == 200 and r.cookies.get("JSESSIONID")
    r = requests.put(sb.url + "/data/services/auth", data={"username": tok["alias"], "password": tok["secret"]})
    assert r.status_code == 200
    r = requests.get(sb.url + "/data/auth", cookies={"JSESSIONID": r.text})
    assert r.text == f"User '{sb.user}' is logged in"

    # expired tokens are refused and count against the alias, not the user
    sb.expire_tokens()
    r = requests.put(sb.url + "/data/services/auth", data={"username": tok["alias"], "password": tok["secret"]})
    assert r.status_code == 401
    assert sb.failed_logins(tok["alias"]) == 1 and sb.failed_logins(sb.user) == 0
    assert http.get(f"{sb.url}/data/services/tokens/validate/{tok['alias']}/{tok['secret']}").status_code == 404


def test_token_lifetime():
    with Sandbox(token_lifetime=0.3) as sb:
        tok = requests.get(sb.url + "/data/services/tokens/issue", auth=(sb.user, sb.password)).json()
        assert requests.get(sb.url, auth=(tok["alias"], tok["secret"])).status_code == 200
        time.sleep(0.4)
        assert requests.get(sb.url, auth=(tok["alias"], tok["secret"])).status_code == 401
