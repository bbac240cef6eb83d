"""The quota budget: no sliding window holds more than the budget, urgent work keeps a reserve,
Google's slow-downs halve the pace and it grows back; shared through the database by every taker."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Integer, event, literal, select, text
from sqlalchemy.exc import OperationalError

from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import QuotaBudget
from calsync.store.quota import (
    FIRST_SYNC_SHARE,
    PROJECT,
    TOLERANCE,
    URGENT_SHARE,
    Budget,
    Limits,
    ScopeState,
    admit,
    ceiling,
    day_count,
    locking_rows,
    pace,
    slowed,
    user_scope,
)
from calsync.store.states import Priority


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_no_sliding_window_holds_more_than_the_budget_whatever_the_mix(seed: int) -> None:
    rng = random.Random(seed)
    state, now, granted = ScopeState(), 0.0, []
    for _ in range(20_000):
        now += rng.expovariate(50.0)  # far more demand than the budget allows
        priority = rng.choice(list(Priority))
        state, wait = admit(state, now, priority, per_window=100, window=60.0)
        if wait == 0.0:
            granted.append(now)
    assert _max_in_window(granted, 60.0) <= 100
    assert _max_in_window(granted, 60.0) >= 90  # and the budget is used, not wasted


def test_background_at_its_ceiling_leaves_urgent_calls_room_at_once() -> None:
    state, now = ScopeState(), 1000.0
    while True:  # reconciliations take everything they may
        state, wait = admit(state, now, Priority.RECONCILE, per_window=1000, window=60.0)
        if wait:
            break
    assert ceiling(state, now, 1000, 60.0) == Priority.FIRST_SYNC
    urgent = 0
    while admit(state, now, Priority.NOTIFICATION, 1000, 60.0)[1] == 0.0:
        state = admit(state, now, Priority.NOTIFICATION, 1000, 60.0)[0]
        urgent += 1
    assert urgent >= 100  # a notification never queues behind a full window of background work
    assert admit(state, now, Priority.WRITE, 1000, 60.0)[1] == 0.0  # and writes have room above that
    assert admit(state, now, Priority.RECONCILE, 1000, 60.0)[1] > 5.0  # background waits its turn


def test_a_slow_down_halves_the_pace_once_per_cooldown_and_it_grows_back() -> None:
    state = slowed(ScopeState(), 100.0, None)
    assert pace(state, 100.0) == 0.5
    assert pace(slowed(state, 101.0, None), 101.0) == pytest.approx(pace(state, 101.0))  # calls in flight
    assert pace(slowed(state, 106.0, None), 106.0) < 0.3  # a new refusal later halves again
    assert pace(state, 130.0) == pytest.approx(0.75)
    assert pace(state, 160.0) == 1.0
    held = slowed(ScopeState(), 100.0, 30.0)
    assert admit(held, 110.0, Priority.RECONCILE, 100, 60.0)[1] == pytest.approx(20.0)  # Retry-After
    assert admit(held, 110.0, Priority.FIRST_SYNC, 100, 60.0)[1] == pytest.approx(20.0)
    assert admit(held, 110.0, Priority.NOTIFICATION, 100, 60.0)[1] == 0.0  # urgent work goes on, slower


@pytest.fixture
def budget(settings: Settings) -> Any:
    rt = Runtime.create(settings)
    yield rt
    rt.close()


class _Stamps:
    """The system clock, remembering on each thread the time the budget last decided at."""

    def __init__(self) -> None:
        self.local = threading.local()

    def now(self) -> datetime:
        self.local.at = datetime.now(UTC)
        return self.local.at  # type: ignore[no-any-return]


def test_takers_in_many_threads_share_one_budget_in_the_database(budget: Runtime) -> None:
    """Eight threads, each with its own Budget object (as separate processes have), one table: the
    row lock makes their decisions one after another, so none is taken twice."""
    window, per_window = 1.0, 40
    granted: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 2.5
    clock = _Stamps()

    def taker(n: int) -> None:
        own = Budget(budget.sessions, clock, Limits(per_window, 0, window))
        while time.monotonic() < stop:
            if own.try_take(Priority(n % 5), account_id=None) == 0.0:
                with lock:
                    granted.append(clock.local.at.timestamp())

    threads = [threading.Thread(target=taker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _max_in_window(granted, window) <= per_window
    assert len(granted) >= 2 * per_window * 0.8  # the budget was spent, not starved by contention
    with budget.sessions() as session:
        row = session.get(QuotaBudget, PROJECT)
        assert row is not None and row.calls_today == len(granted)


def test_a_user_over_its_budget_waits_while_others_and_the_project_go_on(budget: Runtime) -> None:
    clock = FrozenClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    own = Budget(budget.sessions, clock, Limits(1000, 10, 60.0))
    taken: list[float] = []
    for _ in range(600):  # one user asks every 0.1 s for a minute: ten calls, paced
        if own.try_take(Priority.NOTIFICATION, account_id=1) == 0.0:
            taken.append(clock.now().timestamp())
        clock.advance(0.1)
    assert 2 <= _max_in_window(taken, 60.0) <= 10 and len(taken) >= 8
    assert own.try_take(Priority.NOTIFICATION, account_id=2) == 0.0  # another user has room
    refused = own.try_take(Priority.NOTIFICATION, account_id=1)
    assert refused > 0
    with budget.sessions() as session:
        rows = {r.scope: r.calls_today for r in session.execute(select(QuotaBudget.scope, QuotaBudget.calls_today))}
    assert rows[PROJECT] == len(taken) + 1  # a refused call is not counted
    assert user_scope(1) in rows and user_scope(2) in rows


def test_take_waits_for_room_then_gives_up_with_quota_wait(budget: Runtime) -> None:
    from calsync.errors import QuotaWait

    clock = FrozenClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    own = Budget(budget.sessions, clock, Limits(100, 0, 60.0), max_wait=2.0)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # budget time passes only while someone waits
        slept.append(seconds)
        clock.advance(seconds)

    own.sleep = sleep
    while own.try_take(Priority.FIRST_SYNC, None) == 0.0:
        pass
    own.take(Priority.FIRST_SYNC, None)  # no room now: it waits for the next slot, then goes
    assert 0 < sum(slept) <= 1.0
    with pytest.raises(QuotaWait) as err:
        own.take(Priority.RECONCILE, None, max_wait=0.0)  # may not wait: says how long instead
    assert err.value.wait > 0
    with transaction(budget.sessions) as session:
        row = session.get(QuotaBudget, PROJECT)
        assert row is not None and row.first_sync_today == row.calls_today and row.reconcile_today == 0
    assert clock.now() - datetime(2026, 12, 6, 12, tzinfo=UTC) < timedelta(seconds=2)


def test_the_day_that_ended_leaves_its_steady_count_for_the_plan(budget: Runtime) -> None:
    """Calls other than reconciliations and first syncs are what the next day expects again."""
    clock = FrozenClock(datetime(2026, 12, 6, 20, 0, tzinfo=UTC))  # noon Pacific
    taker = Budget(budget.sessions, clock, Limits(per_window=0, per_user_per_window=0))
    for priority in (Priority.NOTIFICATION, Priority.NOTIFICATION, Priority.RENEWAL, Priority.RECONCILE):
        assert taker.try_take(priority, None) == 0.0
    assert taker.try_take(Priority.FIRST_SYNC, None) == 0.0
    with budget.sessions() as session:
        today = day_count(session, clock.now())
    assert (today.calls, today.steady, today.steady_before) == (5, 3, 0)
    clock.advance(86400)
    with budget.sessions() as session:  # before the new day's first call
        assert day_count(session, clock.now()).steady_before == 3
    assert taker.try_take(Priority.RECONCILE, None) == 0.0
    with budget.sessions() as session:
        after = day_count(session, clock.now())
    assert (after.calls, after.steady, after.steady_before) == (1, 0, 3)


def test_first_syncs_take_at_most_their_share_and_reconciliations_go_on(budget: Runtime) -> None:
    """A mass onboarding's first syncs rank above reconciliations, but cannot hold them up for as
    long as it lasts: the claim asks `admits` and takes a reconciliation while their share is spent."""
    clock = FrozenClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    own = Budget(budget.sessions, clock, Limits(100, 0, 60.0))
    first: list[float] = []
    recon: list[float] = []
    for _ in range(1800):  # a queue of each, for three minutes: the worker's claim every 0.1 s
        with budget.sessions() as session:
            top, first_ok = own.admits(session)
        now = clock.now().timestamp()
        if top is not None and top >= Priority.FIRST_SYNC and first_ok:
            if own.try_take(Priority.FIRST_SYNC, account_id=None) == 0.0:
                first.append(now)
        elif top == Priority.RECONCILE and own.try_take(Priority.RECONCILE, account_id=None) == 0.0:
            recon.append(now)
        clock.advance(0.1)
    start = datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp()
    last_minute = [sum(1 for t in ts if t >= start + 120) for ts in (first, recon)]
    assert _max_in_window(first, 60.0) <= 100 * FIRST_SYNC_SHARE
    assert 50 <= last_minute[0] <= 75  # the first syncs go on at their share of the pace...
    assert last_minute[1] >= 15  # ...and reconciliations get the rest, not nothing
    assert _max_in_window(sorted(first + recon), 60.0) <= 100


def test_a_take_from_rows_a_first_statement_locked_writes_once_and_decides_as_a_take_of_its_own(
    budget: Runtime,
) -> None:
    """PostgreSQL: `locking_rows` beside another read locks the project's and the user's rows (another
    taker waits) and hands them to `take_in`, which then only writes; the decisions are those of a
    take that reads its rows itself. A user's row not there yet is made as before."""
    if budget.engine.dialect.name != "postgresql":
        pytest.skip("SQLite takes the budget under its one write lock: no row locks, no round trips")
    clock = FrozenClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    own = Budget(budget.sessions, clock, Limits(100, 10, 60.0))
    assert own.try_take(Priority.NOTIFICATION, account_id=7) == 0.0  # both rows exist
    column = locking_rows(literal(7, Integer))
    statements: list[str] = []
    event.listen(budget.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    taken: list[float] = []
    with transaction(budget.sessions) as session:
        locked = session.execute(select(column)).scalar_one()
        assert sorted(row[0] for row in locked) == [PROJECT, user_scope(7)]
        with budget.engine.connect() as other:  # another taker waits for this transaction
            other.execute(text("SET lock_timeout = '100ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                other.execute(text("SELECT 1 FROM quota_budget WHERE scope = :s FOR UPDATE"), {"s": user_scope(7)})
        statements.clear()
        for _ in range(12):  # more than the user's budget: the reads are those the rows say
            taken.append(own.take_in(session, Priority.WRITE, 7, locked=locked))
            locked = session.execute(select(column)).scalar_one()
    assert [s.split()[0] for s in statements].count("UPDATE") == taken.count(0.0)
    assert not [s for s in statements if s.startswith("SELECT quota_budget")]  # read by the caller only
    twin = Budget(budget.sessions, clock, Limits(100, 10, 60.0))  # the same takes, each reading its rows
    with budget.sessions() as session:
        user = session.get(QuotaBudget, user_scope(7))
        assert user is not None
        after = (user.tat, user.calls_today)
    assert 0 < taken.count(0.0) < len(taken)  # the user's budget ran out within the loop
    assert twin.try_take(Priority.WRITE, account_id=7) == taken[-1]  # refused as the last locked take was
    with budget.sessions() as session:
        user = session.get(QuotaBudget, user_scope(7))
        assert user is not None and (user.tat, user.calls_today) == after
    with transaction(budget.sessions) as session:  # no row for user 8 yet: made, then taken from
        locked = session.execute(select(locking_rows(literal(8, Integer)))).scalar_one()
        assert [row[0] for row in locked] == [PROJECT]
        assert own.take_in(session, Priority.WRITE, 8, locked=locked) == 0.0
    with budget.sessions() as session:
        made = session.get(QuotaBudget, user_scope(8))
        assert made is not None and made.tat > 0


def test_a_call_due_within_a_microsecond_is_admitted_and_one_due_later_is_not() -> None:
    """Work put off to the end of its wait comes back at a stored time (microseconds) and a float
    timestamp (a few tenths of one at today's epoch): neither may turn "now" into "not yet"."""
    tat = datetime(2026, 12, 7, 12, tzinfo=UTC).timestamp()
    state = ScopeState(tat=tat)
    lead = URGENT_SHARE * 60.0 * TOLERANCE[Priority.NOTIFICATION]
    assert admit(state, tat - lead - 4e-7, Priority.NOTIFICATION, 600, 60.0)[1] == 0.0
    _, wait = admit(state, tat - lead - 5e-6, Priority.NOTIFICATION, 600, 60.0)
    assert wait == pytest.approx(5e-6, abs=5e-7)
