"""Connect sessions over real HTTP: an app makes a link for its user, the user consents on the
emulator's page, comes back to the app with the ref, the outcome, the account and a one-time
connection code, and the app's server confirms the code with the ref of the user signed in to it."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select, update

from calsync.accounts.connected import load_credentials
from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.google.calendar import GoogleCalendar
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Change, ConnectSession
from calsync.store.quota import Budget, Limits
from calsync.work.worker import Worker
from tests.conftest import API_TOKEN
from tests.web.test_consent import connect, consent

APP = "https://app.example.test/after"
ANN = "ann@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"


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


def confirm(api: requests.Session, live: str, connection: str, ref: str) -> requests.Response:
    """What the app's server does on its return page, with the ref of the user signed in to the app."""
    return api.post(f"{live}/api/connect-sessions/confirm", json={"connection": connection, "ref": ref})


def connect_as(api: requests.Session, live: str, ref: str, email: str) -> dict[str, str]:
    """A link for `ref`, consented to with `email`'s Google account, confirmed by the app for `ref`."""
    back = returned(follow_link(requests.Session(), new_link(api, live, ref), email))
    resp = confirm(api, live, back["connection"], ref)
    assert resp.status_code == 200 and resp.json() == {"account": email, "ref": ref}, resp.text
    return back


def accounts_by_ref(api: requests.Session, live: str) -> list[tuple[str, str | None]]:
    return [(a["email"], a["ref"]) for a in api.get(f"{live}/api/accounts").json()]


def revocations(emu: Any) -> list[int]:
    """The statuses of the calls made to Google's revoke endpoint."""
    return [r.status for r in emu.requests if r.api_method == "oauth.revoke"]


def held(runtime: Runtime, ref: str = "user-42") -> ConnectSession:
    """The session of `ref` whose consent made a connection."""
    with runtime.sessions() as session:
        return session.scalars(
            select(ConnectSession).where(ConnectSession.connection_hash.is_not(None), ConnectSession.ref == ref)
        ).one()


def held_states(runtime: Runtime) -> list[str]:
    with runtime.sessions() as session:
        return sorted(state or "" for state in session.scalars(select(ConnectSession.connection_state)))


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
    location = back.headers["Location"]
    assert location.startswith(f"{APP}?tab=calendar&ref=user-42&status=connected&account=ann%40example.com&connection=")
    args = returned(back)
    code = args.pop("connection")
    assert args == {"tab": "calendar", "ref": "user-42", "status": "connected", "account": ANN}
    assert len(code) >= 40
    with runtime.sessions() as session:  # the code is kept only as its hash, the tokens encrypted
        stored = session.scalars(select(ConnectSession)).one()
        assert stored.connection_hash == hashlib.sha256(code.encode()).hexdigest()
        assert stored.outcome == "connected" and stored.connection_state == "pending"
        assert stored.credentials and b"refresh_token" not in stored.credentials

    # Until the app confirms, nothing of the account exists: no account, no feed row, no sync.
    assert api.get(f"{live_server}/api/accounts").json() == [] and feed(api, live_server) == []
    Worker(runtime, threads=1).run_burst()
    assert emu.count("calendar.calendarList.list") == 0 and emu.count("calendar.events.list") == 0
    assert count(runtime, Account) == 0 and count(runtime, Change) == 0

    # The app's return page confirms with the user signed in to it.
    runtime.clock.advance(minutes=9, seconds=59)  # type: ignore[attr-defined]
    confirmed = confirm(api, live_server, code, "user-42")
    assert confirmed.status_code == 200 and confirmed.json() == {"account": ANN, "ref": "user-42"}
    [account] = api.get(f"{live_server}/api/accounts", params={"ref": "user-42"}).json()
    assert account == {
        "email": ANN,
        "ref": "user-42",
        "status": "active",
        "connected_at": account["connected_at"],
        "calendars": [],
    }
    # Connected when confirmed, not when consented.
    assert (
        timedelta(0)
        <= runtime.clock.now() - datetime.fromisoformat(account["connected_at"])
        < timedelta(milliseconds=1)
    )
    assert api.get(f"{live_server}/api/accounts", params={"ref": "someone-else"}).json() == []
    [connected] = feed(api, live_server)
    assert (connected["type"], connected["account"], connected["ref"]) == ("account.connected", ANN, "user-42")
    assert (connected["calendar_id"], connected["event_id"], connected["change"]) == (None, None, None)
    with runtime.sessions() as session:
        stored = session.scalars(select(ConnectSession)).one()
        assert (stored.connection_state, stored.credentials) == ("confirmed", None)  # the held tokens are gone
        assert stored.account_id == session.scalars(select(Account.id)).one()

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
    assert revocations(emu) == []


