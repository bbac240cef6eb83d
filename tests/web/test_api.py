"""The read API: bearer token, exact JSON shapes, paging, cursors and every 400."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change, Channel, Event

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
CHANGE_KEYS = {
    "seq",
    "type",
    "account",
    "ref",
    "calendar_id",
    "event_id",
    "change",
    "fields",
    "before",
    "after",
    "detected_at",
    "origin",
}
CALENDAR_KEYS = {
    "account",
    "account_status",
    "ref",
    "calendar_id",
    "summary",
    "sync_state",
    "last_synced_at",
    "channel",
}


# Rows put straight into the database ------------------------------------------------------------
class Seed:
    """Accounts, calendars, events and changes written through the ORM (changes via append_changes)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def account(self, email: str, status: str = "active", ref: str | None = None) -> int:
        with transaction(self.runtime.sessions) as s:
            account = Account(
                email=email, credentials=self.runtime.cipher.encrypt_str("{}"), scopes=[], status=status, ref=ref
            )
            s.add(account)
            s.flush()
            return account.id

    def calendar(self, account_id: int, google_id: str, **values: Any) -> int:
        with transaction(self.runtime.sessions) as s:
            cal = Calendar(account_id=account_id, google_id=google_id, **values)
            s.add(cal)
            s.flush()
            return cal.id

    def events(self, calendar_id: int, bodies: list[dict[str, Any]]) -> None:
        with transaction(self.runtime.sessions) as s:
            s.execute(
                insert(Event),
                [
                    {
                        "calendar_id": calendar_id,
                        "google_id": b["id"],
                        "status": b.get("status", "confirmed"),
                        "recurring_event_id": b.get("recurringEventId"),
                        "data": b,
                    }
                    for b in bodies
                ],
            )

    def change(
        self,
        calendar_id: int,
        event_id: str,
        kind: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        fields: list[str] | None = None,
        at: datetime = T0,
    ) -> int:
        with transaction(self.runtime.sessions) as s:
            [change] = append_changes(
                s,
                [
                    Change(
                        calendar_id=calendar_id,
                        event_id=event_id,
                        kind=kind,
                        fields=fields or [],
                        before=before,
                        after=after,
                    )
                ],
                at,
            )
            return change.seq

    def channel(
        self,
        account_id: int,
        calendar_id: int | None,
        channel_id: str,
        status: str,
        created_at: datetime,
        kind: str = "events",
    ) -> None:
        with transaction(self.runtime.sessions) as s:
            s.add(
                Channel(
                    id=channel_id,
                    account_id=account_id,
                    calendar_id=calendar_id,
                    kind=kind,
                    token_hash="0" * 64,
                    resource_id="res-" + channel_id,
                    status=status,
                    created_at=created_at,
                    expires_at=created_at + timedelta(days=7),
                )
            )


@pytest.fixture
def seed(runtime: Runtime) -> Seed:
    return Seed(runtime)


def simple_changes(seed: Seed, n: int) -> tuple[int, list[int]]:
    account = seed.account("alice@example.com")
    cal = seed.calendar(account, "alice@example.com", summary="Alice")
    seqs = [seed.change(cal, f"ev{i}", "created", None, {"id": f"ev{i}", "summary": f"E{i}"}) for i in range(n)]
    return cal, seqs


# Authorisation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/calendars", "/api/events?calendar=x", "/api/changes"])
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic dGVzdC1hcGktdG9rZW4=", "Bearer "])
def test_api_refuses_without_the_right_bearer_token(client: Any, path: str, header: str | None) -> None:
    resp = client.get(path, headers={"Authorization": header} if header else {})
    assert resp.status_code == 401
    assert set(resp.get_json()) == {"error", "message"}
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_disconnect_endpoint_needs_the_bearer_token_and_a_known_account(
    client: Any, api_headers: dict[str, str]
) -> None:
    assert client.post("/api/accounts/a@example.com/disconnect").status_code == 401
    resp = client.post("/api/accounts/nobody@example.com/disconnect", headers=api_headers)
    assert resp.status_code == 404 and set(resp.get_json()) == {"error", "message"}


