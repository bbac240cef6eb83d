"""Writes through calsync, against the emulator over HTTP and a real database (both engines): one event per
key however the creation is retried, Google's If-Match check, read-your-writes, and no echo row."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select, text, update
from sqlalchemy.exc import DBAPIError

from calsync.config import Settings
from calsync.errors import (
    BackendError,
    CalendarHeld,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidWrite,
    WriteConflict,
)
from calsync.readmodels import availability
from calsync.readmodels.occurrences import parse_instant
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Event, IdempotencyKey
from calsync.store.quota import Budget, Limits, day_count
from calsync.store.states import Priority
from calsync.sync import idempotency, turns, writes
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.push_support import wait_for
from tests.sync_support import (
    READONLY,
    WRITER,
    assert_feed_rebuilds_mirror,
    assert_names_the_whole_connect_flow,
    calendar_row_id,
    changes,
    connect_account,
    connect_with_ref,
    google_view,
    mirror,
    writable_calendar,
)

ANN = "ann@example.com"
BOB = "bob@example.com"
MEETING = {
    "summary": "Booking 42",
    "start": {"dateTime": "2026-03-02T10:00:00Z"},
    "end": {"dateTime": "2026-03-02T11:00:00Z"},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, google_scopes=WRITER)


@pytest.fixture
def cal(runtime: Runtime, emu: Any) -> int:
    """Ann's primary calendar, connected with write access and synced once."""
    return writable_calendar(runtime, emu, ANN)


def settle(runtime: Runtime, emu: Any, calendar_id: int) -> None:
    """The sync Google's notification of the write causes; then the mirror is Google and the feed folds to it."""
    sync_calendar(runtime, calendar_id)
    assert mirror(runtime, calendar_id) == google_view(emu, ANN)
    assert_feed_rebuilds_mirror(runtime, calendar_id)