def test_an_account_moves_to_another_ref_when_that_refs_user_confirms_and_keeps_its_history(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    assert connect_as(api, live_server, "user-1", ANN)["status"] == "connected"
    Worker(runtime, threads=1).run_burst()
    first = feed(api, live_server)
    assert [r["type"] for r in first] == ["account.connected", "calendar.added", "calendar.synced"]

    back = connect_as(api, live_server, "user-2", ANN)  # ann, signed in to the app as user-2, connects again
    assert {k: v for k, v in back.items() if k != "connection"} == {
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
    connect_as(api, live_server, "user-42", ANN)
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


# A link is not its user: the app confirms who came back ------------------------------------------
def test_a_link_made_for_another_user_cannot_take_an_account_away_from_its_ref(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    # bob's account is already victim-bob's (set in the table, so that this holds on any version of calsync)
    connect(emu, live_server, BOB)
    emu.auto_approve = None  # from here on bob answers Google's consent page himself
    with transaction(runtime.sessions) as session:
        session.execute(update(Account).values(ref="victim-bob"))
    Worker(runtime, threads=1).run_burst()
    rows = feed(api, live_server)
    with runtime.sessions() as session:
        bobs_tokens = session.scalars(select(Account.credentials)).one()

    # mallory, an ordinary user of the app, makes a link for her own ref and sends it to bob, who consents
    back = returned(follow_link(requests.Session(), new_link(api, live_server, "attacker-mallory"), BOB))
    assert (back["status"], back["ref"], back["account"]) == ("connected", "attacker-mallory", BOB)
    assert accounts_by_ref(api, live_server) == [(BOB, "victim-bob")]  # the consent moved nothing
    assert api.get(f"{live_server}/api/accounts", params={"ref": "attacker-mallory"}).json() == []
    assert feed(api, live_server) == rows

    # bob lands on the app's return page, where he is signed in as victim-bob: the app confirms with that
    refused = confirm(api, live_server, back["connection"], "victim-bob")
    assert refused.status_code == 409 and refused.json()["error"] == "ref_mismatch"
    # the code is spent: it cannot be confirmed for mallory afterwards either
    again = confirm(api, live_server, back["connection"], "attacker-mallory")
    assert again.status_code == 410 and again.json()["error"] == "connection_used"

    assert accounts_by_ref(api, live_server) == [(BOB, "victim-bob")]
    assert feed(api, live_server) == rows and [c["ref"] for c in api.get(f"{live_server}/api/calendars").json()] == [
        "victim-bob"
    ]
    assert revocations(emu) == []  # revoking would end the grant bob's own account lives on
    with runtime.sessions() as session:
        account = session.scalars(select(Account)).one()
        assert account.credentials == bobs_tokens
    creds = load_credentials(runtime, account)
    assert GoogleCalendar(creds, runtime.settings.calendar_api_endpoint).get_calendar("primary")["id"] == BOB
    dropped = held(runtime, "attacker-mallory")
    assert (dropped.connection_state, dropped.credentials, dropped.account_id) == ("refused", None, None)


def test_a_link_made_for_another_user_keeps_no_new_account_and_revokes_its_grant(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(CAROL)
    back = returned(follow_link(requests.Session(), new_link(api, live_server, "attacker-mallory"), CAROL))
    assert back["status"] == "connected"
    assert api.get(f"{live_server}/api/accounts").json() == [] and feed(api, live_server) == []
    Worker(runtime, threads=1).run_burst()
    assert emu.count("calendar.calendarList.list") == 0  # no sync starts for a connection not confirmed

    refused = confirm(api, live_server, back["connection"], "victim-carol")
    assert refused.status_code == 409 and refused.json() == {
        "error": "ref_mismatch",
        "message": refused.json()["message"],
    }
    assert count(runtime, Account) == 0 and count(runtime, Change) == 0
    assert revocations(emu) == [200]  # the grant carol gave through mallory's link is gone at Google
    assert emu.count("calendar.calendarList.list") == 0
    dropped = held(runtime, "attacker-mallory")
    assert (dropped.connection_state, dropped.credentials) == ("refused", None)


def test_an_unconfirmed_connection_is_dropped_after_ten_minutes(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    back = returned(follow_link(requests.Session(), new_link(api, live_server), ANN))
    assert count(runtime, Account) == 0
    worker = Worker(runtime, threads=1)
    runtime.clock.advance(minutes=9, seconds=59)  # type: ignore[attr-defined]
    worker.run_burst()
    assert held(runtime).connection_state == "pending" and revocations(emu) == []

    runtime.clock.advance(seconds=1)  # type: ignore[attr-defined]
    late = confirm(api, live_server, back["connection"], "user-42")
    assert late.status_code == 410 and late.json()["error"] == "connection_expired"
    assert count(runtime, Account) == 0
    worker.run_burst()  # the scheduler's pass drops it
    dropped = held(runtime)
    assert (dropped.connection_state, dropped.credentials, dropped.connection_until) == ("expired", None, None)
    assert revocations(emu) == [200]
    worker.run_burst()
    assert revocations(emu) == [200]  # dropped once
    assert count(runtime, Account) == 0 and feed(api, live_server) == []
    assert emu.count("calendar.calendarList.list") == 0
    assert confirm(api, live_server, back["connection"], "user-42").json()["error"] == "connection_expired"


def test_dropping_a_connection_keeps_the_grant_of_an_account_calsync_serves(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    connect_as(api, live_server, "user-42", ANN)
    returned(follow_link(requests.Session(), new_link(api, live_server), ANN))  # a second consent, never confirmed
    runtime.clock.advance(minutes=10)  # type: ignore[attr-defined]
    Worker(runtime, threads=1).run_burst()
    assert held_states(runtime) == ["confirmed", "expired"]
    assert revocations(emu) == []
    with runtime.sessions() as session:
        account = session.scalars(select(Account)).one()
    assert account.status == "active" and account.ref == "user-42"
    assert account.credentials is not None
    assert (
        GoogleCalendar(load_credentials(runtime, account), runtime.settings.calendar_api_endpoint).get_calendar(
            "primary"
        )["id"]
        == ANN
    )


def test_a_connection_code_works_once_and_only_a_real_one(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    emu.create_user(ANN)
    back = returned(follow_link(requests.Session(), new_link(api, live_server), ANN))
    assert (
        requests.post(
            f"{live_server}/api/connect-sessions/confirm", json={"connection": back["connection"], "ref": "user-42"}
        ).status_code
        == 401
    )
    for body, field in [
        ({"connection": back["connection"]}, "ref"),
        ({"ref": "user-42"}, "connection"),
        ({"connection": back["connection"], "ref": ""}, "ref"),
        ({"connection": back["connection"], "ref": "user\n42"}, "ref"),
        ({"connection": "", "ref": "user-42"}, "connection"),
        ({"connection": back["connection"], "ref": "user-42", "account": ANN}, "account"),
        ([back["connection"]], "body"),
    ]:
        resp = api.post(f"{live_server}/api/connect-sessions/confirm", json=body)
        assert resp.status_code == 400 and resp.json()["field"] == field, (body, resp.text)
    unknown = confirm(api, live_server, back["connection"][:-1] + "x", "user-42")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_connection"
    assert count(runtime, Account) == 0 and held(runtime).connection_state == "pending"

    assert confirm(api, live_server, back["connection"], "user-42").status_code == 200
    changes = count(runtime, Change)
    again = confirm(api, live_server, back["connection"], "user-42")
    assert again.status_code == 410 and again.json()["error"] == "connection_used"
    assert count(runtime, Change) == changes == 1


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


def test_a_consent_the_quota_has_no_room_for_still_returns_to_the_app(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session
) -> None:
    """The account's primary calendar is read at consent, from the quota budget; with none left the
    callback answered a bare 503 and the link's user was never sent back (the link spent)."""
    runtime.budget = Budget(runtime.sessions, runtime.clock, Limits(per_window=1, per_user_per_window=0), max_wait=0)
    answers = []
    for email in (ANN, BOB):
        emu.create_user(email)
        answers.append(returned(follow_link(requests.Session(), new_link(api, live_server), email)))
    assert answers[0]["status"] == "connected"
    assert answers[1] == {"tab": "calendar", "ref": "user-42", "status": "error", "error": "quota_exhausted"}


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


@pytest.mark.parametrize("first", ["deny", "allow"])
def test_a_replayed_cookie_cannot_consent_again_through_a_link_whose_consent_ended(
    emu: Any, live_server: str, runtime: Runtime, api: requests.Session, first: str
) -> None:
    """The consent's state and PKCE verifier live in the browser's cookie: an old copy of it, with a
    new code from Google for the same authorization URL, turned a link the app was told was denied
    into a connection, or exchanged a second code after the first connection (a live grant that
    nothing held)."""
    emu.create_user(ANN)
    browser = requests.Session()
    opened = browser.get(new_link(api, live_server), allow_redirects=False)
    saved = browser.cookies.copy()
    back = returned(browser.get(consent(browser, opened.headers["Location"], ANN, action=first), allow_redirects=False))
    assert back["status"] == ("denied" if first == "deny" else "connected")
    replay = requests.Session()
    replay.cookies.update(saved)
    again = returned(replay.get(consent(replay, opened.headers["Location"], ANN), allow_redirects=False))
    assert again == {"tab": "calendar", "ref": "user-42", "status": "error", "error": "link_used"}
    assert emu.count("oauth.token") == (0 if first == "deny" else 1)  # no second exchange
    with runtime.sessions() as session:
        assert session.scalars(select(ConnectSession.outcome)).one() == ("denied" if first == "deny" else "connected")


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
    assert confirm(api, live_server, returned(follow_link(requests.Session(), link, ANN))["connection"], "user-42").ok
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
        # Paths that start with the allowed one as a string but lead elsewhere
        "https://app.example.test/afterwards",
        "https://app.example.test/after/../settings",
        "https://app.example.test/after/..",
        "https://app.example.test/after/%2e%2e/settings",
        "https://app.example.test/after/%2E%2E%2Fsettings",
        "https://app.example.test/after/.%2e/settings",
        "https://app.example.test/after/%252e%252e/settings",
        "https://app.example.test/after/..;/settings",
        "https://app.example.test/after/x/../../settings",
        "https://app.example.test/after\\..\\settings",
        "https://app.example.test/after/%5c..%5csettings",
        "https://app.example.test/after//evil.example/",
        "https://app.example.test//evil.example/after",
        "//app.example.test/after",
        # Another host behind user info
        "https://app.example.test@evil.example/after",
        "https://app.example.test:443@evil.example/after",
        "https://app.example.test%2F@evil.example/after",
        "https://app.example.test\\@evil.example/after",
        "https://:@app.example.test/after",
        # Another port
        "https://app.example.test:8443/after",
        "https://app.example.test:99999/after",
    ],
)
def test_a_return_to_outside_the_allow_list_is_refused(
    live_server: str, runtime: Runtime, api: requests.Session, return_to: str
) -> None:
    resp = api.post(f"{live_server}/api/connect-sessions", json={"ref": "user-42", "return_to": return_to})
    assert resp.status_code == 400 and resp.json()["field"] == "return_to"
    assert count(runtime, ConnectSession) == 0


@pytest.mark.parametrize(
    ("return_to", "stored"),
    [
        (APP, APP),
        (APP + "/", APP + "/"),
        ("https://APP.example.test:443/after/x?tab=1#top", "https://APP.example.test:443/after/x?tab=1#top"),
        ("https://app.example.test/after/x/../y?next=../../z", "https://app.example.test/after/y?next=../../z"),
        ("https://app.example.test/after/./%2e/sub/%2E%2E/y", "https://app.example.test/after/y"),
        ("https://app.example.test/settings/../after", "https://app.example.test/after"),
    ],
)
def test_a_return_to_under_the_allow_list_is_kept_with_its_path_resolved(
    live_server: str, runtime: Runtime, api: requests.Session, return_to: str, stored: str
) -> None:
    resp = api.post(f"{live_server}/api/connect-sessions", json={"ref": "user-42", "return_to": return_to})
    assert resp.status_code == 201, resp.text
    with runtime.sessions() as session:
        assert session.scalars(select(ConnectSession.return_to)).one() == stored


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
