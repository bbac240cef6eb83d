"""Page application in orders the emulator never produces (Google does not promise an order)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Event
from calsync.sync import mirror as mirror_module
from calsync.sync.mirror import PageMirror
from tests.sync_support import stored_calendar

ROOT = Path(__file__).resolve().parents[2]

SERIES = {
    "id": "series1",
    "status": "confirmed",
    "summary": "standup",
    "recurrence": ["RRULE:FREQ=DAILY"],
    "start": {"dateTime": "2026-01-05T09:00:00Z"},
    "end": {"dateTime": "2026-01-05T09:30:00Z"},
}
CANCELLED = {
    "id": "series1_20260107T090000Z",
    "status": "cancelled",
    "recurringEventId": "series1",
    "originalStartTime": {"dateTime": "2026-01-07T09:00:00Z"},
}


def calendar(runtime: Runtime) -> int:
    return stored_calendar(runtime)[1]


def apply(
    runtime: Runtime, cal_id: int, items: list[dict[str, Any]], deferred: list[dict[str, Any]], *, last: bool = False
) -> list[tuple[str, str]]:
    with transaction(runtime.sessions) as session:
        page = PageMirror(session, cal_id, gen=None)
        page.apply(items, deferred)
        if last:
            page.finish(deferred)
        return [(str(c.kind), str(c.event_id)) for c in page.changes]


def stored_ids(runtime: Runtime, cal_id: int) -> set[str]:
    with runtime.sessions() as session:
        return set(session.scalars(select(Event.google_id).where(Event.calendar_id == cal_id)))


def test_a_cancelled_occurrence_before_its_series_waits_for_it(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    deferred: list[dict[str, Any]] = []
    assert apply(runtime, cal_id, [CANCELLED], deferred) == []
    assert deferred == [CANCELLED] and stored_ids(runtime, cal_id) == set()
    found = apply(runtime, cal_id, [SERIES], deferred, last=True)
    # The mirror keeps the cancelled occurrence (it hides one instance), so the feed sets it too.
    assert found == [("created", "series1"), ("updated", CANCELLED["id"])]
    assert stored_ids(runtime, cal_id) == {"series1", CANCELLED["id"]} and deferred == []


def test_a_cancelled_occurrence_of_a_series_never_seen_is_dropped(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    deferred: list[dict[str, Any]] = []
    assert apply(runtime, cal_id, [CANCELLED], deferred, last=True) == []
    assert deferred == [] and stored_ids(runtime, cal_id) == set()


def test_series_and_occurrence_cancelled_in_one_page_in_any_order(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    apply(runtime, cal_id, [SERIES], [], last=True)
    moved = {
        **SERIES,
        "id": "series1_20260108T090000Z",
        "recurringEventId": "series1",
        "summary": "x",
        "originalStartTime": {"dateTime": "2026-01-08T09:00:00Z"},
    }
    moved.pop("recurrence")
    apply(runtime, cal_id, [moved], [], last=True)
    gone_moved = {
        "id": moved["id"],
        "status": "cancelled",
        "recurringEventId": "series1",
        "originalStartTime": moved["originalStartTime"],
    }
    found = apply(runtime, cal_id, [gone_moved, {"id": "series1", "status": "cancelled"}], [], last=True)
    assert sorted(found) == [("deleted", "series1"), ("deleted", moved["id"])]
    assert stored_ids(runtime, cal_id) == set()


def test_cancelling_a_mirrored_exception_of_an_unmirrored_series_removes_it(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    moved = {
        "id": CANCELLED["id"],
        "status": "confirmed",
        "recurringEventId": "series1",
        "summary": "moved",
        "originalStartTime": CANCELLED["originalStartTime"],
        "start": {"dateTime": "2026-01-07T11:00:00Z"},
        "end": {"dateTime": "2026-01-07T11:30:00Z"},
    }
    assert apply(runtime, cal_id, [moved], [], last=True) == [("created", moved["id"])]
    deferred: list[dict[str, Any]] = []
    assert apply(runtime, cal_id, [CANCELLED], deferred) == [("deleted", moved["id"])]
    assert stored_ids(runtime, cal_id) == set() and deferred == []


def test_an_id_listed_twice_in_one_page_is_stored_once_as_its_later_version(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    first = {"id": "ev1", "status": "confirmed", "summary": "first", "etag": "1"}
    later = {**first, "summary": "later", "etag": "2"}
    with transaction(runtime.sessions) as session:
        page = PageMirror(session, cal_id, gen=1, first=True)
        page.apply([first, later], [])
        assert [(c.type, c.after) for c in page.changes] == [("event.snapshot", first), ("event.updated", later)]
    with runtime.sessions() as session:
        rows = session.scalars(select(Event).where(Event.calendar_id == cal_id)).all()
        assert [(r.google_id, r.data["summary"], r.etag, r.seen_gen) for r in rows] == [("ev1", "later", "2", 1)]


def test_an_event_created_and_cancelled_in_one_page_is_not_stored(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    live = {"id": "ev1", "status": "confirmed", "summary": "brief"}
    found = apply(runtime, cal_id, [live, {"id": "ev1", "status": "cancelled"}], [], last=True)
    assert found == [("created", "ev1"), ("deleted", "ev1")]
    assert stored_ids(runtime, cal_id) == set()


def test_an_event_listed_again_on_a_later_page_updates_its_row(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    apply(runtime, cal_id, [{"id": "ev1", "status": "confirmed", "summary": "a"}], [])
    found = apply(runtime, cal_id, [{"id": "ev1", "status": "confirmed", "summary": "b"}], [], last=True)
    assert found == [("updated", "ev1")]
    with runtime.sessions() as session:
        assert session.scalars(select(Event.data).where(Event.calendar_id == cal_id)).all() == [
            {"id": "ev1", "status": "confirmed", "summary": "b"}
        ]


def fresh_page(
    runtime: Runtime, cal_id: int, items: list[dict[str, Any]], deferred: list[dict[str, Any]], *, first: bool = False
) -> list[tuple[str, str]]:
    """One page of a full listing that began on an empty mirror: live ids are taken as new."""
    with transaction(runtime.sessions) as session:
        page = PageMirror(session, cal_id, gen=1, first=first, fresh=True)
        page.apply(items, deferred)
        return [(str(c.kind), str(c.event_id)) for c in page.changes]


def test_a_fresh_listing_stores_an_event_listed_again_on_a_later_page_once(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    first = {"id": "ev1", "status": "confirmed", "summary": "first", "etag": "1"}
    assert fresh_page(runtime, cal_id, [first, {"id": "ev2", "status": "confirmed"}], []) == [
        ("created", "ev1"),
        ("created", "ev2"),
    ]
    # ev1 again, edited: its insert fails on the unique key and the page is applied again, looked up.
    found = fresh_page(
        runtime, cal_id, [{"id": "ev3", "status": "confirmed"}, {**first, "summary": "later", "etag": "2"}], []
    )
    assert found == [("created", "ev3"), ("updated", "ev1")]
    with runtime.sessions() as session:
        rows = session.scalars(select(Event).where(Event.calendar_id == cal_id).order_by(Event.google_id)).all()
        assert [(r.google_id, r.data.get("summary")) for r in rows] == [("ev1", "later"), ("ev2", None), ("ev3", None)]


def test_a_fresh_listing_deletes_an_event_cancelled_on_a_later_page(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    fresh_page(runtime, cal_id, [{"id": "ev1", "status": "confirmed"}], [], first=True)
    assert fresh_page(runtime, cal_id, [{"id": "ev1", "status": "cancelled"}], []) == [("deleted", "ev1")]
    assert stored_ids(runtime, cal_id) == set()


def test_a_fresh_page_applied_again_keeps_its_waiting_cancellations_exactly_once(runtime: Runtime) -> None:
    cal_id = calendar(runtime)
    deferred: list[dict[str, Any]] = []
    assert fresh_page(runtime, cal_id, [{"id": "ev1", "status": "confirmed"}, CANCELLED], deferred) == [
        ("created", "ev1")
    ]
    assert deferred == [CANCELLED]
    # ev1 listed again makes this page go through twice; the cancellation waiting for series1 must
    # come out once, and the first attempt's changes must not survive.
    found = fresh_page(runtime, cal_id, [SERIES, {"id": "ev1", "status": "confirmed", "summary": "x"}], deferred)
    assert found == [("created", "series1"), ("updated", "ev1"), ("updated", CANCELLED["id"])]
    assert deferred == [] and stored_ids(runtime, cal_id) == {"ev1", "series1", CANCELLED["id"]}


def test_postgresql_looks_ids_up_on_the_unique_index_without_statistics(runtime: Runtime) -> None:
    """A freshly filled table has no statistics; an IN list was planned as a scan of the calendar."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("planner behaviour of PostgreSQL")
    cal_id = calendar(runtime)
    with transaction(runtime.sessions) as session:
        PageMirror(session, cal_id, gen=1, first=True).apply(
            [{"id": f"ev{i}", "status": "confirmed"} for i in range(3000)], []
        )
    lookups: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().startswith("SELECT") and "FROM events" in statement:
            lookups.append((statement, parameters))

    event.listen(runtime.engine, "before_cursor_execute", keep)
    try:
        apply(runtime, cal_id, [{"id": f"ev{i}", "status": "confirmed", "summary": "x"} for i in range(500)], [])
    finally:
        event.remove(runtime.engine, "before_cursor_execute", keep)
    assert lookups
    with runtime.engine.connect() as conn:
        for statement, parameters in lookups:
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            assert "Index Cond: ((calendar_id =" in plan and "google_id" in plan.split("Index Cond:")[1], plan
            assert "Bitmap" not in plan and "Seq Scan on events" not in plan, plan


