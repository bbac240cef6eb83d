"""Consent over real HTTP: calsync on loopback, the emulator as Google, a real google-auth-oauthlib Flow."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from google.auth.transport.requests import Request
from sqlalchemy import func, select

from calsync import create_app
from calsync.accounts.connected import load_credentials
from calsync.google.calendar import GoogleCalendar
from calsync.runtime import Runtime
from calsync.store.models import Account

READONLY = "https://www.googleapis.com/auth/calendar.readonly"


# Driving the browser's side of the flow ----------------------------------------------------------
def start(browser: requests.Session, live: str) -> str:
    """GET /connect; returns the emulator's authorization URL calsync redirected to."""
    resp = browser.get(f"{live}/connect", allow_redirects=False)
    assert resp.status_code == 302, resp.text
    return resp.headers["Location"]


def consent(browser: requests.Session, auth_url: str, email: str, action: str = "allow") -> str:
    """Answer the emulator's consent form like a person would; returns the callback URL."""
    page = browser.get(auth_url, allow_redirects=False)
    assert page.status_code == 200, page.text
    request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
    action_url = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert request_id and action_url
    target = urlsplit(auth_url)._replace(path=action_url.group(1), query="").geturl()
    resp = browser.post(
        target,
        data={"request_id": request_id.group(1), "account": email, "other_account": email, "action": action},
        allow_redirects=False,
    )
    assert resp.status_code in (302, 303), resp.text
    return resp.headers["Location"]


def auto_consent(browser: requests.Session, emu: Any, auth_url: str, email: str) -> str:
    emu.auto_approve = email
    resp = browser.get(auth_url, allow_redirects=False)
    assert resp.status_code in (302, 303), resp.text
    return resp.headers["Location"]


def connect(emu: Any, live: str, email: str, browser: requests.Session | None = None) -> requests.Session:
    browser = browser or requests.Session()
    callback = auto_consent(browser, emu, start(browser, live), email)
    resp = browser.get(callback)
    assert resp.status_code == 200 and resp.url == f"{live}/connected", resp.text
    return browser


def csrf_of(browser: requests.Session, live: str) -> str:
    """The CSRF token of the disconnect form on this browser's /connected page."""
    page = browser.get(f"{live}/connected").text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def accounts(runtime: Runtime) -> list[Account]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Account).order_by(Account.id)))


# The happy paths ----------------------------------------------------------------------------------
def test_consent_form_allow_stores_encrypted_tokens_that_google_accepts(
    emu: Any, live_server: str, runtime: Runtime
) -> None:
    emu.create_user("bob@example.com")
    emu.create_user("carol@example.com")
    browser = requests.Session()
    generation = runtime.wakeup.generation()
    auth_url = start(browser, live_server)
    query = parse_qs(urlsplit(auth_url).query)
    assert auth_url.startswith(emu.url)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert query["include_granted_scopes"] == ["true"] and query["scope"] == [READONLY]
    assert query["redirect_uri"] == [f"{live_server}/oauth2callback"]

    callback = consent(browser, auth_url, "carol@example.com")
    assert callback.startswith(f"{live_server}/oauth2callback?")
    landed = browser.get(callback, allow_redirects=False)
    assert landed.status_code in (302, 303) and landed.headers["Location"].endswith("/connected")
    page = browser.get(f"{live_server}/connected")
    assert page.status_code == 200 and "carol@example.com" in page.text

    [account] = accounts(runtime)
    assert (account.email, account.status) == ("carol@example.com", "active")
    assert account.scopes == [READONLY]
    # A calendar-list sync is asked for and a worker was woken for it.
    assert account.list_requested > account.list_done and account.list_due_at is not None
    assert runtime.wakeup.generation() > generation
    # PKCE: the authorization carried a challenge, so the emulator's 200 on the exchange proves the verifier.
    [exchange] = [r for r in emu.requests if r.api_method == "oauth.token"]
    assert exchange.status == 200
    # The stored tokens work against Google, and the refresh token refreshes.
    creds = load_credentials(runtime, account)
    assert creds.refresh_token and creds.token
    assert (
        GoogleCalendar(creds, runtime.settings.calendar_api_endpoint).get_calendar("primary")["id"]
        == "carol@example.com"
    )
    old_access = creds.token
    creds.refresh(Request())
    assert creds.token != old_access


