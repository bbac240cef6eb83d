"""Connect sessions over real HTTP: an app makes a link for its user, the user consents on the
emulator's page, and comes back to the app with the ref, the outcome and the account."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.models import Account, Change, ConnectSession
from calsync.work.worker import Worker
from tests.conftest import API_TOKEN
from tests.web.test_consent import consent

APP = "https://app.example.test/after"
ANN = "ann@example.com"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, return_urls=(APP,))


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A clock that moves only when told, starting now, so a link can be let expire."""
    rt = Runtime.create(settings, clock=FrozenClock(datetime.now(UTC)))
    yield rt
    rt.close()


@pytest.fixture
def api(live_server: str) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {API_TOKEN}"
        yield session


def new_link(api: requests.Session, live: str, ref: str = "user-42", **extra: Any) -> str:
    resp = api.post(f"{live}/api/connect-sessions", json={"ref": ref, "return_to": APP + "?tab=calendar", **extra})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["url"])


def follow_link(browser: requests.Session, link: str, email: str, action: str = "allow") -> requests.Response:
    """Open the link, answer the emulator's consent page, and take calsync's last answer (not followed)."""
    opened = browser.get(link, allow_redirects=False)
    assert opened.status_code == 302, opened.text
    callback = consent(browser, opened.headers["Location"], email, action=action)
    return browser.get(callback, allow_redirects=False)