def test_a_created_event_is_mirrored_and_in_the_feed_when_the_call_returns_and_its_sync_adds_no_row(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    result = writes.create_event(runtime, cal, MEETING)
    [made] = emu.events(ANN)
    assert result.event == made and not result.replayed
    assert mirror(runtime, cal) == {made["id"]: made}  # read your write: before any sync
    [row] = changes(runtime, cal)
    assert (row.seq, row.type, row.origin, row.idempotency_key) == (result.seq, "event.created", "api", None)
    assert row.after == made
    day = parse_instant("2026-03-02T00:00:00Z")
    _, answers = availability.freebusy(runtime.sessions, [ANN], day, day + timedelta(days=1))  # reads the mirror
    assert [len(a.busy) for a in answers] == [1]
    settle(runtime, emu, cal)
    assert [c.seq for c in changes(runtime, cal)] == [result.seq], "the write's notification added an echo row"


def test_the_same_key_and_body_make_one_event_and_one_row_and_another_body_is_refused(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    first = writes.create_event(runtime, cal, MEETING, idempotency_key="booking-42")
    again = writes.create_event(runtime, cal, dict(reversed(MEETING.items())), idempotency_key="booking-42")
    assert again.replayed and (again.event, again.seq) == (first.event, first.seq)
    assert first.event is not None and first.event["id"] == idempotency.derived_event_id(
        cal, ANN, "booking-42", idempotency.body_hash(MEETING)
    )
    with pytest.raises(IdempotencyKeyReused):
        writes.create_event(runtime, cal, {**MEETING, "summary": "Other"}, idempotency_key="booking-42")
    assert [e["summary"] for e in emu.events(ANN)] == ["Booking 42"]
    [row] = changes(runtime, cal)
    assert (row.origin, row.idempotency_key) == ("api", "booking-42")
    settle(runtime, emu, cal)
    assert len(changes(runtime, cal)) == 1


def test_a_retry_after_google_inserted_but_the_answer_was_lost_makes_one_event(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    emu.fail_after_write(1, status=503, method="calendar.events.insert")
    with pytest.raises(BackendError):
        writes.create_event(runtime, cal, MEETING, idempotency_key="k-1")
    assert len(emu.events(ANN)) == 1 and changes(runtime, cal) == []  # made in Google, not committed here
    result = writes.create_event(runtime, cal, MEETING, idempotency_key="k-1")
    [made] = emu.events(ANN)
    assert result.event == made and not result.replayed
    assert emu.count("calendar.events.insert") == 2 and emu.count("calendar.events.get") == 1
    [row] = changes(runtime, cal)
    assert (row.seq, row.idempotency_key) == (result.seq, "k-1")
    settle(runtime, emu, cal)
    assert len(changes(runtime, cal)) == 1


def test_a_claim_lost_with_the_database_still_makes_one_event_on_retry(runtime: Runtime, emu: Any, cal: int) -> None:
    """The claim's commit does not wait for the disk, so a crash of the database can lose it after
    Google made the event. The retry claims the key again, and the event id derived from it makes
    Google answer 409: the first event is fetched and committed, one event and one feed row."""
    emu.fail_after_write(1, status=503, method="calendar.events.insert")
    with pytest.raises(BackendError):
        writes.create_event(runtime, cal, MEETING, idempotency_key="k-lost")
    with transaction(runtime.sessions) as session:  # what the crash took with it
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.key == "k-lost"))
    result = writes.create_event(runtime, cal, MEETING, idempotency_key="k-lost")
    [made] = emu.events(ANN)
    assert result.event == made and made["id"] == idempotency.derived_event_id(
        cal, ANN, "k-lost", idempotency.body_hash(MEETING)
    )
    [row] = changes(runtime, cal)
    assert (row.seq, row.idempotency_key) == (result.seq, "k-lost")
    again = writes.create_event(runtime, cal, MEETING, idempotency_key="k-lost")
    assert again.replayed and again.seq == result.seq  # claimed anew and marked by its feed row
    settle(runtime, emu, cal)
    assert len(changes(runtime, cal)) == 1


def test_a_creation_google_refuses_frees_its_key(runtime: Runtime, emu: Any, cal: int) -> None:
    with pytest.raises(Exception) as refused:
        writes.create_event(runtime, cal, {"summary": "no times"}, idempotency_key="k-2")
    assert getattr(refused.value, "status", None) == 400
    result = writes.create_event(runtime, cal, MEETING, idempotency_key="k-2")  # the corrected body
    assert result.event is not None and result.event["summary"] == "Booking 42"


def test_a_replay_never_hands_back_another_accounts_event(runtime: Runtime, emu: Any, cal: int) -> None:
    """A creation that writes no feed row of its own (here: made, its answer lost, then deleted by the
    person before the retry) is marked with the feed's newest seq, which may be anyone's row."""
    bob = writable_calendar(runtime, emu, BOB)
    secret = writes.create_event(runtime, bob, {**MEETING, "summary": "Bob's private thing"})
    emu.fail_after_write(1, status=503, method="calendar.events.insert")
    with pytest.raises(BackendError):
        writes.create_event(runtime, cal, MEETING, idempotency_key="k")
    [made] = emu.events(ANN)
    emu.delete_event(ANN, made["id"])
    first = writes.create_event(runtime, cal, MEETING, idempotency_key="k")  # 409, fetched: cancelled
    assert first.event is None and first.seq >= secret.seq
    again = writes.create_event(runtime, cal, MEETING, idempotency_key="k")
    assert again.replayed and again.event is None, "a replay handed back the row at its seq, another account's"
    cancelled = writes.create_event(runtime, cal, {**MEETING, "status": "cancelled"}, idempotency_key="c")
    replayed = writes.create_event(runtime, cal, {**MEETING, "status": "cancelled"}, idempotency_key="c")
    assert replayed.replayed and replayed.event == cancelled.event
    assert replayed.event is None or replayed.event["id"] != secret.event["id"]  # type: ignore[index]


def test_twins_with_one_key_send_one_insert_and_the_second_replays_it(runtime: Runtime, emu: Any, cal: int) -> None:
    """A client's retry racing its first try: the second finds the key held by the first, in flight,
    waits for the calendar's turn and replays the event. On SQLite (where the turn comes after the
    claim) it went on to Google, met its 409, fetched the event, and answered 201 as if it made it."""
    inserts = emu.count("calendar.events.insert")
    emu.slow_next(1, 1.0, method="calendar.events.insert")
    results: dict[str, writes.WriteResult] = {}

    def create(name: str) -> None:
        results[name] = writes.create_event(runtime, cal, MEETING, idempotency_key="twin")

    first = threading.Thread(target=create, args=("first",))
    first.start()

    def claimed() -> bool:
        with runtime.sessions() as session:
            return session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == "twin")).first() is not None

    wait_for(claimed, timeout=10, what="the first try's claim")
    create("second")
    first.join(10)
    assert emu.count("calendar.events.insert") == inserts + 1 and emu.count("calendar.events.get") == 0
    assert (results["first"].replayed, results["second"].replayed) == (False, True)
    assert (results["second"].event, results["second"].seq) == (results["first"].event, results["first"].seq)


