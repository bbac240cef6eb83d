"""The sync engine against the emulator over HTTP, on SQLite and PostgreSQL: the mirror must equal
what Google holds after every kind of change, and the diff log must hold exactly the real changes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from calsync.clock import FrozenClock
from calsync.errors import (
    AuthRevoked,
    BackendError,
    GoogleNotFound,
    LeaseLost,
    RateLimited,
)
from calsync.runtime import Runtime
from calsync.store.activity import rate
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Event
from calsync.store.states import ChangeKind
from calsync.sync import run
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.diff import implied_occurrence
from calsync.sync.run import SyncKind, SyncResult, sync_calendar
from calsync.work.quota import change_gap
from tests.sync_support import (
    assert_feed_rebuilds_mirror,
    calendar_row_id,
    changes,
    connect_account,
    google_view,
    last_seq,
    mirror,
)

ALICE = "alice@example.com"


def timed(summary: str, day: int = 5, hour: int = 10, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": f"2026-01-{day:02d}T{hour:02d}:00:00Z"},
        "end": {"dateTime": f"2026-01-{day:02d}T{hour + 1:02d}:00:00Z"},
        **extra,
    }


def weekly(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": "2026-01-05T09:00:00+01:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-01-05T09:30:00+01:00", "timeZone": "Europe/Berlin"},
        "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=10"],
    }


@pytest.fixture
def cal(runtime: Runtime, emu: Any) -> int:
    """Alice's primary calendar, connected and baselined with two events."""
    account_id = connect_account(runtime, emu, ALICE)
    emu.insert_event(ALICE, timed("one"))
    emu.insert_event(ALICE, timed("two", day=6))
    refresh_calendar_list(runtime, account_id)
    cal_id = calendar_row_id(runtime, ALICE)
    assert sync_calendar(runtime, cal_id).kind == SyncKind.FULL
    return cal_id


def event_id(emu: Any, summary: str) -> str:
    return str(next(e["id"] for e in emu.events(ALICE) if e.get("summary") == summary))


def assert_mirrors_google(runtime: Runtime, emu: Any, cal_id: int, google_id: str = ALICE) -> None:
    assert mirror(runtime, cal_id) == google_view(emu, google_id)


def one_change(runtime: Runtime, cal_id: int, after: int) -> Any:
    found = changes(runtime, cal_id, after=after)
    assert len(found) == 1, [(c.kind, c.event_id, c.fields) for c in found]
    return found[0]