@pytest.mark.parametrize(
    ("updated", "than", "older"),
    [
        ("2026-01-01T10:00:00.000Z", "2026-01-01T10:00:01.000Z", True),  # Google's own form: text order
        ("2026-01-01T10:00:01.000Z", "2026-01-01T10:00:00.000Z", False),
        ("2026-01-01T11:00:00+01:00", "2026-01-01T10:30:00Z", True),  # offsets compared as instants
        ("2026-01-01T10:00:00+01", "2026-01-01T09:30:00Z", True),  # a bare hour offset (dateutil's form)
        ("2026-01-01T10:00:00", "2026-01-01T10:30:00Z", True),  # no offset: UTC, not a TypeError
        ("yesterday", "2026-01-01T10:30:00Z", False),  # malformed: never older
        (None, "2026-01-01T10:30:00Z", False),
    ],
)
def test_older_compares_googles_times_as_instants(updated: Any, than: Any, older: bool) -> None:
    assert mirror_module._older(updated, than) is older


def test_a_fresh_process_whose_threads_look_up_rows_all_at_once_gets_every_answer(db_url: str) -> None:
    """The lookup's statement is built once per process and shared by its threads. SQLAlchemy fills in
    parts of such a statement the first time it runs, and threads that did that at once could leave
    one that, on PostgreSQL, failed every sync of that process after (`probe.id` not found in a row).
    It is run once while the module is imported, before any thread shares it."""
    for _ in range(3):  # the race, unguarded, showed in 16 processes out of 20
        child = subprocess.run(
            [sys.executable, "-m", "tests.sync.race_child", db_url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.splitlines()[0] == "0", child.stdout
