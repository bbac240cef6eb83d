"""End to end over real HTTP: the emulator pushes to calsync's receiver, worker threads sync.

No test here calls a sync function: every change must travel edit → push → receiver → wake-up →
worker → events.list → Change row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select
from werkzeug.serving import make_server

from calsync import create_app
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.models import Notification
from calsync.store.states import NotificationOutcome
from calsync.work.worker import Worker
from tests.push_support import (
    calendar_id_of,
    calendar_row,
    changes_for,
    channels_of,
    connect_account,
    emu_channel,
    push_headers,
    wait_for,
)

EMAIL = "ann@example.com"
EVENT = {
    "summary": "Planning",
    "start": {"dateTime": "2026-12-04T14:00:00Z"},
    "end": {"dateTime": "2026-12-04T15:00:00Z"},
}


def _start_worker(rt: Runtime, threads: int = 2) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=Worker(rt, threads=threads).run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def _watched(rt: Runtime, emu: Any) -> int:
    """Connect, and wait until the calendar is synced and watched and the sync messages are in."""
    connect_account(rt, emu, EMAIL)
    cal_id = wait_for(lambda: _calendar_with_channel(rt), timeout=10, what="first sync and watch")
    emu.wait_push_idle(5)
    wait_for(lambda: _idle(rt, cal_id), timeout=10, what="the seam sync")
    return int(cal_id)


@pytest.fixture
def pushing(runtime: Runtime, emu: Any, live_server: str) -> Iterator[dict[str, Any]]:
    stop, thread = _start_worker(runtime)
    try:
        yield {"calendar_id": _watched(runtime, emu), "url": live_server}
    finally:
        stop.set()
        thread.join(timeout=20)


def test_an_edit_in_google_becomes_a_change_through_push_alone(
    runtime: Runtime, emu: Any, pushing: dict[str, Any], record_property: Callable[[str, object], None]
) -> None:
    cal_id = pushing["calendar_id"]
    assert runtime.settings.reconcile_every >= timedelta(hours=1)  # no timer will do it for us
    latencies = []
    started = time.monotonic()
    event = emu.insert_event(EMAIL, EVENT)
    wait_for(lambda: len(changes_for(runtime, cal_id)) == 1, timeout=5, what="created")
    latencies.append(time.monotonic() - started)
    wait_for(lambda: _idle(runtime, cal_id), timeout=5, what="the sync to end")
    started = time.monotonic()
    emu.patch_event(EMAIL, event["id"], {"summary": "Planning (moved)"})
    wait_for(lambda: len(changes_for(runtime, cal_id)) == 2, timeout=5, what="updated")
    latencies.append(time.monotonic() - started)
    wait_for(lambda: _idle(runtime, cal_id), timeout=5, what="the sync to end")
    started = time.monotonic()
    emu.delete_event(EMAIL, event["id"])
    wait_for(lambda: len(changes_for(runtime, cal_id)) == 3, timeout=5, what="deleted")
    latencies.append(time.monotonic() - started)

    changes = changes_for(runtime, cal_id)
    assert [c.kind for c in changes] == ["created", "updated", "deleted"]
    assert changes[1].fields == ["summary"]
    record_property("push_to_change_ms", [round(x * 1000) for x in latencies])
    print(f"\npush-to-change latencies (ms): {[round(x * 1000) for x in latencies]}")
    # Woken at once, not found by the 1.5 s fallback poll.
    assert max(latencies) < 1.0, latencies


class _JumpClock:
    """Real time plus an offset the test can jump forward (the storm's window, without waiting it out)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.mark.slow
def test_a_storm_of_a_thousand_notifications_costs_at_most_two_list_calls(
    settings: Settings, emu: Any, public_port: int, record_property: Callable[[str, object], None]
) -> None:
    # The window is made as long as the storm can take on a loaded machine; the clock then jumps it.
    clock = _JumpClock()
    rt = Runtime.create(replace(settings, sync_min_interval=timedelta(minutes=10)), clock=clock)
    server = make_server("127.0.0.1", public_port, create_app(runtime=rt), threaded=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    stop, thread = _start_worker(rt)
    try:
        cal_id = _watched(rt, emu)
        channel = emu_channel(emu, channels_of(rt, calendar_id=cal_id)[-1].id)
        emu.push_faults(drop=1.0)  # only our storm reaches the receiver
        emu.insert_event(EMAIL, EVENT)
        # The storm's first notification starts a sync that Google answers slowly, so the rest of
        # the storm arrives while it runs, as on a busy day. (Had that sync ended before the second
        # notification, that one would rightly start a sync of its own: a new burst, not this one.)
        emu.slow_next(1, 1.5, method="calendar.events.list", calendar_id=EMAIL)
        before = emu.count("calendar.events.list", EMAIL)
        local = threading.local()

        def fire(number: int) -> int:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            return session.post(
                settings.notifications_url, data=b"", timeout=30, headers=push_headers(channel, number=number)
            ).status_code

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(fire, range(1000, 2000)))
        storm_seconds = time.monotonic() - started
        assert statuses == [200] * 1000
        wait_for(lambda: len(changes_for(rt, cal_id)) == 1, timeout=10, what="the change")
        clock.offset += rt.settings.sync_min_interval
        rt.wakeup.notify_local()
        wait_for(lambda: _idle(rt, cal_id), timeout=10, what="the queue to drain")
        calls = emu.count("calendar.events.list", EMAIL) - before
    finally:
        stop.set()
        thread.join(timeout=20)
        server.shutdown()
        rt.close()
    record_property("storm_seconds", round(storm_seconds, 2))
    record_property("storm_list_calls", calls)
    print(f"\nstorm of 1000 took {storm_seconds:.2f}s and cost {calls} events.list call(s)")
    assert 1 <= calls <= 2
    assert storm_seconds < 600
    assert [c.kind for c in changes_for(rt, cal_id)] == ["created"]


def test_duplicated_and_reordered_notifications_change_nothing_twice(
    runtime: Runtime, emu: Any, pushing: dict[str, Any]
) -> None:
    cal_id = pushing["calendar_id"]
    emu.push_faults(duplicate=1.0, reorder=True)
    before = emu.count("calendar.events.list", EMAIL)
    for i in range(4):
        emu.insert_event(EMAIL, {**EVENT, "summary": f"dup {i}"})
        time.sleep(0.4)
    wait_for(lambda: len(changes_for(runtime, cal_id)) == 4, timeout=10, what="four changes")
    emu.wait_push_idle(5)
    wait_for(lambda: _idle(runtime, cal_id), timeout=10, what="the queue to drain")
    changes = changes_for(runtime, cal_id)
    assert [c.kind for c in changes] == ["created"] * 4
    assert len({c.event_id for c in changes}) == 4
    with runtime.sessions() as session:
        outcomes = list(session.scalars(select(Notification.outcome).where(Notification.resource_state == "exists")))
    assert outcomes.count(NotificationOutcome.DUPLICATE) >= 4  # every message came twice; the copies were ignored
    assert emu.count("calendar.events.list", EMAIL) - before <= 4  # at most one per distinct message


def test_dropped_notifications_are_healed_by_reconciliation(runtime: Runtime, emu: Any, live_server: str) -> None:
    quick = replace(runtime, settings=replace(runtime.settings, reconcile_every=timedelta(seconds=1.5)))
    stop, thread = _start_worker(quick)
    try:
        cal_id = _watched(quick, emu)
        emu.push_faults(drop=1.0)
        emu.insert_event(EMAIL, EVENT)
        wait_for(lambda: changes_for(quick, cal_id), timeout=6, what="reconciliation")
    finally:
        stop.set()
        thread.join(timeout=20)
    exists = [n for n in emu.notifications if n.resource_state == "exists"]
    assert exists and all(n.fault == "dropped" for n in exists)
    assert [c.kind for c in changes_for(quick, cal_id)] == ["created"]


@pytest.mark.parametrize("forgery", ["unknown", "token", "resource"])
def test_forged_notifications_over_http_get_404_and_cost_no_google_call(
    runtime: Runtime, emu: Any, pushing: dict[str, Any], forgery: Any
) -> None:
    cal_id = pushing["calendar_id"]
    channel = emu_channel(emu, channels_of(runtime, calendar_id=cal_id)[-1].id)
    override = {
        "unknown": {"X-Goog-Channel-ID": "forged-channel"},
        "token": {"X-Goog-Channel-Token": "x" * 43},
        "resource": {"X-Goog-Resource-ID": "another-resource"},
    }[forgery]
    requested = calendar_row(runtime, cal_id).sync_requested
    calls = len(emu.requests)
    resp = requests.post(
        pushing["url"] + "/notifications", data=b"", timeout=5, headers=push_headers(channel, number=10_000, **override)
    )
    assert resp.status_code == 404
    time.sleep(0.3)  # room for a wrongly woken worker to call Google
    assert calendar_row(runtime, cal_id).sync_requested == requested
    assert len(emu.requests) == calls


def _calendar_with_channel(rt: Runtime) -> int | None:
    try:
        cal_id = calendar_id_of(rt, EMAIL)
    except AssertionError:
        return None
    return cal_id if any(c.status == "active" for c in channels_of(rt, calendar_id=cal_id)) else None


def _idle(rt: Runtime, cal_id: int) -> bool:
    cal = calendar_row(rt, cal_id)
    return cal.sync_done == cal.sync_requested and cal.lease_owner is None