def test_auto_approved_consent_connects_in_one_pass(emu: Any, live_server: str, runtime: Runtime) -> None:
    connect(emu, live_server, "dave@example.com")
    [account] = accounts(runtime)
    assert account.email == "dave@example.com" and account.status == "active"
    assert emu.count("calendar.calendars.get") == 1


def test_connecting_again_updates_the_same_account(emu: Any, live_server: str, runtime: Runtime) -> None:
    connect(emu, live_server, "erin@example.com")
    [first] = accounts(runtime)
    first_creds = load_credentials(runtime, first)
    connect(emu, live_server, "erin@example.com")
    [second] = accounts(runtime)
    second_creds = load_credentials(runtime, second)
    assert second.id == first.id
    assert second_creds.token != first_creds.token
    assert second_creds.refresh_token and second_creds.refresh_token != first_creds.refresh_token
    assert second.list_requested > first.list_requested


# Each failure: a clear page and nothing stored ----------------------------------------------------
def test_declined_consent_shows_a_page_and_stores_nothing(emu: Any, live_server: str, runtime: Runtime) -> None:
    emu.create_user("frank@example.com")
    browser = requests.Session()
    callback = consent(browser, start(browser, live_server), "frank@example.com", action="deny")
    assert "error=access_denied" in callback
    resp = browser.get(callback)
    assert resp.status_code == 403 and "declined" in resp.text
    assert accounts(runtime) == []
    assert emu.count("oauth.token") == 0


def test_callback_without_state_in_the_session_is_refused(emu: Any, live_server: str, runtime: Runtime) -> None:
    emu.create_user("gina@example.com")
    browser = requests.Session()
    callback = auto_consent(browser, emu, start(browser, live_server), "gina@example.com")
    stranger = requests.Session()  # another browser: no state in its session
    resp = stranger.get(callback)
    assert resp.status_code == 400 and "expired or was already used" in resp.text
    assert accounts(runtime) == [] and emu.count("oauth.token") == 0


def test_callback_without_state_parameter_is_refused(emu: Any, live_server: str, runtime: Runtime) -> None:
    browser = requests.Session()
    callback = auto_consent(browser, emu, start(browser, live_server), "gina@example.com")
    without_state = re.sub(r"([?&])state=[^&]*&?", r"\1", callback)
    assert "state=" not in without_state
    resp = browser.get(without_state)
    assert resp.status_code == 400
    assert accounts(runtime) == [] and emu.count("oauth.token") == 0


def test_callback_with_a_wrong_state_is_refused(emu: Any, live_server: str, runtime: Runtime) -> None:
    browser = requests.Session()
    callback = auto_consent(browser, emu, start(browser, live_server), "hank@example.com")
    forged = re.sub(r"state=[^&]*", "state=forged-state", callback)
    resp = browser.get(forged)
    assert resp.status_code == 400 and "does not belong" in resp.text
    assert accounts(runtime) == [] and emu.count("oauth.token") == 0


def test_replayed_callback_shows_an_error_and_changes_nothing(emu: Any, live_server: str, runtime: Runtime) -> None:
    browser = requests.Session()
    callback = auto_consent(browser, emu, start(browser, live_server), "ivy@example.com")
    assert browser.get(callback).status_code == 200
    [before] = accounts(runtime)
    resp = browser.get(callback)
    assert resp.status_code == 400 and "already used" in resp.text
    [after] = accounts(runtime)
    assert (after.credentials, after.updated_at, after.list_requested) == (
        before.credentials,
        before.updated_at,
        before.list_requested,
    )
    assert emu.count("oauth.token") == 1


def test_reused_code_under_a_fresh_state_is_refused_by_google(emu: Any, live_server: str, runtime: Runtime) -> None:
    browser = requests.Session()
    first = auto_consent(browser, emu, start(browser, live_server), "jay@example.com")
    assert browser.get(first).status_code == 200
    [before] = accounts(runtime)
    fresh = parse_qs(urlsplit(start(browser, live_server)).query)["state"][0]
    reused = re.sub(r"state=[^&]*", f"state={fresh}", first)
    resp = browser.get(reused)
    assert resp.status_code == 400 and "invalid_grant" in resp.text
    [after] = accounts(runtime)
    assert after.credentials == before.credentials and after.updated_at == before.updated_at