def test_a_made_event_gone_from_google_before_the_retry_is_answered_as_deleted(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """Google's 409 says the id is taken, and its get no longer finds the event: every retry met that
    404 and the key stayed claimed; now the creation is answered as made and deleted, once."""
    emu.fail_after_write(1, status=503, method="calendar.events.insert")
    with pytest.raises(BackendError):
        writes.create_event(runtime, cal, MEETING, idempotency_key="gone")
    emu.fail_next(1, status=404, reason="notFound", method="calendar.events.get")
    result = writes.create_event(runtime, cal, MEETING, idempotency_key="gone")
    assert result.event is None and not result.replayed
    again = writes.create_event(runtime, cal, MEETING, idempotency_key="gone")
    assert again.replayed and (again.event, again.seq) == (None, result.seq)
    assert emu.count("calendar.events.insert") == 2 and emu.count("calendar.events.get") == 1


def test_accounts_sharing_a_calendar_keep_apart_keys_and_a_key_used_again_later_makes_its_own_event(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """The derived id names the calendar's row (one per account) and the body: neither another account's
    creation with the same key nor the same key used again for another body once its row was pruned
    is handed Google's 409 and the first event as if it were its own."""
    writable_calendar(runtime, emu, BOB)
    emu.share_calendar(ANN, BOB, role="writer")
    refresh_calendar_list(runtime, _account_of(runtime, BOB))
    with runtime.sessions() as session:
        bobs_view = session.scalars(select(Calendar.id).where(Calendar.google_id == ANN, Calendar.id != cal)).one()
    first = writes.create_event(runtime, cal, MEETING, idempotency_key="k")
    other = writes.create_event(runtime, bobs_view, {**MEETING, "summary": "Bob's booking"}, idempotency_key="k")
    assert other.event is not None and other.event["summary"] == "Bob's booking"
    with transaction(runtime.sessions) as session:  # a day later: the scheduler pruned the key
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.calendar_id == cal))
    later = writes.create_event(runtime, cal, {**MEETING, "summary": "Next week"}, idempotency_key="k")
    assert later.event is not None and later.event["summary"] == "Next week"
    assert sorted(e["summary"] for e in emu.events(ANN)) == sorted(["Booking 42", "Bob's booking", "Next week"])
    assert first.event is not None and first.event["id"] not in {other.event["id"], later.event["id"]}


def test_a_written_event_google_forgets_is_swept_by_the_next_full_sync(runtime: Runtime, emu: Any, cal: int) -> None:
    """Written outside any sync, the row carries the calendar's current generation: the next full
    listing that does not show it removes it, as it removes a row any sync wrote."""
    by_write = writes.create_event(runtime, cal, MEETING).event
    by_google = emu.insert_event(ANN, {**MEETING, "summary": "by Google"})
    sync_calendar(runtime, cal)
    assert by_write is not None and set(mirror(runtime, cal)) == {by_write["id"], by_google["id"]}
    with emu.store.lock:  # Google forgets both (tombstones purged): only a full listing can tell
        forgotten = emu.store.calendars[ANN]
        for event_id in (by_write["id"], by_google["id"]):
            del forgotten.events[event_id]
            forgotten.order.remove(event_id)
    emu.invalidate_sync_tokens(ANN)
    sync_calendar(runtime, cal)
    assert mirror(runtime, cal) == {}
    assert_feed_rebuilds_mirror(runtime, cal)