# /api/calendars -----------------------------------------------------------------------------------
def test_calendars_lists_live_calendars_with_their_newest_active_channel(
    client: Any, seed: Seed, api_headers: dict[str, str]
) -> None:
    alice = seed.account("alice@example.com")
    bob = seed.account("bob@example.com", status="reauth_required", ref="user-42")
    primary = seed.calendar(alice, "alice@example.com", summary="Alice", sync_state="synced", last_synced_at=T0)
    seed.calendar(alice, "team@group.calendar.google.com", summary="Team")
    seed.calendar(alice, "gone@group.calendar.google.com", summary="Gone", removed_at=T0)
    seed.calendar(bob, "bob@example.com", summary="Bob", sync_state="error")
    seed.channel(alice, primary, "old-active", "active", T0 - timedelta(days=6))
    seed.channel(alice, primary, "new-active", "active", T0)
    seed.channel(alice, primary, "newer-stopped", "stopped", T0 + timedelta(hours=1))
    seed.channel(alice, None, "list-channel", "active", T0 + timedelta(hours=2), kind="calendar_list")

    resp = client.get("/api/calendars", headers=api_headers)
    assert resp.status_code == 200
    rows = resp.get_json()
    assert all(set(row) == CALENDAR_KEYS for row in rows)
    assert rows == [
        {
            "account": "alice@example.com",
            "account_status": "active",
            "ref": None,
            "calendar_id": "alice@example.com",
            "summary": "Alice",
            "sync_state": "synced",
            "last_synced_at": "2026-03-01T09:30:00.000Z",
            "channel": {"id": "new-active", "expires_at": "2026-03-08T09:30:00.000Z"},
        },
        {
            "account": "alice@example.com",
            "account_status": "active",
            "ref": None,
            "calendar_id": "team@group.calendar.google.com",
            "summary": "Team",
            "sync_state": "pending",
            "last_synced_at": None,
            "channel": None,
        },
        {
            "account": "bob@example.com",
            "account_status": "reauth_required",
            "ref": "user-42",
            "calendar_id": "bob@example.com",
            "summary": "Bob",
            "sync_state": "error",
            "last_synced_at": None,
            "channel": None,
        },
    ]


# /api/events --------------------------------------------------------------------------------------
def test_events_pages_through_more_than_1000_rows_in_a_stable_order(
    client: Any, seed: Seed, api_headers: dict[str, str]
) -> None:
    cal = seed.calendar(seed.account("alice@example.com"), "alice@example.com")
    bodies = [{"id": f"ev{i:05d}", "status": "confirmed", "summary": f"Event {i}"} for i in range(2345)]
    seed.events(cal, bodies)
    seen: list[str] = []
    sizes: list[int] = []
    token = None
    while True:
        url = "/api/events?calendar=alice@example.com" + (f"&pageToken={token}" if token else "")
        resp = client.get(url, headers=api_headers)
        assert resp.status_code == 200
        page = resp.get_json()
        assert set(page) == {"items", "nextPageToken", "as_of_seq"}
        sizes.append(len(page["items"]))
        seen.extend(item["id"] for item in page["items"])
        token = page["nextPageToken"]
        if token is None:
            break
    assert sizes == [1000, 1000, 345]
    assert seen == [b["id"] for b in bodies]