def test_expired_code_is_refused(emu: Any, live_server: str, runtime: Runtime) -> None:
    browser = requests.Session()
    callback = auto_consent(browser, emu, start(browser, live_server), "kim@example.com")
    real_clock = emu.clock
    emu.clock = lambda: real_clock() + timedelta(minutes=10)
    try:
        resp = browser.get(callback)
    finally:
        emu.clock = real_clock
    assert resp.status_code == 400 and "invalid_grant" in resp.text
    assert accounts(runtime) == []


def test_redirect_uri_not_registered_is_an_error_page_at_google(emu: Any, settings: Any) -> None:
    moved = dataclasses.replace(settings, public_url="http://127.0.0.1:9/not-registered")
    with _app(moved) as client:
        resp = client.get("/connect")
        assert resp.status_code == 302
        page = requests.get(resp.headers["Location"], allow_redirects=False)
        assert page.status_code == 400 and "redirect_uri_mismatch" in page.text
        with _app.runtime_of(client).sessions() as session:
            assert session.scalar(select(func.count()).select_from(Account)) == 0


def test_unknown_client_is_an_error_page_at_google(emu: Any, settings: Any, tmp_path: Path) -> None:
    secrets = json.loads(Path(settings.google_client_secrets).read_text())
    secrets["web"]["client_id"] = "unknown-client.apps.googleusercontent.com"
    path = tmp_path / "unknown_client.json"
    path.write_text(json.dumps(secrets))
    with _app(dataclasses.replace(settings, google_client_secrets=path)) as client:
        resp = client.get("/connect")
    assert resp.status_code == 302
    page = requests.get(resp.headers["Location"], allow_redirects=False)
    assert page.status_code == 401 and "invalid_client" in page.text


@pytest.mark.parametrize("problem", ["unset", "missing", "broken"])
def test_consent_without_usable_client_secrets_is_a_503_page_naming_the_variable(
    problem: str, settings: Any, tmp_path: Path
) -> None:
    path: Path | None = tmp_path / "nowhere.json"
    if problem == "unset":
        path = None
    elif problem == "broken":
        path = tmp_path / "broken.json"
        path.write_text("{not json")
    with _app(dataclasses.replace(settings, google_client_secrets=path)) as client:
        resp = client.get("/connect")
        assert resp.status_code == 503
        assert "CALSYNC_GOOGLE_CLIENT_SECRETS" in resp.get_data(as_text=True)
        with client.session_transaction() as session:
            assert "oauth_pending" not in session


def test_pages_are_plain_accessible_html(emu: Any, live_server: str) -> None:
    browser = connect(emu, live_server, "lee@example.com")
    page = browser.get(f"{live_server}/connected").text
    assert '<html lang="en">' in page and "<title>" in page and 'role="status"' in page
    assert '<form method="post" action="/disconnect">' in page
    assert re.search(r'<input type="hidden" name="csrf_token" value="[\w-]{40,}">', page)


# Disconnecting from the browser ------------------------------------------------------------------
def test_end_user_disconnects_own_account_from_the_connected_page(emu: Any, live_server: str, runtime: Runtime) -> None:
    browser = connect(emu, live_server, "mia@example.com")
    [account] = accounts(runtime)
    refresh_token = load_credentials(runtime, account).refresh_token
    token = csrf_of(browser, live_server)
    resp = browser.post(f"{live_server}/disconnect", data={"account": "mia@example.com", "csrf_token": token})
    assert resp.status_code == 200 and "disconnected" in resp.text.lower()
    [account] = accounts(runtime)
    assert account.status == "disconnected"
    assert runtime.cipher.decrypt_str(account.credentials) == "{}"
    refused = requests.post(
        f"{emu.url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": load_credentials_config(runtime)[0],
            "client_secret": load_credentials_config(runtime)[1],
        },
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_disconnect_of_someone_elses_account_is_forbidden(emu: Any, live_server: str, runtime: Runtime) -> None:
    connect(emu, live_server, "ned@example.com")
    intruder = connect(emu, live_server, "oli@example.com")
    token = csrf_of(intruder, live_server)
    resp = intruder.post(f"{live_server}/disconnect", data={"account": "ned@example.com", "csrf_token": token})
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden"
    anonymous = requests.post(f"{live_server}/disconnect", json={"account": "ned@example.com"})
    assert anonymous.status_code == 403
    assert {a.email: a.status for a in accounts(runtime)} == {"ned@example.com": "active", "oli@example.com": "active"}