# Full sync ---------------------------------------------------------------------------------------
def test_full_sync_of_three_calendars_mirrors_them_with_one_snapshot_row_per_event(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    emu.insert_event(ALICE, timed("lunch"))
    series = emu.insert_event(ALICE, weekly("standup"))
    emu.patch_instance(ALICE, series["id"], "2026-01-12T08:00:00Z", {"summary": "standup (moved)"})
    emu.cancel_instance(ALICE, series["id"], "2026-01-19T08:00:00Z")
    gone = emu.insert_event(ALICE, timed("deleted before we came"))
    emu.delete_event(ALICE, gone["id"])
    big = emu.create_calendar(ALICE, "Big")
    emu.bulk_insert_events(big, [timed(f"event {i}", day=1 + i % 28, hour=i % 20) for i in range(5000)])
    small = emu.create_calendar(ALICE, "Small")
    emu.insert_event(small, {"summary": "holiday", "start": {"date": "2026-02-01"}, "end": {"date": "2026-02-03"}})

    listed = refresh_calendar_list(runtime, account_id)
    assert len(listed.added) == 3
    for google_id, events in ((ALICE, 4), (big, 5000), (small, 1)):
        cal_id = calendar_row_id(runtime, google_id)
        before_calls = emu.count("calendar.events.list", google_id)
        result = sync_calendar(runtime, cal_id)
        pages = max(1, math.ceil(events / 2500))
        start = last_seq(runtime)
        assert result.kind == SyncKind.FULL and result.pages == pages
        assert (result.created, result.updated, result.deleted, result.snapshots) == (0, 0, 0, events)
        assert emu.count("calendar.events.list", google_id) - before_calls == pages
        assert all(r.params.get("maxResults") == "2500" for r in emu.requests if r.api_method == "calendar.events.list")
        assert_mirrors_google(runtime, emu, cal_id, google_id)
        assert_feed_rebuilds_mirror(runtime, cal_id)
        rows = changes(runtime, cal_id)
        assert len(rows) == events and {(c.type, c.before is None, c.fields == []) for c in rows} == {
            ("event.snapshot", True, True)
        }
        assert [c.seq for c in rows] == sorted(c.seq for c in rows) and rows[0].seq > start - len(rows)
        with runtime.sessions() as session:
            row = session.get_one(Calendar, cal_id)
            assert row.baseline_done and row.sync_token and row.sync_state == "synced"
            assert row.last_synced_at is not None and row.last_error is None
    assert len(mirror(runtime, calendar_row_id(runtime, big))) == 5000


def test_sync_reports_progress_per_page_and_honours_the_page_size(runtime: Runtime, emu: Any, cal: int) -> None:
    for i in range(7):
        emu.insert_event(ALICE, timed(f"new {i}"))
    seen: list[tuple[int, int | None]] = []
    result = sync_calendar(runtime, cal, page_size=3, progress=lambda n, total: seen.append((n, total)))
    assert result == SyncResult(kind=SyncKind.INCREMENTAL, pages=3, events_seen=7, created=7, updated=0, deleted=0)
    assert seen == [(3, None), (6, None), (7, None)]
    assert_mirrors_google(runtime, emu, cal)


def test_sync_leaves_the_work_queue_fields_to_the_worker(runtime: Runtime, emu: Any, cal: int) -> None:
    due = datetime(2030, 1, 1, tzinfo=UTC)
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Calendar)
            .where(Calendar.id == cal)
            .values(sync_requested=7, sync_done=5, due_at=due, error_count=2, retry_at=due)
        )
    emu.insert_event(ALICE, timed("three"))
    sync_calendar(runtime, cal)
    with runtime.sessions() as session:
        row = session.get_one(Calendar, cal)
        assert (row.sync_requested, row.sync_done, row.due_at, row.error_count, row.retry_at) == (7, 5, due, 2, due)


# Every kind of change ----------------------------------------------------------------------------
def test_syncs_without_a_finish_reuse_one_closing_statement(runtime: Runtime, emu: Any, cal: int) -> None:
    """The closing UPDATE is built once per set of columns, also for syncs that no worker finishes
    (the CLI's): the statements it keeps do not grow with every sync."""
    sync_calendar(runtime, cal)
    kept = len(run._FINISH_STATEMENTS)
    for _ in range(3):
        sync_calendar(runtime, cal)
    assert len(run._FINISH_STATEMENTS) == kept


def test_a_created_event_is_one_created_change(runtime: Runtime, emu: Any, cal: int) -> None:
    start = last_seq(runtime)
    created = emu.insert_event(ALICE, timed("three"))
    result = sync_calendar(runtime, cal)
    assert (result.kind, result.created, result.updated, result.deleted) == (SyncKind.INCREMENTAL, 1, 0, 0)
    change = one_change(runtime, cal, start)
    assert (change.kind, change.event_id, change.fields) == ("created", created["id"], [])
    assert change.before is None and change.after == created
    assert_mirrors_google(runtime, emu, cal)


@pytest.mark.parametrize(
    "field, value",
    [
        ("summary", "renamed"),
        ("location", "Room 7"),
        ("description", "agenda attached"),
        ("start", {"dateTime": "2026-01-05T09:30:00Z"}),
        ("end", {"dateTime": "2026-01-05T12:00:00Z"}),
        ("attendees", [{"email": "bob@example.com"}, {"email": "carol@example.com"}]),
    ],
)
def test_an_edited_field_is_one_updated_change_naming_it(
    runtime: Runtime, emu: Any, cal: int, field: str, value: Any
) -> None:
    target = event_id(emu, "one")
    before = mirror(runtime, cal)[target]
    start = last_seq(runtime)
    after = emu.patch_event(ALICE, target, {field: value})
    assert sync_calendar(runtime, cal).updated == 1
    change = one_change(runtime, cal, start)
    assert (change.kind, change.event_id, change.fields) == ("updated", target, [field])
    assert change.before == before and change.after == after
    assert_mirrors_google(runtime, emu, cal)


