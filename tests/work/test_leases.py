"""Leases hang on their holder's heartbeat: a dead worker's work is free in seconds, a live one's is not."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from calsync.clock import FrozenClock, utc
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.liveness import HEARTBEAT_SECONDS, WORKER_ALIVE
from calsync.store.models import Account, Calendar, Change
from calsync.store.owed import request_calendar_sync
from calsync.store.states import ChangeType, Priority
from calsync.work.jobs import run_list_job
from calsync.work.leases import (
    Claim,
    MayBeDue,
    claim_account_list,
    claim_calendar,
    may_be_due,
    passed_by,
    put_off_in_turn,
)
from calsync.work.liveness import Heartbeat
from calsync.work.worker import Worker
from tests.push_support import calendar_id_of, connect_account

LEASE = timedelta(seconds=120)
ALIVE = WORKER_ALIVE.total_seconds()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def rt(settings: Settings, clock: FrozenClock) -> Any:
    runtime = Runtime.create(settings, clock=clock)
    yield runtime
    runtime.close()


def _due_calendar(rt: Runtime, emu: Any) -> int:
    connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    cal_id = calendar_id_of(rt, "ann@example.com")
    with transaction(rt.sessions) as session:
        request_calendar_sync(session, cal_id, rt.clock.now())
    return cal_id


def _claim(rt: Runtime, owner: str) -> int | None:
    with transaction(rt.sessions) as session:
        claim = claim_calendar(session, owner, rt.clock.now(), LEASE)
        return claim.id if claim is not None else None


def test_a_dead_workers_calendar_is_claimed_as_soon_as_its_heartbeat_is_stale(
    rt: Runtime, emu: Any, clock: FrozenClock
) -> None:
    cal_id = _due_calendar(rt, emu)
    Heartbeat(rt, "host:1:dead").beat()
    assert _claim(rt, "host:1:dead/0") == cal_id
    clock.advance(ALIVE)  # silent for the whole limit: still presumed alive
    assert _claim(rt, "host:2:new/0") is None
    clock.advance(1)  # one second more: dead, although its lease has nearly two minutes to run
    assert _claim(rt, "host:2:new/0") == cal_id


def test_a_workers_threads_never_take_each_others_work_when_its_beats_look_old(
    rt: Runtime, emu: Any, clock: FrozenClock
) -> None:
    """The clock stepped forward (or the heartbeat thread waited for the database): to another
    worker this one now looks dead, but a worker that is claiming knows it is alive."""
    cal_id = _due_calendar(rt, emu)
    Heartbeat(rt, "host:1:me").beat()
    assert _claim(rt, "host:1:me/0") == cal_id
    clock.advance(ALIVE + 30)  # its beats look old; its lease (120 s) has not run out
    assert _claim(rt, "host:1:me/1") is None  # its own thread 0 is working on it
    assert _claim(rt, "host:2:other/0") is None  # and the claim said so: the worker beat as it claimed
    clock.advance(ALIVE + 1)
    assert _claim(rt, "host:2:other/0") == cal_id  # silent since: dead


def test_a_worker_that_keeps_beating_keeps_its_calendar_until_the_lease_runs_out(
    rt: Runtime, emu: Any, clock: FrozenClock
) -> None:
    cal_id = _due_calendar(rt, emu)
    heartbeat = Heartbeat(rt, "host:1:slow")
    heartbeat.beat()
    assert _claim(rt, "host:1:slow/3") == cal_id
    for _ in range(int(LEASE.total_seconds() / HEARTBEAT_SECONDS)):  # a job far longer than the liveness limit
        clock.advance(HEARTBEAT_SECONDS)
        heartbeat.beat()
        assert _claim(rt, "host:2:other/0") is None
    clock.advance(1)  # a job that outlasts its lease has hung: beating or not, the work goes on elsewhere
    assert _claim(rt, "host:2:other/0") == cal_id


def test_a_dead_workers_calendar_list_is_claimed_as_soon_as_its_heartbeat_is_stale(
    rt: Runtime, emu: Any, clock: FrozenClock
) -> None:
    account_id = connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    with transaction(rt.sessions) as session:
        session.execute(update(Account).values(list_requested=Account.list_requested + 1, list_due_at=clock.now()))
    Heartbeat(rt, "host:1:dead").beat()

    def claim(owner: str) -> int | None:
        with transaction(rt.sessions) as session:
            got = claim_account_list(session, owner, clock.now(), LEASE)
            return got.id if got is not None else None

    assert claim("host:1:dead/1") == account_id
    clock.advance(ALIVE)
    assert claim("host:2:new/0") is None
    clock.advance(1)
    assert claim("host:2:new/0") == account_id


def test_a_holder_without_a_heartbeat_row_keeps_its_lease_until_it_runs_out(
    rt: Runtime, emu: Any, clock: FrozenClock
) -> None:
    """`calsync sync` holds a lease with no heartbeat behind it: the plain lease rule applies."""
    cal_id = _due_calendar(rt, emu)
    assert _claim(rt, "cli-sync-1") == cal_id
    clock.advance(LEASE)
    assert _claim(rt, "host:2:new/0") is None
    clock.advance(1)
    assert _claim(rt, "host:2:new/0") == cal_id


def _lists_done(rt: Runtime) -> None:
    """No calendar list due (the scheduler's periodic refresh included)."""
    with transaction(rt.sessions) as session:
        session.execute(update(Account).values(list_due_at=rt.clock.now() + timedelta(hours=1)))


def _may_be_due(rt: Runtime, ceiling: Priority = Priority.RECONCILE) -> MayBeDue:
    with rt.sessions() as session:
        return may_be_due(session, rt.clock.now(), ceiling)


def test_may_be_due_says_yes_whenever_a_claim_would_find_work(rt: Runtime, emu: Any, clock: FrozenClock) -> None:
    cal_id = _due_calendar(rt, emu)
    _lists_done(rt)
    assert _may_be_due(rt) == MayBeDue(calendars=True, lists=False)
    assert not _may_be_due(rt, Priority.WRITE)  # a notification's sync is above that ceiling
    Heartbeat(rt, "host:1:live").beat()
    assert _claim(rt, "host:1:live/0") == cal_id
    # Held by a live worker: nothing a claim could take, and the read says so.
    assert not _may_be_due(rt)
    assert _claim(rt, "host:1:other/0") is None
    # The holder stops beating: its calendar is free again, for the read as for the claim.
    clock.advance(ALIVE + HEARTBEAT_SECONDS + 1)
    assert _may_be_due(rt).calendars
    assert _claim(rt, "host:1:other/0") == cal_id


def test_may_be_due_sees_a_calendar_list_due_and_not_an_inactive_account(rt: Runtime, emu: Any) -> None:
    connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    _lists_done(rt)
    assert not _may_be_due(rt)  # everything synced, nothing owed
    with transaction(rt.sessions) as session:
        session.execute(update(Account).values(list_due_at=rt.clock.now()))
    assert _may_be_due(rt) == MayBeDue(calendars=False, lists=True)
    with transaction(rt.sessions) as session:
        assert claim_account_list(session, "w/0", rt.clock.now(), LEASE) is not None
    assert not _may_be_due(rt)  # the list is leased now
    cal_id = calendar_id_of(rt, "ann@example.com")
    with transaction(rt.sessions) as session:
        session.execute(update(Account).values(status="reauth_required", list_lease_owner=None))
        request_calendar_sync(session, cal_id, rt.clock.now())
    assert not _may_be_due(rt)  # owed, but its account cannot be acted for
    with transaction(rt.sessions) as session:
        assert claim_calendar(session, "w/0", rt.clock.now(), LEASE) is None


def _passed_by(rt: Runtime, ceiling: Priority, tried: list[tuple[Priority, Priority]]) -> bool:
    with rt.sessions() as session:
        return passed_by(session, rt.clock.now(), ceiling, tried)


def test_passed_by_tells_a_row_skip_locked_passed_by_only_when_the_claim_would_have_taken_it(
    rt: Runtime, emu: Any
) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's: on SQLite a claim waits for the write lock instead")
    connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    _lists_done(rt)
    everything = [(Priority.RECONCILE, Priority.WRITE)]
    assert not _passed_by(rt, Priority.RECONCILE, everything)  # nothing due
    cal_id = calendar_id_of(rt, "ann@example.com")
    with transaction(rt.sessions) as session:
        request_calendar_sync(session, cal_id, rt.clock.now())  # owed to a notification
    with rt.engine.connect() as other, other.begin():
        other.execute(update(Calendar).where(Calendar.id == cal_id).values(sync_requested=Calendar.sync_requested + 1))
        assert _claim(rt, "w/0") is None  # held by the other transaction: passed by
        assert _passed_by(rt, Priority.RECONCILE, everything)
        # A claim that could not have taken it (reconciliations only) was not passed by anything.
        assert not _passed_by(rt, Priority.RECONCILE, [(Priority.RECONCILE, Priority.RECONCILE)])
    assert _claim(rt, "w/0") == cal_id
    assert not _passed_by(rt, Priority.RECONCILE, everything)  # leased now: nothing to look at again

    with transaction(rt.sessions) as session:  # a periodic refresh of the calendar list comes due
        session.execute(update(Account).values(list_due_at=rt.clock.now()))
    with rt.engine.connect() as other, other.begin():
        other.execute(update(Account).values(list_error_count=0))
        with transaction(rt.sessions) as session:
            assert claim_account_list(session, "w/1", rt.clock.now(), LEASE) is None
        assert _passed_by(rt, Priority.RECONCILE, everything)
        assert not _passed_by(rt, Priority.FIRST_SYNC, everything)  # a periodic refresh waits for the budget's room


def test_put_off_in_turn_spaces_the_users_due_calendars_of_the_class_and_below_and_nothing_else(
    rt: Runtime, emu: Any, clock: FrozenClock
) -> None:
    account = connect_account(rt, emu, "busy@example.com")
    for n in range(4):
        emu.create_calendar("busy@example.com", f"Team {n}")
    connect_account(rt, emu, "other@example.com")
    Worker(rt, threads=1).run_burst()
    now = clock.now()
    first = now + timedelta(seconds=20)
    with transaction(rt.sessions) as session:
        refused, urgent, background, later, removed = sorted(
            session.scalars(select(Calendar.id).where(Calendar.account_id == account))
        )
        someone_else = session.scalars(select(Calendar.id).where(Calendar.account_id != account)).one()
        due = {refused: now, urgent: now, background: now - timedelta(minutes=5), removed: now, someone_else: now}
        for calendar_id, at in due.items():
            session.execute(
                update(Calendar).where(Calendar.id == calendar_id).values(due_at=at, due_priority=Priority.NOTIFICATION)
            )
        session.execute(update(Calendar).where(Calendar.id == background).values(due_priority=Priority.RECONCILE))
        session.execute(update(Calendar).where(Calendar.id == later).values(due_at=first + timedelta(seconds=1)))
        session.execute(update(Calendar).where(Calendar.id == removed).values(removed_at=now))
    claim = Claim(id=refused, requested=1, owner="w/0", priority=Priority.NOTIFICATION)
    with transaction(rt.sessions) as session:
        if rt.engine.dialect.name == "postgresql":
            session.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting for a row would fail, not hang
        assert put_off_in_turn(session, claim, account, first, timedelta(seconds=1.5), now) == 2
    with rt.sessions() as session:
        after = {c.id: utc(c.due_at) for c in session.scalars(select(Calendar))}
    # the notification's sync first, then the reconciliation, one call apart after the refused one
    assert after[urgent] == first + timedelta(seconds=1.5)
    assert after[background] == first + timedelta(seconds=3)
    # not due by then, removed, the refused one itself (its own defer moves it) and another user's: untouched
    assert after[later] == first + timedelta(seconds=1)
    assert after[removed] == now and after[refused] == now and after[someone_else] == now


def test_put_off_in_turn_passes_by_a_calendar_another_transaction_holds(
    rt: Runtime, emu: Any, clock: FrozenClock
) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's: on SQLite the claim's transaction holds the write lock")
    account = connect_account(rt, emu, "busy@example.com")
    emu.create_calendar("busy@example.com", "Team")
    Worker(rt, threads=1).run_burst()
    now = clock.now()
    with transaction(rt.sessions) as session:
        refused, held = sorted(session.scalars(select(Calendar.id).where(Calendar.account_id == account)))
        session.execute(update(Calendar).values(due_at=now, due_priority=Priority.NOTIFICATION))
    claim = Claim(id=refused, requested=1, owner="w/0", priority=Priority.NOTIFICATION)
    with rt.engine.connect() as other, other.begin():
        other.execute(update(Calendar).where(Calendar.id == held).values(sync_requested=Calendar.sync_requested + 1))
        with transaction(rt.sessions) as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert put_off_in_turn(session, claim, account, now + timedelta(seconds=5), timedelta(seconds=1), now) == 0
    with rt.sessions() as session:
        assert utc(session.get_one(Calendar, held).due_at) == now


def test_a_list_refresh_that_outlived_its_lease_writes_nothing(rt: Runtime, emu: Any, clock: FrozenClock) -> None:
    """A refresh whose listing outlived its lease committed its view of the list anyway, beside the
    new holder's: both could announce the same removal."""
    account_id = connect_account(rt, emu, "ann@example.com")
    team = emu.create_calendar("ann@example.com", "Team")
    Worker(rt, threads=1).run_burst()
    emu.remove_calendar("ann@example.com", team)
    with transaction(rt.sessions) as session:
        session.execute(update(Account).values(list_requested=Account.list_requested + 1, list_due_at=clock.now()))

    def claim(owner: str) -> Claim:
        Heartbeat(rt, owner.partition("/")[0]).beat()
        with transaction(rt.sessions) as session:
            got = claim_account_list(session, owner, clock.now(), LEASE)
        assert got is not None and got.id == account_id
        return got

    slow = claim("host:1:slow/0")
    emu.slow_next(1, 1.5, "calendar.calendarList.list")
    refreshing = threading.Thread(target=run_list_job, args=(rt, slow))
    refreshing.start()
    time.sleep(0.5)  # the slow refresh is waiting for Google's answer
    clock.advance(LEASE + timedelta(seconds=1))  # and its lease runs out meanwhile
    taken = claim("host:2:next/0")
    refreshing.join(10)
    assert _removed_rows(rt) == []  # the slow refresh wrote nothing
    run_list_job(rt, taken)
    assert _removed_rows(rt) == [team]


def _removed_rows(rt: Runtime) -> list[str]:
    with rt.sessions() as session:
        rows = session.execute(
            select(Calendar.google_id)
            .join(Change, Change.calendar_id == Calendar.id)
            .where(Change.type == ChangeType.CALENDAR_REMOVED)
        )
        return [google_id for (google_id,) in rows]


def test_a_claim_reads_the_feeds_position_before_any_listing(rt: Runtime, emu: Any) -> None:
    """The sync's listing starts after the claim: a write committed after it may be newer than what
    the listing shows (calsync.sync.mirror), so the claim hands the sync the feed's newest seq."""
    from calsync.feed.cursor import newest_seq

    _due_calendar(rt, emu)
    with rt.sessions() as session:
        before = newest_seq(session)
    assert before > 0
    with transaction(rt.sessions) as session:
        claim = claim_calendar(session, "w/0", rt.clock.now(), LEASE)
    assert claim is not None and claim.calendar is not None
    assert claim.calendar.feed_seq == before