def test_disconnect_from_a_form_without_this_sessions_csrf_token_is_refused(
    emu: Any, live_server: str, runtime: Runtime
) -> None:
    """Another site's page can make the user's browser post the form (with the user's cookie); it
    cannot read the token, so its post changes nothing."""
    browser = connect(emu, live_server, "quinn@example.com")
    other = connect(emu, live_server, "quinn@example.com")  # another browser session has another token
    for extra in ({}, {"csrf_token": ""}, {"csrf_token": "x" * 43}, None):
        extra = extra if extra is not None else {"csrf_token": csrf_of(other, live_server)}
        resp = browser.post(
            f"{live_server}/disconnect",
            data={"account": "quinn@example.com", **extra},
            headers={"Origin": "https://evil.example"},
        )
        assert resp.status_code == 403 and resp.json()["error"] == "csrf_failed", extra
    as_json = browser.post(f"{live_server}/disconnect", json={"account": "quinn@example.com"})
    assert as_json.status_code == 403 and as_json.json()["error"] == "csrf_failed"
    assert [a.status for a in accounts(runtime)] == ["active"] and emu.count("oauth.revoke") == 0

    token = csrf_of(browser, live_server)
    assert token != csrf_of(other, live_server)
    with_header = browser.post(
        f"{live_server}/disconnect", json={"account": "quinn@example.com"}, headers={"X-CSRF-Token": token}
    )
    assert with_header.status_code == 200 and [a.status for a in accounts(runtime)] == ["disconnected"]


def test_consent_and_disconnect_pages_cannot_be_framed(emu: Any, live_server: str, runtime: Runtime) -> None:
    browser = connect(emu, live_server, "rae@example.com")
    answers = [
        browser.get(f"{live_server}/connect", allow_redirects=False),
        browser.get(f"{live_server}/connected"),
        browser.get(f"{live_server}/connect/not-a-token"),
        browser.get(f"{live_server}/oauth2callback", params={"state": "x", "code": "y"}),
        browser.post(f"{live_server}/disconnect", json={"account": "nobody@example.com"}),
    ]
    assert [r.status_code for r in answers] == [302, 200, 404, 400, 403]
    for resp in answers:
        assert_not_framed(resp)
    done = browser.post(
        f"{live_server}/disconnect", data={"account": "rae@example.com", "csrf_token": csrf_of(browser, live_server)}
    )
    assert done.status_code == 200 and "Disconnected" in done.text
    assert_not_framed(done)


def assert_not_framed(resp: requests.Response) -> None:
    assert resp.headers.get("X-Frame-Options") == "DENY", resp.url
    assert "frame-ancestors 'none'" in resp.headers.get("Content-Security-Policy", ""), resp.url
    assert resp.headers.get("Referrer-Policy") == "no-referrer", resp.url
    assert resp.headers.get("Cache-Control") == "no-store", resp.url


def test_operator_disconnects_with_the_bearer_token(
    emu: Any, live_server: str, runtime: Runtime, api_headers: dict[str, str]
) -> None:
    connect(emu, live_server, "pat@example.com")
    resp = requests.post(f"{live_server}/disconnect", json={"account": "pat@example.com"}, headers=api_headers)
    assert resp.status_code == 200
    assert resp.json()["account"] == "pat@example.com" and resp.json()["status"] == "disconnected"
    assert resp.json()["revoked"] is True
    unknown = requests.post(f"{live_server}/disconnect", json={"account": "nobody@example.com"}, headers=api_headers)
    assert unknown.status_code == 404 and set(unknown.json()) == {"error", "message"}
    missing = requests.post(f"{live_server}/disconnect", json={}, headers=api_headers)
    assert missing.status_code == 400


# Helpers -------------------------------------------------------------------------------------------
def load_credentials_config(runtime: Runtime) -> tuple[str, str]:
    web = json.loads(Path(runtime.settings.google_client_secrets).read_text())["web"]  # type: ignore[arg-type]
    return web["client_id"], web["client_secret"]


class _app:
    """A second calsync app on other settings, served through Flask's test client."""

    def __init__(self, settings: Any) -> None:
        self.runtime = Runtime.create(settings)

    def __enter__(self) -> Any:
        app = create_app(runtime=self.runtime)
        app.config["TESTING"] = True
        return app.test_client()

    def __exit__(self, *exc: object) -> None:
        self.runtime.close()

    @staticmethod
    def runtime_of(client: Any) -> Runtime:
        return client.application.extensions["calsync"]  # type: ignore[no-any-return]
