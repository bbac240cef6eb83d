"""OAuth 2.0 web-server flow with google-auth-oauthlib's Flow and google-auth's refresh."""

from __future__ import annotations

import re
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import google.auth.transport.requests
import pytest
import requests
from google.auth.exceptions import RefreshError
from google_auth_oauthlib.flow import Flow

from calsync.emulator import Emulator

from .conftest import ALICE, FULL, READONLY, credentials_for, service_for

CALLBACK = "http://127.0.0.1:5000/oauth2callback"


@pytest.fixture(autouse=True)
def _oauthlib_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")


def new_flow(emu: Emulator, scopes: tuple[str, ...] = (READONLY,)) -> Flow:
    flow = Flow.from_client_config(emu.client_config([CALLBACK]), scopes=list(scopes), redirect_uri=CALLBACK)
    return flow


def consent(url: str, account: str, action: str = "allow") -> dict[str, list[str]]:
    """Load the consent page like a browser and submit its form; returns the callback's query."""
    session = requests.Session()
    page = session.get(url)
    assert page.status_code == 200 and "<form" in page.text
    found_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
    found_action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert found_id and found_action
    request_id, action_url = found_id.group(1), found_action.group(1)
    response = session.post(
        urlsplit(url)._replace(path=action_url, query="").geturl(),
        data={"request_id": request_id, "account": account, "action": action},
        allow_redirects=False,
    )
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(CALLBACK)
    return parse_qs(urlsplit(location).query)


def test_full_web_flow_with_pkce_then_api_call(emu: Emulator, alice: str) -> None:
    flow = new_flow(emu)
    url, state = flow.authorization_url(
        access_type="offline", prompt="consent", include_granted_scopes="true", login_hint=ALICE
    )
    page = requests.get(url).text
    assert ALICE in page and "checked" in page and "Allow" in page and "Deny" in page
    query = consent(url, ALICE)
    assert query["state"] == [state]
    # The exchange happens in another Flow that only has the stored verifier, as in a web app.
    second = new_flow(emu)
    second.code_verifier = flow.code_verifier
    token = second.fetch_token(code=query["code"][0])
    assert token["token_type"] == "Bearer" and token["refresh_token"] and 3500 < token["expires_in"] <= 3600
    creds = second.credentials
    assert creds.token_uri == emu.url + "/token"
    service = service_for(emu, {"access_token": creds.token, "refresh_token": creds.refresh_token, "scope": READONLY})
    assert service.calendars().get(calendarId="primary").execute()["id"] == ALICE
    assert emu.count("oauth.token") == 1