def test_an_attendee_answering_is_an_attendees_change(runtime: Runtime, emu: Any, cal: int) -> None:
    target = event_id(emu, "one")
    emu.patch_event(ALICE, target, {"attendees": [{"email": "bob@example.com"}]})
    sync_calendar(runtime, cal)
    start = last_seq(runtime)
    emu.patch_event(ALICE, target, {"attendees": [{"email": "bob@example.com", "responseStatus": "accepted"}]})
    sync_calendar(runtime, cal)
    change = one_change(runtime, cal, start)
    assert change.fields == ["attendees"]
    assert change.before["attendees"][0]["responseStatus"] == "needsAction"
    assert change.after["attendees"][0]["responseStatus"] == "accepted"


def test_a_deleted_event_is_one_deleted_change_and_leaves_the_mirror(runtime: Runtime, emu: Any, cal: int) -> None:
    target = event_id(emu, "two")
    before = mirror(runtime, cal)[target]
    start = last_seq(runtime)
    emu.delete_event(ALICE, target)
    assert sync_calendar(runtime, cal).deleted == 1
    change = one_change(runtime, cal, start)
    assert (change.kind, change.event_id, change.before, change.after) == ("deleted", target, before, None)
    assert target not in mirror(runtime, cal)
    assert_mirrors_google(runtime, emu, cal)


def test_an_event_created_and_deleted_between_syncs_leaves_no_trace(runtime: Runtime, emu: Any, cal: int) -> None:
    start = last_seq(runtime)
    fleeting = emu.insert_event(ALICE, timed("fleeting"))
    emu.delete_event(ALICE, fleeting["id"])
    result = sync_calendar(runtime, cal)
    assert result.events_seen == 1 and changes(runtime, cal, after=start) == []
    assert_mirrors_google(runtime, emu, cal)


def test_noise_alone_is_an_update_naming_no_field(runtime: Runtime, emu: Any, cal: int) -> None:
    """Only etag/updated moved: no field changed, but the mirror takes the new version, so the feed does too."""
    target = event_id(emu, "one")
    start = last_seq(runtime)
    old = mirror(runtime, cal)[target]
    touched = emu.patch_event(ALICE, target, {"summary": "one"})
    assert touched["etag"] != old["etag"]
    result = sync_calendar(runtime, cal)
    assert result.events_seen == 1 and (result.created, result.updated, result.deleted) == (0, 1, 0)
    change = one_change(runtime, cal, start)
    assert (change.type, change.fields, change.before, change.after) == ("event.updated", [], old, touched)
    assert mirror(runtime, cal)[target]["etag"] == touched["etag"]
    assert_feed_rebuilds_mirror(runtime, cal)
    with runtime.sessions() as session:
        row = session.scalars(select(Event).where(Event.google_id == target)).one()
        assert row.etag == touched["etag"] and row.updated == touched["updated"]


def test_a_new_recurring_series_is_one_created_change(runtime: Runtime, emu: Any, cal: int) -> None:
    start = last_seq(runtime)
    series = emu.insert_event(ALICE, weekly("standup"))
    sync_calendar(runtime, cal)
    change = one_change(runtime, cal, start)
    assert (change.kind, change.event_id, change.after) == ("created", series["id"], series)
    assert mirror(runtime, cal)[series["id"]]["recurrence"] == ["RRULE:FREQ=WEEKLY;COUNT=10"]
    assert_mirrors_google(runtime, emu, cal)