def test_an_events_page_of_large_events_ends_at_the_byte_budget_and_the_next_page_goes_on(
    client: Any, seed: Seed, api_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thousand meetings with a thousand guests each were one answer of about 180 MB. A page ends
    once the events before its last pass the budget; none is lost or repeated, never fewer than one."""

    from calsync.readmodels import reads

    monkeypatch.setattr(reads, "EVENTS_PAGE_BYTES", 100_000)
    cal = seed.calendar(seed.account("alice@example.com"), "alice@example.com")
    # a guest list of ~45 KB of JSON an event, which PostgreSQL stores compressed to a fraction of it
    big = [{"id": f"ev{i}", "status": "confirmed", "attendees": _guests(700)} for i in range(7)]
    seed.events(cal, [*big, {"id": "small", "status": "confirmed"}])

    def page(token: str | None) -> tuple[list[str], str | None]:
        url = "/api/events?calendar=alice@example.com" + (f"&pageToken={token}" if token else "")
        body = client.get(url, headers=api_headers).get_json()
        return [item["id"] for item in body["items"]], body["nextPageToken"]

    first, token = page(None)
    assert first == ["ev0", "ev1", "ev2"] and token is not None  # 0, 45 and 90 KB before each
    second, token = page(token)
    assert second == ["ev3", "ev4", "ev5"] and token is not None
    assert page(token) == (["ev6", "small"], None)
    monkeypatch.setattr(reads, "EVENTS_PAGE_BYTES", 10)
    assert page(None)[0] == ["ev0"]


def test_events_are_googles_json_with_cancelled_exceptions_but_without_deleted_events(
    client: Any, seed: Seed, api_headers: dict[str, str]
) -> None:
    cal = seed.calendar(seed.account("alice@example.com"), "alice@example.com")
    series = {
        "id": "series1",
        "status": "confirmed",
        "summary": "Weekly",
        "recurrence": ["RRULE:FREQ=WEEKLY"],
        "start": {"dateTime": "2026-03-02T10:00:00Z"},
        "end": {"dateTime": "2026-03-02T11:00:00Z"},
    }
    cancelled_occurrence = {
        "id": "series1_20260309T100000Z",
        "status": "cancelled",
        "recurringEventId": "series1",
        "originalStartTime": {"dateTime": "2026-03-09T10:00:00Z"},
    }
    leftover_deleted = {"id": "gone", "status": "cancelled"}
    seed.events(cal, [series, cancelled_occurrence, leftover_deleted])
    resp = client.get("/api/events?calendar=alice@example.com", headers=api_headers)
    assert resp.get_json() == {"items": [series, cancelled_occurrence], "nextPageToken": None, "as_of_seq": 0}


def test_events_parameter_errors(client: Any, seed: Seed, api_headers: dict[str, str]) -> None:
    alice, bob = seed.account("alice@example.com"), seed.account("bob@example.com")
    seed.calendar(alice, "shared@group.calendar.google.com")
    bobs = seed.calendar(bob, "shared@group.calendar.google.com")
    seed.events(bobs, [{"id": "b1", "status": "confirmed"}])
    cases = {
        "/api/events": 400,
        "/api/events?calendar=": 400,
        "/api/events?calendar=nope@example.com": 404,
        "/api/events?calendar=shared@group.calendar.google.com": 400,
        "/api/events?calendar=shared@group.calendar.google.com&account=carl@example.com": 404,
        "/api/events?calendar=shared@group.calendar.google.com&account=bob@example.com&pageToken=%%%": 400,
        "/api/events?calendar=shared@group.calendar.google.com&account=bob@example.com&pageToken=bm9wZQ": 400,
    }
    for url, status in cases.items():
        resp = client.get(url, headers=api_headers)
        assert resp.status_code == status, url
        assert set(resp.get_json()) == {"error", "message"}, url
    ambiguous = client.get("/api/events?calendar=shared@group.calendar.google.com", headers=api_headers)
    assert "account=" in ambiguous.get_json()["message"]
    resp = client.get(
        "/api/events?calendar=shared@group.calendar.google.com&account=bob@example.com", headers=api_headers
    )
    assert resp.get_json()["items"] == [{"id": "b1", "status": "confirmed"}]


# /api/changes ------------------------------------------------------------------------------------
def test_changes_have_the_contract_shape(client: Any, seed: Seed, api_headers: dict[str, str]) -> None:
    cal = seed.calendar(seed.account("alice@example.com"), "alice@example.com")
    v1 = {"id": "e1", "summary": "Standup", "etag": '"1"'}
    v2 = {"id": "e1", "summary": "Daily standup", "etag": '"2"'}
    seed.change(cal, "e1", "created", None, v1, at=T0)
    seed.change(cal, "e1", "updated", v1, v2, fields=["summary"], at=T0 + timedelta(seconds=1, microseconds=250000))
    seed.change(cal, "e1", "deleted", v2, None, at=T0 + timedelta(minutes=1))
    body = client.get("/api/changes", headers=api_headers).get_json()
    assert set(body) == {"changes", "next"}
    assert body == {
        "next": 3,
        "changes": [
            {
                "seq": 1,
                "type": "event.created",
                "account": "alice@example.com",
                "ref": None,
                "calendar_id": "alice@example.com",
                "event_id": "e1",
                "change": "created",
                "fields": [],
                "before": None,
                "after": v1,
                "detected_at": "2026-03-01T09:30:00.000Z",
                "origin": "google",
            },
            {
                "seq": 2,
                "type": "event.updated",
                "account": "alice@example.com",
                "ref": None,
                "calendar_id": "alice@example.com",
                "event_id": "e1",
                "change": "updated",
                "fields": ["summary"],
                "before": v1,
                "after": v2,
                "detected_at": "2026-03-01T09:30:01.250Z",
                "origin": "google",
            },
            {
                "seq": 3,
                "type": "event.deleted",
                "account": "alice@example.com",
                "ref": None,
                "calendar_id": "alice@example.com",
                "event_id": "e1",
                "change": "deleted",
                "fields": [],
                "before": v2,
                "after": None,
                "detected_at": "2026-03-01T09:31:00.000Z",
                "origin": "google",
            },
        ],
    }
    assert all(set(c) == CHANGE_KEYS for c in body["changes"])


def test_changes_after_is_exclusive_and_next_is_the_cursor(
    client: Any, seed: Seed, api_headers: dict[str, str]
) -> None:
    _, seqs = simple_changes(seed, 5)
    assert seqs == [1, 2, 3, 4, 5]

    def get(query: str) -> tuple[list[int], int]:
        body = client.get(f"/api/changes?{query}", headers=api_headers).get_json()
        return [c["seq"] for c in body["changes"]], body["next"]

    assert get("limit=2") == ([1, 2], 2)
    assert get("after=2&limit=2") == ([3, 4], 4)
    assert get("after=4&limit=2") == ([5], 5)
    assert get("after=5") == ([], 5)
    assert get("after=99") == ([], 99)
    assert get("after=0") == ([1, 2, 3, 4, 5], 5)


def test_reads_answer_while_a_writer_holds_sqlites_write_lock(
    client: Any, seed: Seed, runtime: Runtime, api_headers: dict[str, str]
) -> None:
    """An app polling the feed, the calendars and the events, and a health check, do not wait for the
    worker or the notification intake: on SQLite they read the write-ahead log's last commit, and a
    writer's transaction (here, held open) is not theirs to wait for."""
    _, seqs = simple_changes(seed, 3)
    paths = ["/api/changes?after=0", "/api/calendars", "/api/events?calendar=alice@example.com", "/api/accounts"]
    with runtime.engine.connect() as writer:
        writer.execute(select(Calendar.id)).all()  # on SQLite this began IMMEDIATE: the write lock is held
        answers: dict[str, int] = {}

        def read() -> None:
            for path in paths:
                answers[path] = client.get(path, headers=api_headers).status_code

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(5)
        assert answers == dict.fromkeys(paths, 200), "a read waited for the writer"
        writer.rollback()
    body = client.get("/api/changes?after=0", headers=api_headers).get_json()
    assert [c["seq"] for c in body["changes"]] == seqs


def test_changes_limit_defaults_to_100_and_is_capped_at_1000(
    client: Any, seed: Seed, api_headers: dict[str, str]
) -> None:
    cal = seed.calendar(seed.account("alice@example.com"), "alice@example.com")
    with transaction(seed.runtime.sessions) as s:
        append_changes(
            s,
            [
                Change(calendar_id=cal, event_id=f"e{i}", kind="created", fields=[], before=None, after={"id": f"e{i}"})
                for i in range(1005)
            ],
            T0,
        )
    default = client.get("/api/changes", headers=api_headers).get_json()
    assert len(default["changes"]) == 100 and default["next"] == 100
    capped = client.get("/api/changes?limit=5000", headers=api_headers).get_json()
    assert len(capped["changes"]) == 1000 and capped["next"] == 1000
    rest = client.get("/api/changes?after=1000&limit=1000", headers=api_headers).get_json()
    assert [c["seq"] for c in rest["changes"]] == [1001, 1002, 1003, 1004, 1005]


@pytest.mark.parametrize(
    "query",
    [
        "after=-1",
        "after=abc",
        "after=1.5",
        "after=",
        "after=99999999999999999999",
        "limit=0",
        "limit=-3",
        "limit=ten",
        "limit=2.0",
        "limit=",
        "calendar=",
        "after=%205",
        "limit=5%20",
    ],
)
def test_changes_bad_parameter_is_a_400_json_error(client: Any, api_headers: dict[str, str], query: str) -> None:
    resp = client.get(f"/api/changes?{query}", headers=api_headers)
    assert resp.status_code == 400
    body = resp.get_json()
    assert set(body) == {"error", "message"} and body["error"] == "bad_request"


def test_changes_filtered_by_calendar(client: Any, seed: Seed, api_headers: dict[str, str]) -> None:
    alice = seed.account("alice@example.com")
    home = seed.calendar(alice, "alice@example.com")
    team = seed.calendar(alice, "team@group.calendar.google.com")
    gone = seed.calendar(alice, "gone@group.calendar.google.com", removed_at=T0)
    for i in range(3):
        seed.change(home, f"h{i}", "created", None, {"id": f"h{i}"})
        seed.change(team, f"t{i}", "created", None, {"id": f"t{i}"})
    seed.change(gone, "g0", "created", None, {"id": "g0"})

    body = client.get("/api/changes?calendar=team@group.calendar.google.com", headers=api_headers).get_json()
    assert [c["event_id"] for c in body["changes"]] == ["t0", "t1", "t2"]
    assert {c["calendar_id"] for c in body["changes"]} == {"team@group.calendar.google.com"}
    assert body["next"] == 7  # not full: past the other calendars' rows, up to the newest
    paged = client.get(
        "/api/changes?calendar=team@group.calendar.google.com&after=2&limit=1", headers=api_headers
    ).get_json()
    assert [c["seq"] for c in paged["changes"]] == [4] and paged["next"] == 4
    # A calendar gone from the account's list keeps its past changes.
    body = client.get("/api/changes?calendar=gone@group.calendar.google.com", headers=api_headers).get_json()
    assert [c["event_id"] for c in body["changes"]] == ["g0"]
    unknown = client.get("/api/changes?calendar=nope@example.com", headers=api_headers)
    assert unknown.status_code == 404 and set(unknown.get_json()) == {"error", "message"}


def test_changes_filtered_by_type(client: Any, seed: Seed, api_headers: dict[str, str]) -> None:
    cal = seed.calendar(seed.account("alice@example.com"), "alice@example.com")
    for i, kind in enumerate(["snapshot", "created", "updated", "deleted", "created", "snapshot"]):
        seed.change(
            cal,
            f"e{i}",
            kind,
            None if kind in ("snapshot", "created") else {"id": f"e{i}"},
            None if kind == "deleted" else {"id": f"e{i}"},
        )

    def get(query: str) -> tuple[list[tuple[int, str]], int]:
        body = client.get(f"/api/changes?{query}", headers=api_headers).get_json()
        return [(c["seq"], c["type"]) for c in body["changes"]], body["next"]

    assert get("types=event.created,event.updated") == (
        [(2, "event.created"), (3, "event.updated"), (5, "event.created")],
        6,  # not full: past the snapshot left out at the end
    )
    # repeated, as generated clients send an array (and as the one written comma-separated)
    assert get("types=event.created&types=event.updated") == get("types=event.created,event.updated")
    assert get("types=event.snapshot&limit=1") == ([(1, "event.snapshot")], 1)  # full: more may follow
    assert get("types=event.snapshot&after=1") == ([(6, "event.snapshot")], 6)
    assert get("types=account.connected") == ([], 6)  # a known type with no rows: past every row
    assert [t for _, t in get("")[0]] == [
        "event.snapshot",
        "event.created",
        "event.updated",
        "event.deleted",
        "event.created",
        "event.snapshot",
    ]
    for bad in (
        "types=event.moved",
        "types=event.created,",
        "types=",
        "types=Event.created",
        "types=event.created&types=",
    ):
        resp = client.get(f"/api/changes?{bad}", headers=api_headers)
        assert resp.status_code == 400, bad
        assert resp.get_json()["error"] == "bad_request" and "types" in resp.get_json()["message"]


# End to end: consent, sync, an edit at Google, the change on the API ------------------------------
def test_an_edit_at_google_reaches_the_changes_feed_after_consent_and_sync(
    emu: Any, live_server: str, runtime: Runtime, api_headers: dict[str, str]
) -> None:
    import requests

    from calsync.sync.calendar_list import refresh_calendar_list
    from calsync.sync.run import sync_calendar

    email = "zoe@example.com"
    emu.create_user(email)
    team = emu.create_calendar(email, "Team")
    standup = emu.insert_event(
        email,
        {
            "summary": "Standup",
            "start": {"dateTime": "2026-03-02T10:00:00Z"},
            "end": {"dateTime": "2026-03-02T10:15:00Z"},
        },
    )
    emu.insert_event(team, {"summary": "Offsite", "start": {"date": "2026-04-01"}, "end": {"date": "2026-04-02"}})
    emu.auto_approve = email
    browser = requests.Session()
    assert browser.get(f"{live_server}/connect").url == f"{live_server}/connected"

    with runtime.sessions() as session:
        account_id = session.scalars(select(Account.id).where(Account.email == email)).one()
    listed = refresh_calendar_list(runtime, account_id)
    for calendar_id in listed.added:
        sync_calendar(runtime, calendar_id)

    api = requests.Session()
    api.headers.update(api_headers)
    calendars = api.get(f"{live_server}/api/calendars").json()
    assert {(c["calendar_id"], c["summary"], c["sync_state"]) for c in calendars} == {
        (email, email, "synced"),
        (team, "Team", "synced"),
    }
    assert all(c["last_synced_at"].endswith("Z") and c["account_status"] == "active" for c in calendars)
    events = api.get(f"{live_server}/api/events", params={"calendar": email}).json()
    assert [e["id"] for e in events["items"]] == [standup["id"]] and events["nextPageToken"] is None
    event_rows: dict[str, str | int] = {"types": "event.snapshot,event.created,event.updated,event.deleted"}
    baseline = api.get(f"{live_server}/api/changes", params={"calendar": email, **event_rows}).json()
    assert [(c["type"], c["event_id"], c["after"]) for c in baseline["changes"]] == [
        ("event.snapshot", standup["id"], events["items"][0])
    ], "the first full sync is the feed's snapshot"
    baseline = api.get(f"{live_server}/api/changes").json()

    emu.patch_event(email, standup["id"], {"summary": "Daily standup"})
    with runtime.sessions() as session:
        primary = session.scalars(select(Calendar.id).where(Calendar.google_id == email)).one()
    sync_calendar(runtime, primary)

    feed = api.get(f"{live_server}/api/changes", params={"after": baseline["next"], **event_rows}).json()
    [change] = feed["changes"]
    assert feed["next"] == change["seq"]
    assert (change["account"], change["calendar_id"], change["event_id"], change["change"], change["fields"]) == (
        email,
        email,
        standup["id"],
        "updated",
        ["summary"],
    )
    assert change["before"]["summary"] == "Standup" and change["after"]["summary"] == "Daily standup"
    assert change["detected_at"].endswith("Z")
    assert [
        c["type"]
        for c in api.get(f"{live_server}/api/changes", params={"calendar": team, **event_rows}).json()["changes"]
    ] == ["event.snapshot"]


def _guests(count: int) -> list[dict[str, str]]:
    return [{"email": f"guest{i:04d}@example.com", "responseStatus": "needsAction"} for i in range(count)]


def test_a_page_of_large_rows_ends_at_the_byte_budget_and_the_next_page_goes_on(
    client: Any, seed: Seed, api_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of a meeting with a thousand guests are ~180 KB each: a page of a thousand of them was one
    answer of 180 MB. A page ends once the rows before its last pass the budget; no row is lost or
    repeated, and rows past the cut are not read."""

    from calsync.feed import reads

    monkeypatch.setattr(reads, "CHANGES_PAGE_BYTES", 100_000)
    cal = seed.calendar(seed.account("alice@example.com"), "alice@example.com")

    def big(n: int) -> dict[str, Any]:  # a guest list: PostgreSQL stores it compressed to a fraction
        return {"id": f"e{n}", "attendees": _guests(350)}

    seqs = [seed.change(cal, f"e{n}", "updated", big(n), big(n)) for n in range(7)]  # ~45 KB a row
    small = seed.change(cal, "s", "created", None, {"id": "s"})

    def page(after: int) -> tuple[list[int], int]:
        body = client.get(f"/api/changes?after={after}&limit=100", headers=api_headers).get_json()
        return [c["seq"] for c in body["changes"]], body["next"]

    first, cursor = page(0)
    assert first == seqs[:3] and cursor == seqs[2]  # 0, 45 and 90 KB before each: the fourth passes 100 KB
    second, cursor = page(cursor)
    assert second == seqs[3:6] and cursor == seqs[5]
    third, cursor = page(cursor)
    assert third == [seqs[6], small] and cursor == small  # not cut: past every row
    monkeypatch.setattr(reads, "CHANGES_PAGE_BYTES", 10)
    assert page(0) == ([seqs[0]], seqs[0])  # never fewer than one row