def test_code_is_single_use_and_needs_the_verifier(emu: Emulator, alice: str) -> None:
    emu.auto_approve = ALICE
    flow = new_flow(emu)
    url, _ = flow.authorization_url(access_type="offline")
    redirect = requests.get(url, allow_redirects=False)
    assert redirect.status_code == 302
    code = parse_qs(urlsplit(redirect.headers["Location"]).query)["code"][0]
    without = new_flow(emu)
    without.code_verifier = None
    without.autogenerate_code_verifier = False
    response = requests.post(
        emu.url + "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        auth=(flow.client_config["client_id"], flow.client_config["client_secret"]),
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_grant", "error_description": "Missing code verifier."}
    url, _ = flow.authorization_url(access_type="offline")
    code = parse_qs(urlsplit(requests.get(url, allow_redirects=False).headers["Location"]).query)["code"][0]
    flow.fetch_token(code=code)
    with pytest.raises(Exception, match="invalid_grant"):
        flow.fetch_token(code=code)


def test_deny_redirects_with_access_denied(emu: Emulator, alice: str) -> None:
    url, state = new_flow(emu).authorization_url()
    assert consent(url, ALICE, action="deny") == {"error": ["access_denied"], "state": [state]}


def test_bad_client_or_redirect_is_shown_never_redirected(emu: Emulator, alice: str) -> None:
    flow = new_flow(emu)
    url, _ = flow.authorization_url()
    wrong = url.replace("oauth2callback", "elsewhere")
    response = requests.get(wrong, allow_redirects=False)
    assert response.status_code == 400 and "redirect_uri_mismatch" in response.text
    response = requests.get(url.replace("client_id=", "client_id=x"), allow_redirects=False)
    assert response.status_code == 401 and "invalid_client" in response.text


def test_refresh_token_only_for_offline_and_only_on_first_consent(emu: Emulator, alice: str) -> None:
    emu.auto_approve = ALICE

    def run(**kwargs: Any) -> dict[str, Any]:
        flow = new_flow(emu)
        url, _ = flow.authorization_url(**kwargs)
        code = parse_qs(urlsplit(requests.get(url, allow_redirects=False).headers["Location"]).query)["code"][0]
        return cast("dict[str, Any]", flow.fetch_token(code=code))

    assert "refresh_token" not in run(access_type="online")
    assert "refresh_token" in run(access_type="offline")
    assert "refresh_token" not in run(access_type="offline")
    assert "refresh_token" in run(access_type="offline", prompt="consent")


def test_refresh_after_expiry_then_revocation(emu: Emulator, alice: str) -> None:
    tokens = emu.issue_tokens(alice)
    creds = credentials_for(emu, tokens)
    service = service_for(emu, tokens)
    emu.expire_access_tokens()
    expired = requests.get(
        emu.api_url + "calendar/v3/users/me/calendarList", headers={"Authorization": "Bearer " + tokens["access_token"]}
    )
    assert expired.status_code == 401 and expired.headers["WWW-Authenticate"].startswith("Bearer")
    assert expired.json()["error"]["errors"][0]["reason"] == "authError"
    # the client library refreshes on 401 by itself and the call succeeds
    assert service.calendarList().list().execute()["items"][0]["id"] == alice
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.token != tokens["access_token"]
    emu.revoke_grant(alice)
    with pytest.raises(RefreshError) as refused:
        creds.refresh(google.auth.transport.requests.Request())
    assert refused.value.retryable is False and "invalid_grant" in str(refused.value)
    assert creds.token is not None
    response = requests.get(
        emu.api_url + "calendar/v3/users/me/calendarList", headers={"Authorization": "Bearer " + creds.token}
    )
    assert response.status_code == 401


def test_token_endpoint_errors(emu: Emulator, alice: str) -> None:
    web = emu.client_config([CALLBACK])["web"]

    def post(**data: str) -> requests.Response:
        return requests.post(emu.url + "/token", data=data)

    assert post(grant_type="refresh_token", refresh_token="x", client_id="nope", client_secret="s").status_code == 401
    wrong = post(grant_type="refresh_token", refresh_token="x", client_id=web["client_id"], client_secret="bad")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    odd = post(grant_type="password", client_id=web["client_id"], client_secret=web["client_secret"])
    assert odd.status_code == 400 and odd.json()["error"] == "unsupported_grant_type"
    missing = post(client_id=web["client_id"], client_secret=web["client_secret"])
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    unknown = post(
        grant_type="refresh_token", refresh_token="nope", client_id=web["client_id"], client_secret=web["client_secret"]
    )
    assert unknown.json() == {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}


def test_refresh_accepts_scope_subset_only(emu: Emulator, alice: str) -> None:
    web = emu.client_config([CALLBACK])["web"]
    tokens = emu.issue_tokens(alice, scopes=(READONLY,))
    base = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": web["client_id"],
        "client_secret": web["client_secret"],
    }
    ok = requests.post(emu.url + "/token", data={**base, "scope": READONLY})
    assert ok.status_code == 200 and ok.json()["scope"] == READONLY and "refresh_token" not in ok.json()
    wider = requests.post(emu.url + "/token", data={**base, "scope": FULL})
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


def test_revoke_endpoint(emu: Emulator, alice: str) -> None:
    tokens = emu.issue_tokens(alice)
    assert requests.post(emu.url + "/revoke", params={"token": tokens["access_token"]}).json() == {}
    again = requests.post(emu.url + "/revoke", data={"token": tokens["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_token"
    assert emu.count("oauth.revoke") == 2


def test_api_refuses_missing_and_bogus_tokens(emu: Emulator, alice: str) -> None:
    url = emu.api_url + "calendar/v3/calendars/primary/events"
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = requests.get(url, headers=headers)
        assert response.status_code == 401 and "WWW-Authenticate" in response.headers
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"


def test_code_expires_after_60_seconds(emu: Emulator, alice: str) -> None:
    import datetime as dt

    emu.auto_approve = ALICE
    flow = new_flow(emu)
    url, _ = flow.authorization_url(access_type="offline")
    code = parse_qs(urlsplit(requests.get(url, allow_redirects=False).headers["Location"]).query)["code"][0]
    real = emu.clock
    emu.clock = lambda: real() + dt.timedelta(seconds=61)
    try:
        with pytest.raises(Exception, match="invalid_grant"):
            flow.fetch_token(code=code)
    finally:
        emu.clock = real


def test_access_token_ttl_is_honoured(emu: Emulator, alice: str) -> None:
    import datetime as dt

    emu.access_token_ttl = 30
    tokens = emu.issue_tokens(alice)
    assert tokens["expires_in"] == 30
    url = emu.api_url + "calendar/v3/users/me/calendarList"
    headers = {"Authorization": "Bearer " + tokens["access_token"]}
    assert requests.get(url, headers=headers).status_code == 200
    real = emu.clock
    emu.clock = lambda: real() + dt.timedelta(seconds=31)
    try:
        assert requests.get(url, headers=headers).status_code == 401
    finally:
        emu.clock = real


def test_userinfo_names_the_account(emu: Emulator, alice: str) -> None:
    tokens = emu.issue_tokens(alice)
    info = requests.get(
        emu.url + "/oauth2/v2/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}
    ).json()
    assert info["email"] == ALICE and info["verified_email"] is True