def test_a_write_while_a_worker_holds_the_lease_is_stamped_for_the_listing_in_flight(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """A full sync that listed before the write commits after it: the row must count as seen by it."""
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).where(Calendar.id == cal).values(lease_owner="host:1:w/0"))
    during = writes.create_event(runtime, cal, MEETING).event
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).where(Calendar.id == cal).values(lease_owner=None))
    outside = writes.create_event(runtime, cal, {**MEETING, "summary": "later"}).event
    assert during is not None and outside is not None
    with runtime.sessions() as session:
        gen = session.scalars(select(Calendar.full_sync_gen).where(Calendar.id == cal)).one()
        stamps = dict(session.execute(select(Event.google_id, Event.seen_gen).where(Event.calendar_id == cal)).all())
    assert (stamps[during["id"]], stamps[outside["id"]]) == (gen + 1, gen)


def test_a_stale_if_match_leaves_google_unchanged_and_hands_back_the_current_version(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    made = writes.create_event(runtime, cal, MEETING).event
    assert made is not None
    person = emu.patch_event(ANN, made["id"], {"summary": "Moved by Ann"})  # in Google, no sync yet
    with pytest.raises(WriteConflict) as conflict:
        writes.patch_event(runtime, cal, made["id"], {"summary": "By the app"}, if_match=made["etag"])
    assert conflict.value.current == person
    assert emu.events(ANN) == [person]
    assert mirror(runtime, cal)[made["id"]] == person  # the mirror caught up, as a change found in Google
    assert [(c.origin, c.after) for c in changes(runtime, cal)][-1] == ("google", person)
    ok = writes.patch_event(runtime, cal, made["id"], {"summary": "By the app"}, if_match=person["etag"])
    assert ok.event is not None and ok.event["summary"] == "By the app" == emu.events(ANN)[0]["summary"]
    settle(runtime, emu, cal)
    assert [c.origin for c in changes(runtime, cal)] == ["api", "google", "api"]


def test_a_blind_patch_racing_a_persons_edit_keeps_both_and_the_feed_folds_to_google(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    made = writes.create_event(runtime, cal, MEETING).event
    assert made is not None
    emu.patch_event(ANN, made["id"], {"location": "Room 2"})  # the person, unseen by calsync
    result = writes.patch_event(runtime, cal, made["id"], {"summary": "Renamed"})
    assert result.event is not None and (result.event["summary"], result.event["location"]) == ("Renamed", "Room 2")
    row = changes(runtime, cal)[-1]
    assert (row.origin, row.fields) == ("api", ["location", "summary"])
    settle(runtime, emu, cal)
    assert len(changes(runtime, cal)) == 2


def test_a_sync_that_listed_before_a_write_does_not_take_the_mirror_back(runtime: Runtime, emu: Any, cal: int) -> None:
    made = writes.create_event(runtime, cal, MEETING).event
    assert made is not None
    settle(runtime, emu, cal)
    old = emu.patch_event(ANN, made["id"], {"summary": "v1"})
    newer = writes.patch_event(runtime, cal, made["id"], {"summary": "v2"}).event
    # A listing made between the two writes, applied after the second (as a slow sync would):
    from calsync.feed.append import append_changes
    from calsync.sync.mirror import PageMirror

    with transaction(runtime.sessions) as session:
        page = PageMirror(session, cal, gen=None)
        page.apply([old], [])
        append_changes(session, page.changes, runtime.clock.now())
    assert page.changes == [] and mirror(runtime, cal)[made["id"]] == newer
    settle(runtime, emu, cal)


def _write_once_listed(monkeypatch: pytest.MonkeyPatch, write: Callable[[], object]) -> None:
    """Make the app's write through calsync happen right after a sync's listing was fetched from
    Google and before the sync applies it: the listing predates the write, its commit follows it."""
    from calsync.google.calendar import GoogleCalendar

    fetch = GoogleCalendar.events_page_body
    pending = [write]

    def listed_then_written(self: GoogleCalendar, *args: Any, **kwargs: Any) -> bytes:
        body = fetch(self, *args, **kwargs)
        while pending:
            pending.pop()()
        return body

    monkeypatch.setattr(GoogleCalendar, "events_page_body", listed_then_written)


def test_a_listing_fetched_before_a_reminders_only_write_does_not_undo_it(
    runtime: Runtime, emu: Any, cal: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Google keeps `updated` when only the reminders change: the listing's older version and the
    written one tie on it, so the tie alone cannot tell which is newer."""
    made = writes.create_event(runtime, cal, MEETING).event
    assert made is not None
    settle(runtime, emu, cal)
    emu.patch_event(ANN, made["id"], {"summary": "moved by Ann"})  # the next listing holds the event
    reminders = {"useDefault": False, "overrides": [{"method": "popup", "minutes": 5}]}
    done: list[writes.WriteResult] = []
    _write_once_listed(
        monkeypatch, lambda: done.append(writes.patch_event(runtime, cal, made["id"], {"reminders": reminders}))
    )
    sync_calendar(runtime, cal)
    [written] = done
    assert mirror(runtime, cal)[made["id"]]["reminders"] == reminders
    assert [(c.seq, c.origin) for c in changes(runtime, cal, after=written.seq - 1)] == [(written.seq, "api")]
    monkeypatch.undo()
    settle(runtime, emu, cal)
    assert [c.origin for c in changes(runtime, cal, after=written.seq)] == [], "the app heard its own write"


def test_a_listing_fetched_before_a_delete_does_not_bring_the_event_back(
    runtime: Runtime, emu: Any, cal: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = writes.create_event(runtime, cal, MEETING).event
    assert made is not None
    settle(runtime, emu, cal)
    emu.patch_event(ANN, made["id"], {"summary": "moved by Ann"})
    done: list[writes.WriteResult] = []
    _write_once_listed(monkeypatch, lambda: done.append(writes.delete_event(runtime, cal, made["id"])))
    sync_calendar(runtime, cal)
    [deleted] = done
    assert made["id"] not in mirror(runtime, cal)
    monkeypatch.undo()
    settle(runtime, emu, cal)
    assert [(c.type, c.origin) for c in changes(runtime, cal, after=deleted.seq - 1)] == [("event.deleted", "api")]


def test_an_occurrence_is_patched_and_deleted_by_its_instance_id_without_echo(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    series = writes.create_event(
        runtime,
        cal,
        {
            "summary": "Weekly",
            "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=4"],
            "start": {"dateTime": "2026-03-02T09:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-03-02T09:30:00+01:00", "timeZone": "Europe/Berlin"},
        },
    ).event
    assert series is not None
    assert [o["summary"] for o in _occurrences(runtime, cal)] == ["Weekly"] * 4  # now cached by the process
    second, third = f"{series['id']}_20260309T080000Z", f"{series['id']}_20260316T080000Z"
    moved = writes.patch_event(runtime, cal, second, {"summary": "Moved once"}, send_updates="none").event
    assert moved is not None and moved["recurringEventId"] == series["id"]
    gone = writes.delete_event(runtime, cal, third)
    assert gone.event == mirror(runtime, cal)[third] and gone.event["status"] == "cancelled"
    assert [o["summary"] for o in _occurrences(runtime, cal)] == ["Weekly", "Moved once", "Weekly"]  # read your writes
    rows = changes(runtime, cal)
    assert [(c.type, c.event_id, c.origin) for c in rows] == [
        ("event.created", series["id"], "api"),
        ("event.updated", second, "api"),
        ("event.updated", third, "api"),
    ]
    settle(runtime, emu, cal)
    assert len(changes(runtime, cal)) == 3
    writes.delete_event(runtime, cal, series["id"])  # the series takes its exceptions along
    settle(runtime, emu, cal)
    assert mirror(runtime, cal) == {} and [c.type for c in changes(runtime, cal)[3:]] == ["event.deleted"] * 3


def _occurrences(runtime: Runtime, calendar_id: int) -> list[dict[str, Any]]:
    """March 2026 as `/api/events?singleEvents=true` answers it (the process's cached expansion)."""
    with runtime.sessions() as session:
        calendar = session.get_one(Calendar, calendar_id)
        low, high = parse_instant("2026-03-01T00:00:00Z"), parse_instant("2026-04-01T00:00:00Z")
        return list(availability.single_events_page(session, calendar, low, high, page_token=None)["items"])


def test_a_delete_with_a_stale_if_match_deletes_nothing(runtime: Runtime, emu: Any, cal: int) -> None:
    made = writes.create_event(runtime, cal, MEETING).event
    assert made is not None
    emu.patch_event(ANN, made["id"], {"summary": "Changed"})
    with pytest.raises(WriteConflict):
        writes.delete_event(runtime, cal, made["id"], if_match=made["etag"])
    assert [e["summary"] for e in emu.events(ANN)] == ["Changed"]
    result = writes.delete_event(runtime, cal, made["id"], if_match=emu.events(ANN)[0]["etag"])
    assert emu.events(ANN) == [] and mirror(runtime, cal) == {}
    assert changes(runtime, cal)[-1].seq == result.seq
    settle(runtime, emu, cal)


def test_an_account_connected_read_only_gets_insufficient_scope_then_consents_again_and_writes(
    runtime: Runtime, emu: Any
) -> None:
    account = connect_account(runtime, emu, ANN, scopes=(READONLY,))
    refresh_calendar_list(runtime, account)
    calendar_id = calendar_row_id(runtime, ANN)
    with transaction(runtime.sessions) as session:
        from calsync.store.models import Account

        session.get_one(Account, account).ref = "user-7"
    with pytest.raises(InsufficientScope) as refused:
        writes.create_event(runtime, calendar_id, MEETING)
    assert "consent again" in str(refused.value) and '"ref": "user-7"' in refused.value.reconnect
    assert_names_the_whole_connect_flow(refused.value.reconnect)
    assert emu.events(ANN) == [] and emu.count("calendar.events.insert") == 0
    connect_with_ref(runtime, emu, ANN, "user-7")  # the connect session asks for the write scope too
    result = writes.create_event(runtime, calendar_id, MEETING)
    assert result.event is not None and emu.events(ANN) == [result.event]
    [row] = changes(runtime, calendar_id)
    assert (row.seq, row.origin, row.account_id, row.ref) == (result.seq, "api", account, "user-7")


def test_with_writing_off_the_refusal_names_the_setting(runtime: Runtime, emu: Any) -> None:
    account = connect_account(runtime, emu, ANN, scopes=(READONLY,))
    refresh_calendar_list(runtime, account)
    off = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, google_scopes=(READONLY,)))
    with pytest.raises(InsufficientScope, match="CALSYNC_GOOGLE_SCOPES"):
        writes.create_event(off, calendar_row_id(runtime, ANN), MEETING)


def test_a_grant_that_lost_its_scope_at_google_is_insufficient_scope(runtime: Runtime, emu: Any, cal: int) -> None:
    tokens = emu.issue_tokens(ANN, scopes=[READONLY])  # the stored grant says more than Google allows
    from calsync.accounts.connected import upsert_account
    from calsync.google.oauth import credentials_from_json

    stored = {
        "token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "token_uri": emu.url + "/token",
    }
    creds = credentials_from_json(json.dumps(stored), runtime.settings)
    with transaction(runtime.sessions) as session:
        upsert_account(session, runtime.cipher, ANN, creds, list(WRITER), runtime.clock.now())
    with pytest.raises(InsufficientScope):
        writes.create_event(runtime, cal, MEETING, idempotency_key="k")
    with runtime.sessions() as session:  # nothing was made: the key is free for the retry after consent
        assert session.scalars(select(IdempotencyKey)).all() == []


def test_a_calendar_the_user_may_only_read_gets_googles_403(runtime: Runtime, emu: Any, cal: int) -> None:
    emu.create_user("bob@example.com")
    emu.share_calendar("bob@example.com", ANN, role="reader")
    refresh_calendar_list(runtime, 1)
    shared = calendar_row_id(runtime, "bob@example.com")
    with pytest.raises(Forbidden) as refused:
        writes.create_event(runtime, shared, MEETING)
    assert refused.value.reason == "requiredAccessLevel"
    assert emu.events("bob@example.com") == []


def test_bad_requests_are_refused_before_google(runtime: Runtime, emu: Any, cal: int) -> None:
    refusals: list[tuple[Callable[[], object], str]] = [
        (lambda: writes.create_event(runtime, cal, ["not", "an", "object"]), "body"),
        (lambda: writes.create_event(runtime, cal, MEETING, idempotency_key=""), "Idempotency-Key"),
        (lambda: writes.create_event(runtime, cal, MEETING, idempotency_key="é"), "Idempotency-Key"),
        (lambda: writes.create_event(runtime, cal, MEETING, idempotency_key="x" * 201), "Idempotency-Key"),
        (lambda: writes.create_event(runtime, cal, {**MEETING, "id": "abcde"}, idempotency_key="k"), "id"),
        (lambda: writes.create_event(runtime, cal, MEETING, send_updates="everyone"), "sendUpdates"),
        (lambda: writes.patch_event(runtime, cal, "abcde", {}, if_match="\x01"), "If-Match"),
    ]
    for call, field in refusals:
        with pytest.raises(InvalidWrite) as refused:
            call()
        assert refused.value.field == field
    assert emu.count("calendar.events.insert") == emu.count("calendar.events.patch") == 0
    assert changes(runtime, cal) == []


def test_keys_are_kept_a_day_then_pruned_by_the_schedulers_prune_pass(runtime: Runtime, emu: Any, cal: int) -> None:
    from calsync.work.scheduler import prune

    writes.create_event(runtime, cal, MEETING, idempotency_key="old")
    now = runtime.clock.now()
    with transaction(runtime.sessions) as session:
        prune(session, runtime, now + timedelta(hours=23, minutes=59))
    with runtime.sessions() as session:
        assert [k.key for k in session.scalars(select(IdempotencyKey))] == ["old"]
    with transaction(runtime.sessions) as session:
        prune(session, runtime, now + timedelta(hours=24, seconds=1))
    with runtime.sessions() as session:
        assert session.scalars(select(IdempotencyKey)).all() == []


def test_a_sync_woken_by_the_writes_own_notification_cannot_commit_it_first(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """Google made the write and its answer is on its way; meanwhile a sync lists the new version.
    The sync waits for the write's turn, then finds the etag the write committed: one `api` row."""
    emu.fail_after_write(1, hold=0.6, status=None, method="calendar.events.insert")
    done: list[writes.WriteResult] = []
    writer = threading.Thread(target=lambda: done.append(writes.create_event(runtime, cal, MEETING)))
    writer.start()
    deadline = time.monotonic() + 5
    while not emu.events(ANN) and time.monotonic() < deadline:
        time.sleep(0.01)
    syncer = threading.Thread(target=sync_calendar, args=(runtime, cal))
    syncer.start()  # lists the written event at once, while the write still waits for Google's answer
    writer.join(10)
    syncer.join(10)
    [made] = emu.events(ANN)
    assert [(c.origin, c.event_id) for c in changes(runtime, cal)] == [("api", made["id"])]
    assert done[0].seq == changes(runtime, cal)[0].seq
    settle(runtime, emu, cal)


def test_a_write_takes_from_the_shared_budget_and_goes_where_a_sync_must_wait(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """The user's budget is spent as far as a notification's sync may run ahead; a write still goes
    at once (writes may use the reserve above it; nobody may wait here), and its call is counted."""
    # One call per 0.73 s: the last the syncs may take leaves the writes' share (1.2 s) room for one.
    limits = Limits(per_window=0, per_user_per_window=100)
    runtime.budget = Budget(runtime.sessions, runtime.clock, limits, max_wait=0.0)
    with runtime.sessions() as session:
        account = session.scalars(select(Calendar.account_id).where(Calendar.id == cal)).one()
    while runtime.budget.try_take(Priority.NOTIFICATION, account) == 0.0:
        pass
    with runtime.sessions() as session:
        before = day_count(session, runtime.clock.now()).calls
    made = writes.create_event(runtime, cal, MEETING, idempotency_key="first-in-line")
    assert made.event is not None and made.event["id"] in google_view(emu, ANN)
    with runtime.sessions() as session:
        assert day_count(session, runtime.clock.now()).calls == before + 1
    assert runtime.budget.try_take(Priority.NOTIFICATION, account) > 0.0  # still nothing for a sync
    writes.create_event(runtime, cal, MEETING, idempotency_key="first-in-line")  # a replay calls nothing
    with runtime.sessions() as session:
        assert day_count(session, runtime.clock.now()).calls == before + 1


def test_a_writes_turn_ends_with_its_commit_and_costs_no_statement_of_its_own(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """PostgreSQL holds a write's turn as an advisory lock of its connection; the commit's first
    statement hands it to the transaction, whose end gives it back (a write, a conflict, a delete)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's turn is a file lock, given back when the write's block ends")
    statements: list[str] = []
    event.listen(runtime.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    made = writes.create_event(runtime, cal, MEETING).event
    assert made is not None
    emu.patch_event(ANN, made["id"], {"summary": "Moved by Ann"})
    with pytest.raises(WriteConflict):
        writes.patch_event(runtime, cal, made["id"], {"summary": "By the app"}, if_match=made["etag"])
    writes.delete_event(runtime, cal, made["id"])
    assert not [s for s in statements if s.startswith("SELECT pg_advisory_unlock")]
    assert sum("pg_advisory_unlock" in s for s in statements) == 3  # each write's commit handed its turn over
    with runtime.engine.connect() as conn:
        held = conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar()
    assert held == 0
    settle(runtime, emu, cal)


def test_a_write_whose_first_statement_is_cancelled_gives_its_turn_back(
    runtime: Runtime, emu: Any, cal: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first statement takes the calendar's turn, then waits for the budget's rows; cancelled
    there (here by a lock timeout), it raised having taken a turn it never reported, the connection
    went back to the pool still holding it, and every later sync of the calendar waited for good."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's turn is a file lock, given back when the write's block ends")
    monkeypatch.setattr(turns, "TURN_WAIT", 0.2)  # the write's own limit on its lock waits
    with runtime.engine.connect() as blocker:  # a claim holding the budget's rows
        blocker.execute(text("SELECT scope FROM quota_budget FOR UPDATE")).all()
        with pytest.raises(CalendarHeld) as refused:
            writes.create_event(runtime, cal, MEETING)
        blocker.rollback()
    assert isinstance(refused.value.__cause__, DBAPIError) and "lock timeout" in str(refused.value.__cause__)
    with runtime.engine.connect() as conn:
        held = conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"  # of this database: not another run's
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar()
    assert held == 0
    synced = threading.Event()
    other = Runtime.create(runtime.settings)  # the worker: another process's connection
    try:

        def sync() -> None:
            sync_calendar(other, cal)
            synced.set()

        threading.Thread(target=sync, daemon=True).start()
        assert synced.wait(10), "the calendar's sync waited for a turn nobody would give back"
    finally:
        other.close()
    assert emu.events(ANN) == []


def test_a_keyed_create_costs_six_statements_and_a_patch_five_on_postgresql(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """Each statement is a round trip added to Google's own latency. Before Google: the calendar with
    its turn and the budget's rows, the key's claim, the budget's take. After: the generation with the
    turn's hand-over, the event, the feed row with the key's mark. (A patch has no key to claim.)"""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no round trips")
    statements: list[str] = []
    event.listen(runtime.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    made = writes.create_event(runtime, cal, MEETING, idempotency_key="counted")
    created, statements[:] = list(statements), []
    assert made.event is not None
    writes.patch_event(runtime, cal, made.event["id"], {"summary": "Moved"}, if_match=made.event["etag"])
    patched = list(statements)
    heads = [" ".join(s.split()[:3]) for s in created]
    assert len(created) == 6, heads
    assert "pg_advisory_lock" in created[0] and "quota_budget" in created[0] and "FOR UPDATE" in created[0]
    assert created[1].startswith("INSERT INTO idempotency_keys") and created[2].startswith("UPDATE quota_budget")
    assert "pg_try_advisory_xact_lock" in created[3] and created[4].startswith("INSERT INTO events")
    assert "INSERT INTO changes" in created[5] and "UPDATE idempotency_keys" in created[5]
    assert len(patched) == 5, [" ".join(s.split()[:3]) for s in patched]
    with runtime.sessions() as session:
        key = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == "counted")).one()
    assert key.seq == made.seq  # marked by the feed row's statement
    settle(runtime, emu, cal)


def _account_of(runtime: Runtime, email: str) -> int:
    with runtime.sessions() as session:
        return session.scalars(select(Account.id).where(Account.email == email)).one()
