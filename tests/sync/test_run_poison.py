"""Events holding what JSON allows and databases dislike (U+0000, lone surrogates, control
characters), and events calsync cannot apply at all: neither may stop a calendar, on either engine.

Each test ends with the feed folded = the mirror = Google, and every edit in the feed once.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from calsync import create_app
from calsync.clock import FrozenClock
from calsync.config import Secret, Settings
from calsync.metrics import EVENTS_SKIPPED
from calsync.runtime import Runtime
from calsync.store.models import Calendar
from calsync.store.states import SyncState
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import SyncKind, sync_calendar
from tests.conftest import API_TOKEN
from tests.sync_support import (
    assert_feed_rebuilds_mirror,
    calendar_row_id,
    changes,
    connect_account,
    google_view,
    mirror,
)
from tests.web.dashboard_support import PASSWORD, sign_in

ALICE = "alice@example.com"
HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
# JSON-legal strings: NUL, a lone high and low surrogate, C0 controls, a line separator, astral text.
POISON = ["a\x00b", "\ud800 lone high", "lone low \udfff", "\x01\x1f\x7f", "line\u2028sep", "🗓\x00\ud83d"]


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(
        dataclasses.replace(settings, admin_password=Secret(PASSWORD)),
        # A moment of its own: the process's parsed-mirror cache knows calendars by row id and version,
        # and the same test on the other engine would otherwise reach the same version.
        clock=FrozenClock(datetime(2026, 1, 5, 8, tzinfo=UTC) + timedelta(microseconds=random.randrange(10**6))),
    )
    yield rt
    rt.close()


def poisoned(summary: str, day: int, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": " / ".join(POISON),
        "location": POISON[1],
        "extendedProperties": {"private": {"k\x00": "v\ud800", "nul": "\x00"}},
        "start": {"dateTime": f"2026-01-{day:02d}T10:00:00Z"},
        "end": {"dateTime": f"2026-01-{day:02d}T11:00:00Z"},
        **extra,
    }


def start(runtime: Runtime, emu: Any) -> int:
    account_id = connect_account(runtime, emu, ALICE)
    refresh_calendar_list(runtime, account_id)
    return calendar_row_id(runtime, ALICE)


def assert_converged(runtime: Runtime, emu: Any, cal_id: int) -> None:
    assert mirror(runtime, cal_id) == google_view(emu, ALICE)  # etag for etag, byte for byte
    assert_feed_rebuilds_mirror(runtime, cal_id)


def test_poison_strings_are_mirrored_listed_folded_and_expanded_as_google_sent_them(runtime: Runtime, emu: Any) -> None:
    cal_id = start(runtime, emu)
    emu.insert_event(ALICE, poisoned("plain", 5))
    assert sync_calendar(runtime, cal_id).kind == SyncKind.FULL
    single = emu.insert_event(ALICE, poisoned("nul\x00summary", 6))
    series = emu.insert_event(
        ALICE,
        poisoned(
            "weekly \ud800",
            7,
            start={"dateTime": "2026-01-07T09:00:00Z", "timeZone": "UTC"},
            end={"dateTime": "2026-01-07T10:00:00Z", "timeZone": "UTC"},
            recurrence=["RRULE:FREQ=WEEKLY;COUNT=3"],
        ),
    )
    result = sync_calendar(runtime, cal_id)
    assert (result.kind, result.created) == (SyncKind.INCREMENTAL, 2)
    emu.patch_event(ALICE, single["id"], {"summary": "still\x00nul \udfff", "description": "\x00"})
    assert sync_calendar(runtime, cal_id).updated == 1
    assert_converged(runtime, emu, cal_id)
    assert mirror(runtime, cal_id)[single["id"]]["summary"] == "still\x00nul \udfff"
    with runtime.sessions() as session:
        assert session.scalar(select(Calendar.sync_state).where(Calendar.id == cal_id)) == SyncState.SYNCED

    client: Any = create_app(runtime=runtime).test_client()
    listed = client.get(f"/api/events?calendar={ALICE}", headers=HEADERS)
    assert listed.status_code == 200
    assert {e["id"]: e for e in json.loads(listed.data)["items"]} == google_view(emu, ALICE)

    feed = client.get("/api/changes?after=0&limit=1000", headers=HEADERS)
    assert feed.status_code == 200
    assert [c["after"]["summary"] for c in json.loads(feed.data)["changes"] if c["event_id"] == single["id"]] == [
        "nul\x00summary",
        "still\x00nul \udfff",
    ]

    window = "timeMin=2026-01-01T00:00:00Z&timeMax=2026-02-01T00:00:00Z"
    expanded = client.get(f"/api/events?calendar={ALICE}&singleEvents=true&{window}", headers=HEADERS)
    assert expanded.status_code == 200
    items = json.loads(expanded.data)["items"]
    assert [i["summary"] for i in items if i.get("recurringEventId") == series["id"]] == ["weekly \ud800"] * 3
    assert {i["extendedProperties"]["private"]["k\x00"] for i in items} == {"v\ud800"}

    busy = client.post(
        "/api/freebusy",
        headers=HEADERS,
        json={"timeMin": "2026-01-05T00:00:00Z", "timeMax": "2026-01-08T00:00:00Z", "items": [{"id": ALICE}]},
    )
    assert busy.status_code == 200
    assert [b["start"] for b in busy.get_json()["calendars"][ALICE]["busy"]] == [
        "2026-01-05T10:00:00Z",
        "2026-01-06T10:00:00Z",
        "2026-01-07T09:00:00Z",
    ]

    sign_in(client)
    week = client.get(f"/dashboard/calendars/{cal_id}")
    assert week.status_code == 200 and "weekly \\ud800" in week.text
    assert client.get("/dashboard/changes").status_code == 200


def test_an_event_calsync_cannot_apply_is_recorded_and_does_not_stop_its_calendar(runtime: Runtime, emu: Any) -> None:
    """The rest of its page and later syncs go on; the calendar names the event; once Google's
    version can be applied, the next sync applies it, and nothing is written twice."""
    cal_id = start(runtime, emu)
    first = emu.insert_event(ALICE, poisoned("first", 5))
    emu.insert_event(ALICE, poisoned("second", 6))
    sync_calendar(runtime, cal_id)
    skipped_before = EVENTS_SKIPPED._value.get()
    # An etag no column holds and a NUL in a time: the mirror's columns cannot take either. A start
    # that is not an object can be stored, and the read models pass it by. Google's own validation
    # would refuse to write any of them.
    bad = emu.insert_event(ALICE, poisoned("bad", 7))
    emu.force_event_fields(ALICE, bad["id"], {"etag": '"' + "9" * 300 + '"'})
    worse = emu.insert_event(ALICE, poisoned("worse", 8))
    emu.force_event_fields(ALICE, worse["id"], {"start": {"dateTime": "2026-01-08T10:00:00\x00Z"}})
    odd = emu.insert_event(ALICE, poisoned("odd", 9))
    emu.force_event_fields(ALICE, odd["id"], {"start": ["2026-01-09"]})
    emu.patch_event(ALICE, first["id"], {"summary": "first, edited"})
    good = emu.insert_event(ALICE, poisoned("good", 10))

    result = sync_calendar(runtime, cal_id)
    assert (result.created, result.updated) == (2, 1)  # odd, good and the edit: the page went on
    assert EVENTS_SKIPPED._value.get() - skipped_before == 2
    with runtime.sessions() as session:
        cal = session.scalars(select(Calendar).where(Calendar.id == cal_id)).one()
        assert cal.sync_state == SyncState.ERROR
        assert cal.last_error is not None and "2 event(s) could not be applied" in cal.last_error
        assert bad["id"] in cal.last_error and "etag is longer than 100" in cal.last_error
        assert f"{worse['id']}: start holds a NUL" in cal.last_error
    assert {bad["id"], worse["id"]}.isdisjoint(mirror(runtime, cal_id))
    assert mirror(runtime, cal_id)[odd["id"]]["start"] == ["2026-01-09"]
    client: Any = create_app(runtime=runtime).test_client()
    window = "timeMin=2026-01-01T00:00:00Z&timeMax=2026-02-01T00:00:00Z"
    expanded = client.get(f"/api/events?calendar={ALICE}&singleEvents=true&{window}", headers=HEADERS)
    assert expanded.status_code == 200
    assert [i["summary"] for i in json.loads(expanded.data)["items"]] == ["first, edited", "second", "good"]
    listing = client.get("/api/calendars", headers=HEADERS).get_json()
    assert [c["sync_state"] for c in listing] == ["error"]
    assert "calsync_events_skipped_total" in client.get("/metrics").text
    sign_in(client)
    assert "2 event(s) could not be applied" in client.get("/dashboard/").text

    # A later edit reaches the feed at the next sync, which lists the waiting events again.
    emu.patch_event(ALICE, good["id"], {"summary": "good, edited"})
    result = sync_calendar(runtime, cal_id)
    assert (result.created, result.updated) == (0, 1)
    assert EVENTS_SKIPPED._value.get() - skipped_before == 4

    # Google's versions become usable again: the next sync applies them and the calendar is clean.
    emu.force_event_fields(ALICE, bad["id"], {"etag": '"1"'})
    emu.force_event_fields(ALICE, worse["id"], {"start": {"dateTime": "2026-01-08T10:00:00Z"}})
    emu.force_event_fields(ALICE, odd["id"], {"start": {"dateTime": "2026-01-09T10:00:00Z"}})
    result = sync_calendar(runtime, cal_id)
    assert (result.created, result.updated) == (2, 1)
    with runtime.sessions() as session:
        cal = session.scalars(select(Calendar).where(Calendar.id == cal_id)).one()
        assert (cal.sync_state, cal.last_error) == (SyncState.SYNCED, None)
    assert_converged(runtime, emu, cal_id)
    edits = [(c.event_id, c.kind) for c in changes(runtime, cal_id)]
    assert len(edits) == len(set(edits)) == 9  # 2 snapshots, 7 edits (first, odd twice, good twice, bad, worse)
    assert sync_calendar(runtime, cal_id).created == 0


def test_a_full_listing_with_an_unusable_event_keeps_its_mirrored_version(runtime: Runtime, emu: Any) -> None:
    """A 410 resync that cannot apply an event's new version must not sweep its old one away."""
    cal_id = start(runtime, emu)
    kept = emu.insert_event(ALICE, poisoned("kept", 5))
    sync_calendar(runtime, cal_id)
    before = mirror(runtime, cal_id)[kept["id"]]
    emu.force_event_fields(ALICE, kept["id"], {"status": "confirmed-but-far-too-long-for-its-column"})
    emu.invalidate_sync_tokens(ALICE)
    result = sync_calendar(runtime, cal_id)
    assert result.kind == SyncKind.RESYNC and result.deleted == 0
    assert mirror(runtime, cal_id)[kept["id"]] == before
    emu.force_event_fields(ALICE, kept["id"], {"status": "confirmed"})
    assert sync_calendar(runtime, cal_id).updated == 1
    assert_converged(runtime, emu, cal_id)
