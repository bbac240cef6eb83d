"""Page application in orders the emulator never produces (Google does not promise an order)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from calsync.db import transaction
from calsync.mirror import PageMirror
from calsync.models import Account, Calendar, Event
from calsync.runtime import Runtime

SERIES = {"id": "series1", "status": "confirmed", "summary": "standup", "recurrence": ["RRULE:FREQ=DAILY"],
          "start": {"dateTime": "2026-01-05T09:00:00Z"}, "end": {"dateTime": "2026-01-05T09:30:00Z"}}
CANCELLED = {"id": "series1_20260107T090000Z", "status": "cancelled", "recurringEventId": "series1",
             "originalStartTime": {"dateTime": "2026-01-07T09:00:00Z"}}


def calendar(runtime: Runtime) -> int:
    with transaction(runtime.sessions) as session:
        account = Account(email="a@example.com", credentials=b"x", scopes=[])
        session.add(account)
        session.flush()
        cal = Calendar(account_id=account.id, google_id="a@example.com")
        session.add(cal)
        session.flush()
        return cal.id


def apply(runtime: Runtime, cal_id: int, items: list[dict[str, Any]], deferred: list[dict[str, Any]],
          *, last: bool = False) -> list[tuple[str, str]]:
    with transaction(runtime.sessions) as session:
        page = PageMirror(session, cal_id, gen=None, record=True)
        page.apply(items, deferred)
        if last:
            page.finish(deferred)
        return [(c.kind, c.event_id) for c in page.changes]


def stored_ids(runtime: Runtime, cal_id: int) -> set[str]:
    with runtime.sessions() as session:
        return set(session.scalars(select(Event.google_id).where(Event.calendar_id == cal_id)))


def test_a_cancelled_occurrence_before_its_series_waits_for_it(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    deferred: list[dict[str, Any]] = []
    assert apply(runtime, cal_id, [CANCELLED], deferred) == []
    assert deferred == [CANCELLED] and stored_ids(runtime, cal_id) == set()
    found = apply(runtime, cal_id, [SERIES], deferred, last=True)
    assert found == [("created", "series1"), ("deleted", CANCELLED["id"])]
    assert stored_ids(runtime, cal_id) == {"series1", CANCELLED["id"]} and deferred == []


def test_a_cancelled_occurrence_of_a_series_never_seen_is_dropped(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    deferred: list[dict[str, Any]] = []
    assert apply(runtime, cal_id, [CANCELLED], deferred, last=True) == []
    assert deferred == [] and stored_ids(runtime, cal_id) == set()


def test_series_and_occurrence_cancelled_in_one_page_in_any_order(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    apply(runtime, cal_id, [SERIES], [], last=True)
    moved = {**SERIES, "id": "series1_20260108T090000Z", "recurringEventId": "series1", "summary": "x",
             "originalStartTime": {"dateTime": "2026-01-08T09:00:00Z"}}
    moved.pop("recurrence")
    apply(runtime, cal_id, [moved], [], last=True)
    gone_moved = {"id": moved["id"], "status": "cancelled", "recurringEventId": "series1",
                  "originalStartTime": moved["originalStartTime"]}
    found = apply(runtime, cal_id, [gone_moved, {"id": "series1", "status": "cancelled"}], [], last=True)
    assert sorted(found) == [("deleted", "series1"), ("deleted", moved["id"])]
    assert stored_ids(runtime, cal_id) == set()


def test_cancelling_a_mirrored_exception_of_an_unmirrored_series_removes_it(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    moved = {"id": CANCELLED["id"], "status": "confirmed", "recurringEventId": "series1", "summary": "moved",
             "originalStartTime": CANCELLED["originalStartTime"],
             "start": {"dateTime": "2026-01-07T11:00:00Z"}, "end": {"dateTime": "2026-01-07T11:30:00Z"}}
    assert apply(runtime, cal_id, [moved], [], last=True) == [("created", moved["id"])]
    deferred: list[dict[str, Any]] = []
    assert apply(runtime, cal_id, [CANCELLED], deferred) == [("deleted", moved["id"])]
    assert stored_ids(runtime, cal_id) == set() and deferred == []