def test_a_modified_occurrence_is_an_update_of_the_occurrence_the_series_implied(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    series = emu.insert_event(ALICE, weekly("standup"))
    sync_calendar(runtime, cal)
    start = last_seq(runtime)
    moved = emu.patch_instance(
        ALICE,
        series["id"],
        "2026-01-12T08:00:00Z",
        {
            "start": {"dateTime": "2026-01-12T10:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-01-12T10:30:00+01:00", "timeZone": "Europe/Berlin"},
        },
    )
    sync_calendar(runtime, cal)
    change = one_change(runtime, cal, start)
    assert (change.kind, change.event_id) == ("updated", moved["id"])
    assert change.fields == ["end", "start"]
    assert change.before == implied_occurrence(series, moved["id"], moved["originalStartTime"])
    assert change.before["start"] == {"dateTime": "2026-01-12T09:00:00+01:00", "timeZone": "Europe/Berlin"}
    assert change.after == moved
    assert_mirrors_google(runtime, emu, cal)
    # Editing the exception again compares with the mirrored exception.
    start = last_seq(runtime)
    renamed = emu.patch_event(ALICE, moved["id"], {"summary": "standup (late)"})
    sync_calendar(runtime, cal)
    change = one_change(runtime, cal, start)
    assert (change.kind, change.fields, change.before, change.after) == ("updated", ["summary"], moved, renamed)


def test_a_cancelled_occurrence_is_an_update_to_cancelled_kept_in_the_mirror(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """Google lists the cancelled occurrence and the mirror keeps it (it hides one instance), so the
    feed sets it too: an update from the occurrence the series implied to the cancelled one."""
    series = emu.insert_event(ALICE, weekly("standup"))
    sync_calendar(runtime, cal)
    start = last_seq(runtime)
    emu.cancel_instance(ALICE, series["id"], "2026-01-19T08:00:00Z")
    sync_calendar(runtime, cal)
    occurrence_id = f"{series['id']}_20260119T080000Z"
    change = one_change(runtime, cal, start)
    kept = mirror(runtime, cal)[occurrence_id]
    assert (change.kind, change.event_id, change.after) == ("updated", occurrence_id, kept)
    # Google's cancelled form leaves out the summary, times, organizer...: they did not change
    assert change.fields == ["status"]
    assert change.before["id"] == occurrence_id and change.before["recurringEventId"] == series["id"]
    assert change.before["summary"] == "standup"
    assert change.before["start"] == {"dateTime": "2026-01-19T09:00:00+01:00", "timeZone": "Europe/Berlin"}
    assert change.before["end"] == {"dateTime": "2026-01-19T09:30:00+01:00", "timeZone": "Europe/Berlin"}
    assert kept["status"] == "cancelled" and kept["originalStartTime"]["dateTime"] == "2026-01-19T09:00:00+01:00"
    assert_mirrors_google(runtime, emu, cal)
    assert_feed_rebuilds_mirror(runtime, cal)


def test_cancelling_a_modified_occurrence_updates_the_mirrored_exception_to_cancelled(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    series = emu.insert_event(ALICE, weekly("standup"))
    moved = emu.patch_instance(ALICE, series["id"], "2026-01-12T08:00:00Z", {"summary": "special"})
    sync_calendar(runtime, cal)
    start = last_seq(runtime)
    emu.delete_event(ALICE, moved["id"])
    sync_calendar(runtime, cal)
    change = one_change(runtime, cal, start)
    kept = mirror(runtime, cal)[moved["id"]]
    assert (change.kind, change.event_id, change.before, change.after) == ("updated", moved["id"], moved, kept)
    assert kept["status"] == "cancelled" and change.fields == ["status"]
    assert_mirrors_google(runtime, emu, cal)
    assert_feed_rebuilds_mirror(runtime, cal)


def test_deleting_a_series_deletes_it_and_its_live_exceptions(runtime: Runtime, emu: Any, cal: int) -> None:
    series = emu.insert_event(ALICE, weekly("standup"))
    moved = emu.patch_instance(ALICE, series["id"], "2026-01-12T08:00:00Z", {"summary": "special"})
    emu.cancel_instance(ALICE, series["id"], "2026-01-19T08:00:00Z")
    sync_calendar(runtime, cal)
    series = next(e for e in emu.events(ALICE) if e["id"] == series["id"])
    cancelled_id = f"{series['id']}_20260119T080000Z"
    cancelled = mirror(runtime, cal)[cancelled_id]
    start = last_seq(runtime)
    emu.delete_event(ALICE, series["id"])
    result = sync_calendar(runtime, cal)
    found = changes(runtime, cal, after=start)
    # The cancelled occurrence was in the mirror (and the feed) too: it goes with its series.
    assert sorted((c.kind, c.event_id) for c in found) == sorted(
        [("deleted", series["id"]), ("deleted", moved["id"]), ("deleted", cancelled_id)]
    )
    assert {c.event_id: c.before for c in found} == {series["id"]: series, moved["id"]: moved, cancelled_id: cancelled}
    assert all(c.after is None and c.fields == [] for c in found) and result.deleted == 3
    assert not any(e.startswith(series["id"]) for e in mirror(runtime, cal))
    assert_mirrors_google(runtime, emu, cal)
    assert_feed_rebuilds_mirror(runtime, cal)


def test_a_series_edit_is_one_change_of_the_series(runtime: Runtime, emu: Any, cal: int) -> None:
    series = emu.insert_event(ALICE, weekly("standup"))
    sync_calendar(runtime, cal)
    start = last_seq(runtime)
    after = emu.patch_event(ALICE, series["id"], {"recurrence": ["RRULE:FREQ=WEEKLY;COUNT=5"], "location": "Hall"})
    sync_calendar(runtime, cal)
    change = one_change(runtime, cal, start)
    assert (change.kind, change.fields, change.after) == ("updated", ["location", "recurrence"], after)
    assert_mirrors_google(runtime, emu, cal)


# 410 and forced resyncs ---------------------------------------------------------------------------
def test_an_expired_sync_token_resyncs_and_records_exactly_the_real_differences(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    series = emu.insert_event(ALICE, weekly("standup"))
    keep = emu.insert_event(ALICE, timed("untouched"))
    sync_calendar(runtime, cal)
    start = last_seq(runtime)
    mirrored = mirror(runtime, cal)
    one, two = event_id(emu, "one"), event_id(emu, "two")
    emu.delete_event(ALICE, one)
    edited = emu.patch_event(ALICE, two, {"summary": "two (edited)"})
    emu.patch_event(ALICE, keep["id"], {"summary": "untouched"})  # noise only
    created = emu.insert_event(ALICE, timed("new while the token expired"))
    emu.cancel_instance(ALICE, series["id"], "2026-01-26T08:00:00Z")
    emu.invalidate_sync_tokens(ALICE)

    result = sync_calendar(runtime, cal, page_size=2)
    assert result.kind == SyncKind.RESYNC and result.pages >= 3
    found = {(c.kind, c.event_id): c for c in changes(runtime, cal, after=start)}
    occurrence = f"{series['id']}_20260126T080000Z"
    assert set(found) == {
        (ChangeKind.DELETED, one),
        (ChangeKind.UPDATED, two),
        (ChangeKind.CREATED, created["id"]),
        (ChangeKind.UPDATED, occurrence),
        (ChangeKind.UPDATED, keep["id"]),
    }
    assert found[(ChangeKind.DELETED, one)].before == mirrored[one]
    assert found[(ChangeKind.UPDATED, two)].fields == ["summary"] and found[(ChangeKind.UPDATED, two)].after == edited
    assert found[(ChangeKind.UPDATED, keep["id"])].fields == []  # noise only: a new version, no field changed
    assert found[(ChangeKind.CREATED, created["id"])].after == created
    assert (result.created, result.updated, result.deleted) == (1, 3, 1)
    assert_mirrors_google(runtime, emu, cal)
    assert_feed_rebuilds_mirror(runtime, cal)
    with runtime.sessions() as session:
        assert session.get_one(Calendar, cal).sync_token is not None
    # The new token works: the next sync is incremental and finds nothing.
    again = sync_calendar(runtime, cal)
    assert again.kind == SyncKind.INCREMENTAL and again.events_seen == 0


def test_a_sync_token_google_cannot_read_resyncs_instead_of_failing_for_good(
    runtime: Runtime, emu: Any, cal: int
) -> None:
    """Google answers 400 "Invalid sync token value." for a token it cannot read at all; the calendar
    failed every sync after that (the same stored token each time). It resyncs, as for a 410."""
    emu.insert_event(ALICE, timed("before"))
    sync_calendar(runtime, cal)
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).where(Calendar.id == cal).values(sync_token="not-a-token-google-made"))
    created = emu.insert_event(ALICE, timed("after"))
    result = sync_calendar(runtime, cal)
    assert result.kind == SyncKind.RESYNC
    assert [(c.kind, c.event_id) for c in changes(runtime, cal, after=0)][-1] == (ChangeKind.CREATED, created["id"])
    assert_mirrors_google(runtime, emu, cal)
    assert sync_calendar(runtime, cal).kind == SyncKind.INCREMENTAL


def test_a_410_on_the_sync_token_resyncs_whatever_its_reason(runtime: Runtime, emu: Any, cal: int) -> None:
    """Google's reference: an expired token is "a 410 GONE response", and the client syncs in full.
    Only a 410 saying `fullSyncRequired` resynced; any other was "not found", and the calendar failed
    on the same stored token at every reconciliation, its changes lost for good."""
    sync_calendar(runtime, cal)
    created = emu.insert_event(ALICE, timed("while the token was refused"))
    emu.fail_next(1, status=410, reason="gone", method="calendar.events.list")
    result = sync_calendar(runtime, cal)
    assert result.kind == SyncKind.RESYNC
    assert [(c.kind, c.event_id) for c in changes(runtime, cal, after=0)][-1] == (ChangeKind.CREATED, created["id"])
    assert_mirrors_google(runtime, emu, cal)


def test_a_first_sync_cut_short_goes_on_and_the_feed_holds_every_version_once(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    for i in range(12):
        emu.insert_event(ALICE, timed(f"event {i}", day=1 + i))
    refresh_calendar_list(runtime, account_id)
    cal_id = calendar_row_id(runtime, ALICE)

    def fail_after_two_pages(seen: int, _total: int | None) -> None:
        if seen == 6:  # the request for page 4 goes out after this: it fails (page 3's may be in already)
            emu.fail_next(1, 503, "backendError", method="calendar.events.list")

    with pytest.raises(BackendError):
        sync_calendar(runtime, cal_id, page_size=3, progress=fail_after_two_pages)
    stored = mirror(runtime, cal_id)
    assert 6 <= len(stored) < 12
    assert sorted(str(c.event_id) for c in changes(runtime, cal_id)) == sorted(stored)  # one snapshot each
    zero, one = event_id(emu, "event 0"), event_id(emu, "event 1")
    emu.delete_event(ALICE, zero)  # mirrored by the first attempt, deleted before the second
    edited = emu.patch_event(ALICE, one, {"summary": "event 1 (edited)"})  # mirrored, then edited
    late = emu.insert_event(ALICE, timed("late", day=20))
    start = last_seq(runtime)
    result = sync_calendar(runtime, cal_id, page_size=3)
    assert result.kind == SyncKind.FULL
    found = changes(runtime, cal_id, after=start)
    kinds = {str(c.event_id): str(c.kind) for c in found}
    assert len(kinds) == len(found)  # one row per event at most
    assert kinds[zero] == "deleted" and kinds[one] == "updated" and kinds[late["id"]] == "snapshot"
    assert next(c for c in found if c.event_id == one).after == edited
    # Every other event gets its snapshot in this attempt only if the first did not store it.
    assert {e for e, k in kinds.items() if k == "snapshot"} == set(mirror(runtime, cal_id)) - set(stored)
    assert_mirrors_google(runtime, emu, cal_id)
    assert_feed_rebuilds_mirror(runtime, cal_id)


def test_events_missing_from_a_full_listing_are_deleted(runtime: Runtime, emu: Any, cal: int) -> None:
    ghost = {"kind": "calendar#event", "id": "ghost12345", "status": "confirmed", "summary": "only here"}
    with transaction(runtime.sessions) as session:
        session.add(Event(calendar_id=cal, google_id="ghost12345", status="confirmed", data=ghost, seen_gen=0))
    start = last_seq(runtime)
    result = sync_calendar(runtime, cal, full=True)
    assert result.kind == SyncKind.RESYNC and result.deleted == 1
    change = one_change(runtime, cal, start)
    assert (change.kind, change.event_id, change.before) == ("deleted", "ghost12345", ghost)
    assert_mirrors_google(runtime, emu, cal)


def test_a_forced_full_sync_of_an_unchanged_calendar_records_nothing(runtime: Runtime, emu: Any, cal: int) -> None:
    series = emu.insert_event(ALICE, weekly("standup"))
    emu.cancel_instance(ALICE, series["id"], "2026-01-19T08:00:00Z")
    emu.patch_instance(ALICE, series["id"], "2026-01-26T08:00:00Z", {"summary": "x"})
    sync_calendar(runtime, cal)
    start = last_seq(runtime)
    result = sync_calendar(runtime, cal, full=True)
    assert result.kind == SyncKind.RESYNC and (result.created, result.updated, result.deleted) == (0, 0, 0)
    assert changes(runtime, cal, after=start) == []
    assert_mirrors_google(runtime, emu, cal)


# Credentials ----------------------------------------------------------------------------------------
def test_a_refreshed_access_token_is_persisted_and_reused(runtime: Runtime, emu: Any, cal: int) -> None:
    with runtime.sessions() as session:
        stored = session.scalars(select(Account.credentials)).one()
    emu.expire_access_tokens()
    refreshes = emu.count("oauth.token")
    emu.insert_event(ALICE, timed("after expiry"))
    assert sync_calendar(runtime, cal).created == 1
    assert emu.count("oauth.token") == refreshes + 1
    with runtime.sessions() as session:
        assert session.scalars(select(Account.credentials)).one() != stored
    emu.insert_event(ALICE, timed("later"))
    assert sync_calendar(runtime, cal).created == 1
    assert emu.count("oauth.token") == refreshes + 1


def test_a_token_refreshed_before_a_failed_call_is_kept(runtime: Runtime, emu: Any, cal: int) -> None:
    emu.expire_access_tokens()
    refreshes = emu.count("oauth.token")
    emu.fail_next(1, status=503, reason="backendError", method="calendar.events.list")
    with pytest.raises(BackendError):
        sync_calendar(runtime, cal)
    assert emu.count("oauth.token") == refreshes + 1
    sync_calendar(runtime, cal)
    assert emu.count("oauth.token") == refreshes + 1


def test_a_revoked_grant_marks_the_account_and_other_accounts_go_on(runtime: Runtime, emu: Any, cal: int) -> None:
    bob_id = connect_account(runtime, emu, "bob@example.com")
    refresh_calendar_list(runtime, bob_id)
    bob_cal = calendar_row_id(runtime, "bob@example.com")
    sync_calendar(runtime, bob_cal)
    emu.revoke_grant(ALICE)
    emu.insert_event(ALICE, timed("unseen"))
    emu.insert_event("bob@example.com", timed("seen"))
    with pytest.raises(AuthRevoked):
        sync_calendar(runtime, cal)
    with runtime.sessions() as session:
        alice = session.scalars(select(Account).where(Account.email == ALICE)).one()
        assert alice.status == "reauth_required" and alice.last_error
        assert session.get_one(Calendar, cal).sync_state == "error"
        assert session.scalars(select(Account.status).where(Account.id == bob_id)).one() == "active"
    assert sync_calendar(runtime, bob_cal).created == 1
    assert_mirrors_google(runtime, emu, bob_cal, "bob@example.com")


# Errors that the worker handles ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "status, reason, error",
    [
        (429, "rateLimitExceeded", RateLimited),
        (403, "userRateLimitExceeded", RateLimited),
        (503, "backendError", BackendError),
    ],
)
def test_transient_errors_propagate_and_write_nothing(
    runtime: Runtime, emu: Any, cal: int, status: int, reason: str, error: type
) -> None:
    emu.insert_event(ALICE, timed("three"))
    start = last_seq(runtime)
    with runtime.sessions() as session:
        token = session.get_one(Calendar, cal).sync_token
    emu.fail_next(1, status=status, reason=reason, method="calendar.events.list")
    with pytest.raises(error):
        sync_calendar(runtime, cal)
    with runtime.sessions() as session:
        assert session.get_one(Calendar, cal).sync_token == token
    assert changes(runtime, cal, after=start) == []
    assert sync_calendar(runtime, cal).created == 1


def test_a_calendar_gone_from_google_raises_not_found(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    other = emu.create_calendar(ALICE, "Team")
    refresh_calendar_list(runtime, account_id)
    emu.remove_calendar(ALICE, other)
    with pytest.raises(GoogleNotFound):
        sync_calendar(runtime, calendar_row_id(runtime, other))


# The diff log -----------------------------------------------------------------------------------------
def test_seq_is_strictly_increasing_and_gap_free_across_calendars(runtime: Runtime, emu: Any, cal: int) -> None:
    account_id = calendar_account(runtime, cal)
    team = emu.create_calendar(ALICE, "Team")
    refresh_calendar_list(runtime, account_id)
    team_cal = calendar_row_id(runtime, team)
    sync_calendar(runtime, team_cal)
    one = event_id(emu, "one")
    for round_ in range(3):
        emu.insert_event(ALICE, timed(f"a{round_}"))
        emu.insert_event(team, timed(f"b{round_}"))
        emu.insert_event(team, timed(f"c{round_}"))
        emu.patch_event(ALICE, one, {"summary": f"one v{round_}"})
        sync_calendar(runtime, team_cal)
        sync_calendar(runtime, cal)
    seqs = [c.seq for c in changes(runtime, lifecycle=True)]
    # The fixture's two snapshot rows and twelve changes, among the calendars' lifecycle rows.
    assert seqs == list(range(1, len(seqs) + 1)) and len(changes(runtime)) == 14
    assert {c.calendar_id for c in changes(runtime)} == {cal, team_cal}


def calendar_account(runtime: Runtime, cal_id: int) -> int:
    with runtime.sessions() as session:
        return session.get_one(Calendar, cal_id).account_id


# Leases -----------------------------------------------------------------------------------------------
def test_a_sync_whose_lease_is_held_by_another_worker_writes_nothing(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    emu.insert_event(ALICE, timed("one"))
    refresh_calendar_list(runtime, account_id)
    cal_id = calendar_row_id(runtime, ALICE)
    until = datetime(2030, 1, 1, tzinfo=UTC)
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).where(Calendar.id == cal_id).values(lease_owner="other", lease_until=until))
    with pytest.raises(LeaseLost):
        sync_calendar(runtime, cal_id, lease_owner="me")
    with runtime.sessions() as session:
        row = session.get_one(Calendar, cal_id)
        assert (row.sync_token, row.baseline_done, row.full_sync_gen, row.lease_until) == (None, False, 0, until)
        assert session.scalars(select(Event)).all() == []


def test_a_sync_under_its_own_lease_extends_it(settings: Any, emu: Any) -> None:
    clock = FrozenClock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    runtime = Runtime.create(settings, clock=clock)
    try:
        account_id = connect_account(runtime, emu, ALICE)
        refresh_calendar_list(runtime, account_id)
        cal_id = calendar_row_id(runtime, ALICE)
        with transaction(runtime.sessions) as session:
            session.execute(
                update(Calendar)
                .where(Calendar.id == cal_id)
                .values(lease_owner="me", lease_until=clock.now() + timedelta(seconds=5))
            )
        clock.advance(3)
        sync_calendar(runtime, cal_id, lease_owner="me")
        with runtime.sessions() as session:
            row = session.get_one(Calendar, cal_id)
            assert row.lease_until == clock.now() + settings.lease
            assert row.last_synced_at == clock.now() and row.lease_owner == "me"
    finally:
        runtime.close()


def test_a_first_sync_gives_the_calendar_a_rate_from_its_recently_updated_events(runtime: Runtime, emu: Any) -> None:
    """A busy calendar connected in a mass onboarding must not count as quiet until its changes are seen."""
    account_id = connect_account(runtime, emu, ALICE)
    quiet_id = emu.create_calendar(ALICE, "quiet")
    now = datetime.now(UTC)
    real = emu.clock
    try:
        for i in range(28):  # four a day over the last week, the newest an hour ago
            emu.clock = lambda i=i: now - timedelta(hours=1 + 6 * i)
            emu.insert_event(ALICE, timed(f"e{i}"))
        emu.clock = lambda: now - timedelta(days=30)  # older than a week: no part of the rate
        emu.insert_event(ALICE, timed("old"))
        emu.insert_event(quiet_id, timed("old quiet"))
    finally:
        emu.clock = real
    refresh_calendar_list(runtime, account_id)
    busy, quiet = calendar_row_id(runtime, ALICE), calendar_row_id(runtime, quiet_id)
    for cal_id in (busy, quiet):
        assert sync_calendar(runtime, cal_id).kind == SyncKind.FULL
    with runtime.sessions() as session:
        rows = {r.id: r for r in session.execute(select(Calendar).where(Calendar.id.in_([busy, quiet]))).scalars()}
    at = datetime.now(UTC).timestamp()
    row = rows[busy]
    assert row.activity is not None
    assert rate(row.activity, at) * 86400 == pytest.approx(4, rel=0.05)
    assert row.last_changed_at is not None
    assert abs(row.last_changed_at.replace(tzinfo=UTC).timestamp() - (now.timestamp() - 3600)) < 5
    assert change_gap(at, last_change=None, since=None, activity=row.activity) == pytest.approx(6 * 3600, rel=0.05)
    # Nothing updated within the week: no rate; its last change (a month ago) says how quiet it is.
    row = rows[quiet]
    assert row.activity is None and row.last_changed_at is not None
    gap = change_gap(at, last_change=row.last_changed_at.replace(tzinfo=UTC).timestamp(), since=None, activity=None)
    assert gap == pytest.approx(30 * 86400, rel=0.01)