def returned(resp: requests.Response) -> dict[str, str]:
    """The query the user is sent back to the app with (303 to `return_to`)."""
    assert resp.status_code == 303, resp.text
    location = resp.headers["Location"]
    assert location.startswith(APP + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def count(runtime: Runtime, model: type[Any]) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def feed(api: requests.Session, live: str, **params: Any) -> list[dict[str, Any]]:
    return list(api.get(f"{live}/api/changes", params=params).json()["changes"])


# The whole flow ---------------------------------------------------------------------------------
def test_a_link_connects_the_account_for_the_ref_and_returns_to_the_app(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user("someone@example.com")
    emu.create_user(ANN)
    before = runtime.clock.now()
    resp = api.post(
        f"{live_server}/api/connect-sessions",
        json={"ref": "user-42", "return_to": APP + "?tab=calendar", "login_hint": ANN},
    )
    assert resp.status_code == 201 and set(resp.json()) == {"url", "expires_at"}
    link = resp.json()["url"]
    token = link.removeprefix(f"{live_server}/connect/")
    assert token != link and len(token) >= 40
    expires_at = datetime.fromisoformat(resp.json()["expires_at"])
    assert timedelta(0) <= before + timedelta(minutes=15) - expires_at < timedelta(milliseconds=1)
    with runtime.sessions() as session:
        [stored] = session.scalars(select(ConnectSession)).all()
        assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()  # only the hash is kept
        assert token not in repr(vars(stored)) and stored.used_at is None

    browser = requests.Session()
    assert browser.head(link).status_code == 200  # a link checker's look leaves it unused
    opened = browser.get(link, allow_redirects=False)
    assert opened.status_code == 302 and opened.headers["Location"].startswith(emu.url)
    asked = parse_qs(urlsplit(opened.headers["Location"]).query)
    assert asked["login_hint"] == [ANN] and asked["access_type"] == ["offline"]
    assert asked["code_challenge_method"] == ["S256"] and asked["state"][0]
    page = browser.get(opened.headers["Location"])
    assert 'value="ann@example.com" checked' in page.text  # the hint chose the account on Google's page
    callback = consent(browser, opened.headers["Location"], ANN)
    back = browser.get(callback, allow_redirects=False)
    assert back.headers["Location"] == f"{APP}?tab=calendar&ref=user-42&status=connected&account=ann%40example.com"
    assert returned(back) == {"tab": "calendar", "ref": "user-42", "status": "connected", "account": ANN}

    [account] = api.get(f"{live_server}/api/accounts", params={"ref": "user-42"}).json()
    assert account == {
        "email": ANN,
        "ref": "user-42",
        "status": "active",
        "connected_at": account["connected_at"],
        "calendars": [],
    }
    assert account["connected_at"].endswith("Z")
    assert api.get(f"{live_server}/api/accounts", params={"ref": "someone-else"}).json() == []
    [connected] = feed(api, live_server)
    assert (connected["type"], connected["account"], connected["ref"]) == ("account.connected", ANN, "user-42")
    assert (connected["calendar_id"], connected["event_id"], connected["change"]) == (None, None, None)
    with runtime.sessions() as session:
        assert session.scalars(select(ConnectSession.outcome)).one() == "connected"

    Worker(runtime, threads=1).run_burst()  # the calendar list and the first sync
    [calendar] = api.get(f"{live_server}/api/calendars").json()
    assert (calendar["calendar_id"], calendar["ref"]) == (ANN, "user-42")
    [account] = api.get(f"{live_server}/api/accounts").json()
    assert account["calendars"] == [
        {
            "calendar_id": ANN,
            "summary": ANN,
            "sync_state": "synced",
            "last_synced_at": account["calendars"][0]["last_synced_at"],
        }
    ]
    assert {row["ref"] for row in feed(api, live_server)} == {"user-42"}


def test_connecting_again_with_another_ref_moves_the_account_and_keeps_its_history(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    assert returned(follow_link(requests.Session(), new_link(api, live_server, "user-1"), ANN))["status"] == "connected"
    Worker(runtime, threads=1).run_burst()
    first = feed(api, live_server)
    assert [r["type"] for r in first] == ["account.connected", "calendar.added", "calendar.synced"]

    assert returned(follow_link(requests.Session(), new_link(api, live_server, "user-2"), ANN)) == {
        "tab": "calendar",
        "ref": "user-2",
        "status": "connected",
        "account": ANN,
    }
    rows = feed(api, live_server)
    assert rows[:3] == first  # the history stays, under the ref it was written with
    assert [(r["type"], r["ref"]) for r in rows[3:]] == [("account.connected", "user-2")]
    assert count(runtime, Account) == 1
    assert api.get(f"{live_server}/api/accounts", params={"ref": "user-1"}).json() == []
    assert [a["email"] for a in api.get(f"{live_server}/api/accounts", params={"ref": "user-2"}).json()] == [ANN]
    assert api.get(f"{live_server}/api/calendars").json()[0]["ref"] == "user-2"


def test_disconnect_with_a_ref_touches_only_that_users_account(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    returned(follow_link(requests.Session(), new_link(api, live_server, "user-42"), ANN))
    wrong = api.post(f"{live_server}/api/accounts/{ANN}/disconnect", params={"ref": "user-7"})
    assert wrong.status_code == 404 and wrong.json()["error"] == "not_found"
    assert api.get(f"{live_server}/api/accounts").json()[0]["status"] == "active"
    right = api.post(f"{live_server}/api/accounts/{ANN}/disconnect", params={"ref": "user-42"})
    assert right.status_code == 200 and right.json()["status"] == "disconnected"
    assert [(r["type"], r["ref"]) for r in feed(api, live_server)] == [
        ("account.connected", "user-42"),
        ("account.disconnected", "user-42"),
    ]
    assert api.post(f"{live_server}/api/accounts/{ANN}/disconnect").status_code == 200  # idempotent
    assert len(feed(api, live_server)) == 2
    assert api.get(f"{live_server}/api/accounts", params={"ref": ""}).status_code == 400


# Every other end: the outcome the app is told, and nothing stored ----------------------------------
def test_denied_consent_returns_denied_and_stores_no_account(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    back = follow_link(requests.Session(), new_link(api, live_server), ANN, action="deny")
    assert returned(back) == {"tab": "calendar", "ref": "user-42", "status": "denied", "error": "access_denied"}
    assert count(runtime, Account) == 0 and count(runtime, Change) == 0
    assert emu.count("oauth.token") == 0
    with runtime.sessions() as session:
        assert session.scalars(select(ConnectSession.outcome)).one() == "denied"


def test_an_answer_from_another_consent_returns_an_error(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    browser = requests.Session()
    assert browser.get(new_link(api, live_server), allow_redirects=False).status_code == 302
    back = browser.get(
        f"{live_server}/oauth2callback", params={"state": "forged", "code": "stolen"}, allow_redirects=False
    )
    assert returned(back) == {"tab": "calendar", "ref": "user-42", "status": "error", "error": "state_mismatch"}
    assert count(runtime, Account) == 0 and emu.count("oauth.token") == 0


def test_an_expired_link_says_so_and_changes_nothing(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    link = new_link(api, live_server)
    runtime.clock.advance(minutes=15)  # type: ignore[attr-defined]
    resp = requests.get(link, allow_redirects=False)
    assert resp.status_code == 410 and "This link has expired" in resp.text
    assert "Nothing was changed" in resp.text
    with runtime.sessions() as session:
        stored = session.scalars(select(ConnectSession)).one()
        assert (stored.used_at, stored.outcome) == (None, None)
    assert count(runtime, Account) == 0 and emu.count("oauth.authorize") == 0


def test_a_used_link_says_so_and_changes_nothing(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    link = new_link(api, live_server)
    returned(follow_link(requests.Session(), link, ANN))
    with runtime.sessions() as session:
        first = session.scalars(select(ConnectSession)).one()
        account = session.scalars(select(Account)).one()
    changes = count(runtime, Change)
    runtime.clock.advance(seconds=5)  # type: ignore[attr-defined]
    for browser in (requests.Session(), requests.Session()):
        resp = browser.get(link, allow_redirects=False)
        assert resp.status_code == 410 and "already used" in resp.text
    with runtime.sessions() as session:
        again = session.scalars(select(ConnectSession)).one()
        assert (again.used_at, again.outcome) == (first.used_at, "connected")
        assert session.scalars(select(Account)).one().updated_at == account.updated_at
    assert count(runtime, Change) == changes
    unknown = requests.get(f"{live_server}/connect/not-a-token", allow_redirects=False)
    assert unknown.status_code == 404 and "does not work" in unknown.text


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example/after",
        "https://app.example.test/settings",  # the prefix covers the path too, not only the host
        "http://app.example.test/after",
        "https://app.example.test.evil.example/after",
        "https://user@app.example.test/after",
        "javascript:alert(1)//https://app.example.test/after",
        "/after",
        "",
    ],
)
def test_a_return_to_outside_the_allow_list_is_refused(
    live_server: str, runtime: Runtime, api: requests.Session, return_to: str
) -> None:
    resp = api.post(f"{live_server}/api/connect-sessions", json={"ref": "user-42", "return_to": return_to})
    assert resp.status_code == 400 and resp.json()["field"] == "return_to"
    assert count(runtime, ConnectSession) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ref": "", "return_to": APP}, "ref"),
        ({"ref": "x" * 201, "return_to": APP}, "ref"),
        ({"ref": "line\nbreak", "return_to": APP}, "ref"),
        ({"return_to": APP}, "ref"),
        ({"ref": "user-42"}, "return_to"),
        ({"ref": "user-42", "return_to": APP, "login_hint": ""}, "login_hint"),
        ({"ref": "user-42", "return_to": APP, "state": "x"}, "state"),
    ],
)
def test_a_malformed_request_is_refused_naming_its_field(
    live_server: str, runtime: Runtime, api: requests.Session, body: dict[str, Any], field: str
) -> None:
    resp = api.post(f"{live_server}/api/connect-sessions", json=body)
    assert resp.status_code == 400 and resp.json()["field"] == field
    assert count(runtime, ConnectSession) == 0


def test_any_printable_ref_up_to_200_characters_is_accepted(
    live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    for ref in ("x" * 200, "tenant 7 / user é", "a"):
        assert api.post(f"{live_server}/api/connect-sessions", json={"ref": ref, "return_to": APP}).status_code == 201
    with runtime.sessions() as session:
        assert sorted(session.scalars(select(ConnectSession.ref))) == sorted(["x" * 200, "tenant 7 / user é", "a"])


def test_without_return_urls_no_session_can_be_made(settings: Settings, runtime: Runtime) -> None:
    from calsync import create_app

    closed = dataclasses.replace(runtime, settings=dataclasses.replace(settings, return_urls=()))
    client = create_app(runtime=closed).test_client()
    resp = client.post(
        "/api/connect-sessions",
        json={"ref": "user-42", "return_to": APP},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert resp.status_code == 400 and "CALSYNC_RETURN_URLS" in resp.get_json()["message"]
    assert client.post("/api/connect-sessions", json={"ref": "user-42", "return_to": APP}).status_code == 401
