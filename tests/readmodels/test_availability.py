"""The proof: random series written into the emulator reach calsync through push and the real
sync, and calsync's singleEvents answer and free/busy then equal what the emulator lists."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from dateutil.parser import isoparse
from hypothesis import HealthCheck, given, settings

from calsync.readmodels.availability import decode_occurrence_token, encode_occurrence_token, single_events_page
from calsync.readmodels.occurrences import CalendarMirror, parse_instant
from calsync.runtime import Runtime
from calsync.store.models import Calendar
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from calsync.work.worker import Worker
from tests.conftest import API_TOKEN
from tests.occurrence_support import CALENDAR_ZONES, EmulatorApi, Scenario, busy_from_listing, scenarios, write_scenario
from tests.push_support import calendar_id_of, calendar_row, channels_of, wait_for
from tests.sync_support import calendar_row_id, connect_account, google_view, mirror

OWNER = "pia@example.com"


@pytest.fixture
def pushed(runtime: Runtime, emu: Any, live_server: str) -> Iterator[dict[str, Any]]:
    """A connected account with one calendar per zone, each synced and watched, and a worker running."""
    emu.create_user(OWNER)
    calendars = {zone: emu.create_calendar(OWNER, zone, time_zone=zone) for zone in CALENDAR_ZONES}
    stop = threading.Event()
    worker = threading.Thread(target=Worker(runtime, threads=2).run, args=(stop,), daemon=True)
    worker.start()
    try:
        connect_account(runtime, emu, OWNER)

        def ready() -> bool:
            try:
                rows = [calendar_row(runtime, calendar_id_of(runtime, cal)) for cal in calendars.values()]
            except AssertionError:
                return False
            return all(
                r.baseline_done and any(c.status == "active" for c in channels_of(runtime, calendar_id=r.id))
                for r in rows
            )

        wait_for(ready, timeout=30, what="every calendar synced and watched")
        emu.wait_push_idle(5)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {API_TOKEN}"
        yield {"calendars": calendars, "url": live_server, "http": http, "api": EmulatorApi(emu, OWNER)}
    finally:
        stop.set()
        worker.join(timeout=20)


def _calsync_single_events(pushed: dict[str, Any], calendar: str, low: datetime, high: datetime) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        params = {
            "calendar": calendar,
            "singleEvents": "true",
            "orderBy": "startTime",
            "maxResults": "500",
            "timeMin": low.isoformat(),
            "timeMax": high.isoformat(),
            **({"pageToken": token} if token else {}),
        }
        resp = pushed["http"].get(pushed["url"] + "/api/events", params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        items += resp.json()["items"]
        token = resp.json()["nextPageToken"]
        if token is None:
            return items


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_occurrences_and_freebusy_equal_the_emulators_after_push_sync(
    runtime: Runtime, emu: Any, pushed: dict[str, Any], scenario: Scenario
) -> None:
    zone = CALENDAR_ZONES[len(scenario.series) % len(CALENDAR_ZONES)]
    calendar = pushed["calendars"][zone]
    for event in emu.events(calendar):  # the previous example's events go, as a person would delete them
        if not event.get("recurringEventId"):
            emu.delete_event(calendar, event["id"])
    write_scenario(emu, pushed["api"], calendar, scenario)
    row = calendar_id_of(runtime, calendar)
    wait_for(lambda: mirror(runtime, row) == google_view(emu, calendar), timeout=20, what="push sync to catch up")
    for low, high in scenario.windows:
        expected = pushed["api"].single_events(calendar, low, high)
        got = _calsync_single_events(pushed, calendar, low, high)
        assert [e["id"] for e in got] == [e["id"] for e in expected]
        assert got == expected
        resp = pushed["http"].post(
            pushed["url"] + "/api/freebusy",
            timeout=30,
            json={"timeMin": low.isoformat(), "timeMax": high.isoformat(), "items": [{"id": calendar}]},
        )
        assert resp.status_code == 200, resp.text
        busy = [(isoparse(b["start"]), isoparse(b["end"])) for b in resp.json()["calendars"][calendar]["busy"]]
        assert busy == busy_from_listing(expected, low, high, zone)


def test_a_page_token_keeps_a_year_before_1000() -> None:
    """strftime writes year 500 as `500`: read back as year 5000, and the next page came back empty."""
    series = {
        "id": "s1",
        "status": "confirmed",
        "recurrence": ["RRULE:FREQ=DAILY"],
        "start": {"dateTime": "0500-01-01T09:00:00Z", "timeZone": "UTC"},
        "end": {"dateTime": "0500-01-01T10:00:00Z", "timeZone": "UTC"},
    }
    window = parse_instant("0500-01-01T00:00:00Z"), parse_instant("0500-01-05T00:00:00Z")
    first = CalendarMirror([series], "UTC").occurrences(*window)[0]
    assert decode_occurrence_token(encode_occurrence_token(first)) == (datetime(500, 1, 1, 9, tzinfo=UTC), first.id)


def test_a_change_of_reminders_alone_reaches_the_single_events_answer(runtime: Runtime, emu: Any) -> None:
    """Google keeps `updated` when only reminders change; the parsed calendars kept per process were
    brought up to date by `updated`, and went on answering the old reminders and etag."""
    account = connect_account(runtime, emu, OWNER)
    refresh_calendar_list(runtime, account)
    cal = calendar_row_id(runtime, OWNER)
    made = emu.insert_event(
        OWNER,
        {
            "summary": "Dentist",
            "start": {"dateTime": "2026-03-10T10:00:00Z"},
            "end": {"dateTime": "2026-03-10T11:00:00Z"},
        },
    )
    sync_calendar(runtime, cal)
    assert [e["reminders"] for e in _single_events(runtime, cal)] == [{"useDefault": True}]  # parsed and kept
    reminded = emu.patch_event(OWNER, made["id"], {"reminders": {"useDefault": False, "overrides": []}})
    assert reminded["updated"] == made["updated"]
    sync_calendar(runtime, cal)
    assert _single_events(runtime, cal) == [mirror(runtime, cal)[made["id"]]] == [reminded]


def _single_events(runtime: Runtime, calendar_id: int) -> list[dict[str, Any]]:
    with runtime.sessions() as session:
        calendar = session.get_one(Calendar, calendar_id)
        low, high = parse_instant("2026-03-01T00:00:00Z"), parse_instant("2026-04-01T00:00:00Z")
        return list(single_events_page(session, calendar, low, high, page_token=None)["items"])
