"""Backoff: delays with full jitter, Retry-After honoured, and one throttled calendar never blocks others."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from calsync.clock import FrozenClock
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Calendar
from calsync.store.owed import request_calendar_sync
from calsync.work.backoff import CAP_SECONDS, backoff_delay
from calsync.work.worker import Worker
from tests.push_support import (
    calendar_id_of,
    calendar_row,
    changes_for,
    connect_account,
)

EVENT = {
    "summary": "Review",
    "start": {"dateTime": "2026-12-02T09:00:00Z"},
    "end": {"dateTime": "2026-12-02T10:00:00Z"},
}


def test_delays_grow_exponentially_within_full_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0)]:
        samples = [backoff_delay(attempt, rng=rng) for _ in range(400)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # the whole range is used: full jitter
        assert min(samples) < ceiling * 0.2


def test_delays_are_capped() -> None:
    assert all(backoff_delay(50, rng=random.Random(i)) <= CAP_SECONDS for i in range(100))


def test_a_calendar_failing_for_weeks_still_backs_off_to_the_cap(rt: Any, emu: Any) -> None:
    """Past 1,024 failures in a row `2 ** n` overflowed a float: the failure could not be recorded, the
    lease stayed held, and the calendar was retried every lease period instead of every half hour."""
    assert all(backoff_delay(n, rng=random.Random(n)) <= CAP_SECONDS for n in (1025, 10**6))
    connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    cal_id = calendar_id_of(rt, "ann@example.com")
    with transaction(rt.sessions) as session:
        session.execute(update(Calendar).where(Calendar.id == cal_id).values(error_count=1024))
        request_calendar_sync(session, cal_id, rt.clock.now())
    emu.fail_next(1, status=503, reason="backendError", method="calendar.events.list")
    Worker(rt, threads=1).run_burst()
    row = calendar_row(rt, cal_id)
    assert (row.lease_owner, row.error_count) == (None, 1025)
    assert row.due_at is not None and row.due_at <= rt.clock.now() + timedelta(seconds=CAP_SECONDS)


def test_retry_after_wins_when_it_is_longer() -> None:
    assert backoff_delay(1, retry_after=90, rng=random.Random(1)) == 90
    assert backoff_delay(12, retry_after=0.5, rng=random.Random(1)) >= 0.5


@pytest.fixture
def rt(settings: Any) -> Any:
    runtime = Runtime.create(settings, clock=FrozenClock(datetime.now(UTC).replace(microsecond=0)))
    yield runtime
    runtime.close()


@pytest.mark.parametrize(
    "status,reason,retry_after",
    [
        (429, "rateLimitExceeded", 1),
        (403, "rateLimitExceeded", None),
        (403, "userRateLimitExceeded", None),
        (503, "backendError", None),
    ],
)
def test_a_throttled_calendar_backs_off_while_another_still_syncs(
    rt: Any, emu: Any, status: Any, reason: Any, retry_after: Any
) -> None:
    clock: FrozenClock = rt.clock
    connect_account(rt, emu, "ann@example.com")
    connect_account(rt, emu, "bob@example.com")
    Worker(rt, threads=1).run_burst()
    ann, bob = calendar_id_of(rt, "ann@example.com"), calendar_id_of(rt, "bob@example.com")
    emu.insert_event("ann@example.com", EVENT)
    emu.insert_event("bob@example.com", EVENT)
    emu.fail_next(
        3,
        status=status,
        reason=reason,
        retry_after=retry_after,
        method="calendar.events.list",
        calendar_id="ann@example.com",
    )
    for cal_id in (ann, bob):
        with transaction(rt.sessions) as session:
            request_calendar_sync(session, cal_id, clock.now())

    Worker(rt, threads=1).run_burst()
    throttled = calendar_row(rt, ann)
    assert throttled.sync_state == "backoff" and throttled.error_count == 1
    assert throttled.retry_at is not None and throttled.due_at == throttled.retry_at > clock.now()
    if retry_after:
        assert throttled.retry_at >= clock.now() + timedelta(seconds=retry_after)
    assert reason in (throttled.last_error or "") or str(status) in (throttled.last_error or "")
    assert [c.kind for c in changes_for(rt, bob)] == ["created"]  # the other calendar went on
    assert changes_for(rt, ann) == []

    for expected_errors in (2, 3):
        clock.set(calendar_row(rt, ann).retry_at)  # type: ignore[arg-type]
        Worker(rt, threads=1).run_burst()
        assert calendar_row(rt, ann).error_count == expected_errors
    clock.set(calendar_row(rt, ann).retry_at)  # type: ignore[arg-type]
    Worker(rt, threads=1).run_burst()
    recovered = calendar_row(rt, ann)
    assert (recovered.sync_state, recovered.error_count, recovered.retry_at) == ("synced", 0, None)
    assert [c.kind for c in changes_for(rt, ann)] == ["created"]
    # Next: the reconciliation, at the calendar's own phase within one period.
    assert recovered.due_at is not None
    assert clock.now() < recovered.due_at <= clock.now() + rt.settings.reconcile_every


def test_a_notification_during_backoff_does_not_cut_it_short(rt: Any, emu: Any) -> None:
    connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    ann = calendar_id_of(rt, "ann@example.com")
    emu.fail_next(1, status=429, retry_after=30, method="calendar.events.list")
    with transaction(rt.sessions) as session:
        request_calendar_sync(session, ann, rt.clock.now())
    Worker(rt, threads=1).run_burst()
    calls = emu.count("calendar.events.list", "ann@example.com")
    with transaction(rt.sessions) as session:
        request_calendar_sync(session, ann, rt.clock.now())
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "ann@example.com") == calls
    assert calendar_row(rt, ann).due_at == calendar_row(rt, ann).retry_at
