"""The quota budget at work: several worker processes keep it as Google measures it, a notification's
sync overtakes a queue of first syncs, reconciliations are spread over their period, a 403 slows the
deployment down, and a short day stretches the least active calendars' reconciliations first (by
their rate of changes: a busy calendar keeps the hour through a quiet night, and as long as quieter
ones can give)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from calsync.clock import FrozenClock, utc
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Calendar, QuotaBudget
from calsync.store.owed import request_calendar_sync
from calsync.store.quota import FIRST_SYNCS, PROJECT, ScopeState, ceiling, emission_interval, pace, user_scope
from calsync.store.states import Priority
from calsync.work.quota import (
    MIN_SLOT,
    Plan,
    change_gap,
    hours_at,
    ladder,
    mark_hour,
    outlook,
    projected_total,
    quiet_buckets,
    reconcile_in,
    replan,
    roll_hours,
    solve_cut,
    steady_rest,
)
from calsync.work.worker import Worker
from tests.push_support import calendar_id_of, calendar_row, changes_for, wait_for
from tests.sync_support import connect_account
from tests.web.process_support import web_env

EVENT = {"summary": "Q", "start": {"dateTime": "2026-12-07T09:00:00Z"}, "end": {"dateTime": "2026-12-07T10:00:00Z"}}


def _runtime(settings: Settings, *, at: datetime | None = None, **quota: Any) -> Runtime:
    clock = FrozenClock(at or datetime.now(UTC).replace(microsecond=0))
    return Runtime.create(dataclasses.replace(settings, **quota), clock=clock)


def _morning() -> datetime:
    """09:00 Pacific of the quota day now running (the day before, before 09:00): a plan made then has
    15 hours of the day left to spread, whatever the hour the test runs at. Late in the day the few
    hours left fit the budget without stretching anything."""
    local = datetime.now(ZoneInfo("America/Los_Angeles"))
    morning = local.replace(hour=9, minute=0, second=0, microsecond=0)
    if morning > local:
        morning -= timedelta(days=1)
    return morning.astimezone(UTC)


def _frozen(rt: Runtime) -> FrozenClock:
    assert isinstance(rt.clock, FrozenClock)
    return rt.clock


def _project(rt: Runtime) -> QuotaBudget:
    with rt.sessions() as session:
        row = session.get(QuotaBudget, PROJECT)
        assert row is not None
        return row


def _baselines(rt: Runtime, account_id: int) -> int:
    with rt.sessions() as session:
        return int(
            session.scalar(
                select(func.count()).where(Calendar.account_id == account_id, Calendar.baseline_done.is_(True))
            )
            or 0
        )


def _drain(worker: Worker) -> int:
    done = 0
    while worker.work_once("w/0"):
        done += 1
    return done


def test_a_notifications_sync_overtakes_a_queue_of_first_syncs(settings: Settings, emu: Any) -> None:
    rt = _runtime(settings, quota_per_minute=120, quota_per_user_per_minute=0)
    try:
        clock = _frozen(rt)
        connect_account(rt, emu, "ann@example.com")
        Worker(rt, threads=1).run_burst()
        ann = calendar_id_of(rt, "ann@example.com")
        clock.advance(600)  # the budget is full again
        Worker(rt, threads=1).run_burst()  # whatever reconciliation fell due meanwhile (the clock stays)
        emu.create_user("bob@example.com")
        for i in range(30):
            emu.create_calendar("bob@example.com", f"team {i}")
        bob = connect_account(rt, emu, "bob@example.com")
        worker = Worker(rt, threads=1)
        worker.work_once("w/0")  # bob's calendar list: 31 first syncs are now queued
        emu.insert_event("ann@example.com", EVENT)
        with transaction(rt.sessions) as session:
            request_calendar_sync(session, ann, clock.now())  # what the receiver does for ann's notification
        assert worker.work_once("w/0") == 1
        assert [c.kind for c in changes_for(rt, ann)] == ["created"]  # first, ahead of the queue
        assert _baselines(rt, bob) == 0

        # The budget runs out for first syncs; a notification still gets through at once.
        _drain(worker)
        waiting = 31 - _baselines(rt, bob)
        assert waiting > 20  # the queue is still there: first syncs wait for room
        emu.insert_event("ann@example.com", {**EVENT, "summary": "second"})
        with transaction(rt.sessions) as session:
            request_calendar_sync(session, ann, clock.now())
        started = time.monotonic()
        assert worker.work_once("w/0") == 1
        assert time.monotonic() - started < 2.0
        assert [c.kind for c in changes_for(rt, ann)] == ["created", "created"]
        assert 31 - _baselines(rt, bob) == waiting
        for _ in range(200):  # and the queue drains as the budget allows, a few calls a second
            clock.advance(5)
            Worker(rt, threads=1).run_burst()
            if _baselines(rt, bob) == 31:
                break
        assert _baselines(rt, bob) == 31
    finally:
        rt.close()


def test_reconciliation_times_are_spread_over_the_whole_period(settings: Settings, emu: Any) -> None:
    rt = _runtime(settings, quota_per_user_per_minute=0)  # all 24 in one (frozen) instant
    try:
        clock = _frozen(rt)
        emu.create_user("ann@example.com")
        for i in range(23):
            emu.create_calendar("ann@example.com", f"c{i}")
        connect_account(rt, emu, "ann@example.com")
        Worker(rt, threads=1).run_burst()  # 24 calendars connected (and synced) at one instant
        period = rt.settings.reconcile_every.total_seconds()
        synced_at = clock.now()

        def offsets() -> list[float]:
            with rt.sessions() as session:
                rows = session.execute(
                    select(
                        Calendar.due_at,
                        Calendar.next_reconcile_at,
                        Calendar.sync_requested,
                        Calendar.sync_done,
                        Calendar.due_priority,
                        Calendar.baseline_done,
                    )
                ).all()
            assert all(r.due_at == r.next_reconcile_at for r in rows), [
                tuple(r) for r in rows if r.due_at != r.next_reconcile_at
            ]
            return sorted((r.due_at - synced_at).total_seconds() for r in rows)

        first = offsets()
        # A slot closer than MIN_SLOT goes one period on: the longest wait is the period plus at most that.
        assert len(first) == 24 and first[0] > 0 and first[-1] < period + MIN_SLOT
        quarters = [sum(1 for o in first if q * period / 4 < o <= (q + 1) * period / 4) for q in range(4)]
        assert min(quarters) >= 3, quarters  # spread over the period, from the first reconciliation

        # An idle calendar that reconciled at its phase is due again exactly one period later.
        one = min(first)
        clock.set(synced_at + timedelta(seconds=one))
        Worker(rt, threads=1).run_burst()
        assert offsets()[-1] == pytest.approx(one + period)

        # Reconciliations lined up (as by an older version) are spread again at their next pass.
        with transaction(rt.sessions) as session:
            session.execute(update(Calendar).values(due_at=clock.now(), next_reconcile_at=clock.now()))
        synced_at = clock.now()
        Worker(rt, threads=1).run_burst()
        again = offsets()
        assert again[-1] < period + MIN_SLOT
        assert sum(1 for o in again if o <= period / 4) >= 3  # not all pushed to the period's end
        assert len({round(o) for o in again}) == 24
    finally:
        rt.close()


def test_a_403_slows_the_deployment_and_a_user_limit_slows_that_user(settings: Settings, emu: Any) -> None:
    rt = _runtime(settings)
    try:
        clock = _frozen(rt)
        account = connect_account(rt, emu, "ann@example.com")
        Worker(rt, threads=1).run_burst()
        ann = calendar_id_of(rt, "ann@example.com")
        assert pace(_state(_project(rt)), clock.now().timestamp()) == 1.0

        emu.fail_next(1, status=403, reason="rateLimitExceeded", method="calendar.events.list")
        with transaction(rt.sessions) as session:
            request_calendar_sync(session, ann, clock.now())
        Worker(rt, threads=1).run_burst()
        assert calendar_row(rt, ann).sync_state == "backoff"
        now = clock.now().timestamp()
        assert pace(_state(_project(rt)), now) == 0.5  # the whole deployment's pace halved
        assert pace(_state(_project(rt)), now + 30) == pytest.approx(0.75)  # and it grows back
        assert pace(_state(_project(rt)), now + 60) == 1.0

        clock.advance(120)
        emu.fail_next(1, status=403, reason="userRateLimitExceeded", method="calendar.events.list")
        with transaction(rt.sessions) as session:
            request_calendar_sync(session, ann, clock.now())
        Worker(rt, threads=1).run_burst()
        now = clock.now().timestamp()
        with rt.sessions() as session:
            user = session.get(QuotaBudget, user_scope(account))
        assert user is not None and pace(_state(user), now) == 0.5  # only that user's budget slows
        assert pace(_state(_project(rt)), now) == 1.0

        clock.advance(120)
        emu.fail_next(1, status=429, reason="rateLimitExceeded", retry_after=30, method="calendar.events.list")
        with transaction(rt.sessions) as session:
            request_calendar_sync(session, ann, clock.now())
        Worker(rt, threads=1).run_burst()
        state = _state(_project(rt))
        limits = rt.budget.limits
        # Retry-After holds background work; a notification's sync still goes.
        assert ceiling(state, clock.now().timestamp(), limits.per_window, limits.window) == Priority.RENEWAL
        clock.set(calendar_row(rt, ann).retry_at)  # type: ignore[arg-type]
        emu.insert_event("ann@example.com", EVENT)
        Worker(rt, threads=1).run_burst()
        assert [c.kind for c in changes_for(rt, ann)] == ["created"]
    finally:
        rt.close()


def _due_at(rt: Runtime, calendar_id: int) -> datetime:
    at = utc(calendar_row(rt, calendar_id).due_at)
    assert at is not None
    return at


def _refusals() -> float:
    return REGISTRY.get_sample_value("calsync_quota_waits_total", {"priority": "notification"}) or 0.0


def test_a_user_out_of_budget_has_its_other_due_calendars_put_off_one_call_apart(settings: Settings, emu: Any) -> None:
    """One refused claim, not one per calendar: each of the user's calendars comes due when the
    user's budget has room for it, and is then synced at once."""
    rt = _runtime(settings)
    try:
        clock = _frozen(rt)
        account = connect_account(rt, emu, "busy@example.com")
        for n in range(3):
            emu.create_calendar("busy@example.com", f"Team {n}")
        Worker(rt, threads=1).run_burst()
        assert _baselines(rt, account) == 4
        rt.budget.limits = dataclasses.replace(rt.budget.limits, per_user_per_window=60)
        clock.advance(60)
        with transaction(rt.sessions) as session:
            ids = list(session.scalars(select(Calendar.id).where(Calendar.account_id == account).order_by(Calendar.id)))
            for calendar_id in ids:
                request_calendar_sync(session, calendar_id, clock.now())
            # the user has just spent its budget: its next call is 30 s away (less what urgent work may borrow)
            session.execute(
                update(QuotaBudget)
                .where(QuotaBudget.scope == user_scope(account))
                .values(tat=clock.now().timestamp() + 30, hold_until=0.0, factor=1.0, factor_at=0.0)
            )
        before = _refusals()
        worker = Worker(rt, threads=1)
        assert [worker.work_once("w/0") for _ in ids] == [0, 0, 0, 0]
        assert _refusals() - before == 1  # one calendar refused; the rest were not claimed to be refused

        due: list[tuple[datetime, int]] = sorted((_due_at(rt, c), c) for c in ids)
        assert [c for _, c in due] == ids  # in the order claims take them
        spacing = emission_interval(60, rt.budget.limits.window)
        gaps = [(later - earlier).total_seconds() for (earlier, _), (later, _) in itertools.pairwise(due)]
        assert gaps == pytest.approx([spacing] * 3, abs=1e-3)

        for at, calendar_id in due:  # each is admitted when it comes due, one call apart
            clock.set(at)
            assert worker.work_once("w/0") == 1
            row = calendar_row(rt, calendar_id)
            assert row.sync_done == row.sync_requested
        assert _refusals() - before == 1
    finally:
        rt.close()


def test_reconciliations_go_on_while_an_onboardings_first_syncs_have_spent_their_share(
    settings: Settings, emu: Any
) -> None:
    rt = _runtime(settings, quota_per_user_per_minute=0)
    try:
        clock = _frozen(rt)
        connect_account(rt, emu, "ann@example.com")
        Worker(rt, threads=1).run_burst()
        ann = calendar_id_of(rt, "ann@example.com")
        emu.create_user("bob@example.com")
        for i in range(10):
            emu.create_calendar("bob@example.com", f"team {i}")
        bob = connect_account(rt, emu, "bob@example.com")
        worker = Worker(rt, threads=1)
        worker.work_once("w/0")  # bob's calendar list: 11 first syncs are now queued
        assert rt.budget.try_take(Priority.FIRST_SYNC, None) == 0.0
        with transaction(rt.sessions) as session:  # the onboarding spent the first syncs' share
            session.execute(
                update(QuotaBudget).where(QuotaBudget.scope == FIRST_SYNCS).values(tat=clock.now().timestamp() + 60)
            )
            session.execute(update(Calendar).where(Calendar.id == ann).values(due_at=clock.now()))  # ann reconciles
        synced = calendar_row(rt, ann).last_synced_at
        clock.advance(1)
        assert worker.work_once("w/0") == 1
        assert calendar_row(rt, ann).last_synced_at != synced  # the reconciliation went, ahead of the queue
        assert _baselines(rt, bob) == 0
        assert worker.work_once("w/0") == 0  # nothing else for now: the first syncs wait for their share
        clock.advance(120)
        Worker(rt, threads=1).run_burst()
        assert _baselines(rt, bob) == 11
    finally:
        rt.close()


def _state(row: QuotaBudget) -> ScopeState:
    return ScopeState(tat=row.tat, hold_until=row.hold_until, factor=row.factor, factor_at=row.factor_at)


def test_a_short_day_stretches_the_quietest_calendars_first(settings: Settings, emu: Any) -> None:
    rt = _runtime(settings, at=_morning(), quota_per_day=200, quota_per_user_per_minute=0)  # first syncs: ~120
    try:
        clock = _frozen(rt)
        emu.create_user("ann@example.com")
        for i in range(39):
            emu.create_calendar("ann@example.com", f"c{i}")
        connect_account(rt, emu, "ann@example.com")
        Worker(rt, threads=1).run_burst()
        now = clock.now()
        busy = calendar_id_of(rt, "ann@example.com")
        with transaction(rt.sessions) as session:  # quiet for weeks, all but one
            session.execute(update(Calendar).values(created_at=now - timedelta(days=30), last_changed_at=None))
            session.execute(update(Calendar).where(Calendar.id == busy).values(last_changed_at=now))
        with rt.sessions() as session:
            assert outlook(session, rt.settings, now).cut == math.inf
        clock.advance(400)
        replan(rt)
        with rt.sessions() as session:
            seen = outlook(session, rt.settings, clock.now())
        base = rt.settings.reconcile_every.total_seconds()
        assert seen.stretched and seen.interval_busy == base
        assert seen.interval_idle > base
        assert seen.cut >= base  # the busy one (a change minutes ago, nothing measured yet) is above the cut
        plan = Plan(base, 6 * 86400, seen.cut)
        at = clock.now()
        idle_gap = reconcile_in(7, at, last_change=None, since=at - timedelta(days=30), plan=plan)
        busy_gap = reconcile_in(8, at, last_change=at - timedelta(minutes=5), since=at, plan=plan)
        assert busy_gap == base and idle_gap > base
    finally:
        rt.close()


@pytest.mark.slow
def test_several_worker_processes_keep_the_budget_measured_at_google(
    settings: Settings, emu: Any, tmp_path: Path
) -> None:
    window, budget = 3.0, 15  # a short window keeps the test short; the arithmetic is the minute's
    emu.enforce_quota(per_project=budget, window=window)  # Google refuses anything over it
    runtime = Runtime.create(settings)
    try:
        for user in ("ann@example.com", "bob@example.com"):
            emu.create_user(user)
            for i in range(2):
                emu.create_calendar(user, f"{user} {i}")
            connect_account(runtime, emu, user)
        env = web_env(
            settings,
            CALSYNC_QUOTA_WINDOW=str(window),
            CALSYNC_QUOTA_PER_MINUTE=str(round(budget * 60 / window)),
        )
        workers = [
            subprocess.Popen(
                [str(Path(sys.executable).parent / "calsync"), "worker", "--threads", "3"],
                env=env,
                stdout=(tmp_path / f"w{n}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            for n in range(3)
        ]
        try:
            wait_for(lambda: _all_watched(runtime, 6), timeout=60, interval=0.2, what="every calendar synced")
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
            for proc in workers:
                try:
                    proc.wait(timeout=30)
                finally:
                    if proc.poll() is None:
                        proc.kill()
    finally:
        runtime.close()
    served = sorted(r.time.timestamp() for r in emu.requests if r.api_method.startswith("calendar.") and r.status < 400)
    assert len(served) >= 20  # more than the budget: without it, they would all go within a second or two
    print(f"\n{len(served)} calls served over {served[-1] - served[0]:.1f} s")
    assert emu.quota.refused == 0  # Google never had to say no
    assert _max_in_window(served, window) <= budget


def _all_watched(rt: Runtime, count: int) -> bool:
    with rt.sessions() as session:
        rows = session.execute(select(Calendar.baseline_done, Calendar.sync_requested, Calendar.sync_done)).all()
    return len(rows) == count and all(r.baseline_done and r.sync_requested == r.sync_done for r in rows)


def _max_in_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_under_a_stretch_a_busy_calendar_keeps_the_hour_through_the_night_and_idle_ones_stretch(
    settings: Settings, emu: Any
) -> None:
    rt = _runtime(settings, quota_per_user_per_minute=0)
    try:
        clock = _frozen(rt)
        emu.create_user("ann@example.com")
        for i in range(5):
            emu.create_calendar("ann@example.com", f"c{i}")
        connect_account(rt, emu, "ann@example.com")
        Worker(rt, threads=1).run_burst()
        busy = calendar_id_of(rt, "ann@example.com")
        base = rt.settings.reconcile_every.total_seconds()
        # A working day: a change every half hour, each synced by the notification it sends.
        for i in range(16):
            emu.insert_event("ann@example.com", {**EVENT, "summary": f"change {i}"})
            with transaction(rt.sessions) as session:
                request_calendar_sync(session, busy, clock.now())
            Worker(rt, threads=1).run_burst()
            clock.advance(1800)
        for _ in range(14):  # then a night without a change (hourly reconciliations meanwhile)
            clock.advance(3600)
            Worker(rt, threads=1).run_burst()
        now = clock.now()
        row = calendar_row(rt, busy)
        assert row.activity is not None and row.last_changed_at is not None
        quiet = (now - utc(row.last_changed_at)).total_seconds()  # type: ignore[operator]
        assert quiet > 14 * 3600
        with rt.sessions() as session:
            others = session.execute(select(Calendar.activity).where(Calendar.id != busy)).scalars().all()
        assert len(others) == 5 and all(a is None for a in others)  # no change measured: quiet since connected
        gap = change_gap(now.timestamp(), last_change=None, since=None, activity=row.activity)
        assert gap < 4 * 3600  # its rate says a change every few hours, though the night was quiet

        # The day is short: the plan cuts at 4 h, so calendars changing less often are stretched.
        cut = 4 * 3600.0
        assert Plan(base, 6 * 86400, cut).interval(quiet) > base  # by its quiet time it would stretch
        with rt.sessions() as session:  # the plan's query sees the busy one among the most active
            buckets = dict(quiet_buckets(session, now, Plan(base, 6 * 86400)))
        assert sum(n for q, n in buckets.items() if q < 4 * 3600) == 1, buckets
        assert sum(n for q, n in buckets.items() if q >= 16 * 3600) == 5 + 1, buckets  # + the calendar list
        with transaction(rt.sessions) as session:  # that plan stays (planned "later": no process replans)
            session.execute(update(QuotaBudget).values(reconcile_cut=cut, planned_at=now.timestamp() + 10 * 86400))
            session.execute(update(Calendar).values(due_at=now, next_reconcile_at=now))  # all reconcile now
        synced: dict[int, list[datetime]] = {}
        until = now + timedelta(hours=12)
        while clock.now() <= until:  # twelve hours of reconciliations, each as it falls due
            Worker(rt, threads=1).run_burst()
            with rt.sessions() as session:
                rows = session.execute(select(Calendar.id, Calendar.last_synced_at, Calendar.next_reconcile_at)).all()
            for r in rows:
                seen = synced.setdefault(r.id, [])
                if not seen or seen[-1] != utc(r.last_synced_at):
                    seen.append(utc(r.last_synced_at))  # type: ignore[arg-type]
            clock.set(min(t for t in (utc(r.next_reconcile_at) for r in rows) if t is not None))
        gaps = [(b - a).total_seconds() for a, b in zip(synced[busy], synced[busy][1:], strict=False)]
        assert len(gaps) >= 12 and max(gaps) <= base + 1, gaps  # the busy calendar keeps the hour
        # The idle ones stretch: at least a day between changes (nothing was seen to change), six times
        # the cut, so 2^6 h; a few syncs in 12 hours (a slot moves as the period grows), not twelve.
        idle = {cid: len(seen) for cid, seen in synced.items() if cid != busy}
        assert len(idle) == 5 and max(idle.values()) <= 3, idle
    finally:
        rt.close()


def test_the_rest_of_the_day_follows_the_last_day_not_the_pace_of_office_hours() -> None:
    day = 86400.0
    # 18:00, 90 % of yesterday's notifications already in: the rest is the evening's tenth.
    assert steady_rest(so_far=900, before=1000, elapsed=0.75 * day, left=0.25 * day) == 100
    # Without the last day's hours: a day that outgrew the last one spreads its count so far over
    # the whole day (not its pace into the night); the first day goes on at its own pace.
    assert steady_rest(so_far=1200, before=1000, elapsed=0.5 * day, left=0.5 * day) == 600
    assert steady_rest(so_far=1800, before=1000, elapsed=0.75 * day, left=0.25 * day) == 450
    assert steady_rest(so_far=300, before=0, elapsed=0.25 * day, left=0.75 * day) == 900


def test_a_day_that_outgrew_the_last_one_follows_its_shape_with_no_jump() -> None:
    day = 86400.0
    # The last day: office hours (08:00-18:00) carry most calls; 940 by 18:00, 1000 in all.
    yesterday = None
    for hour in range(24):
        done = 20 * min(hour + 1, 8) + 78 * max(0, min(hour + 1, 18) - 8) + 10 * max(0, hour + 1 - 18)
        yesterday = mark_hour(yesterday, 20261205, hour * 3600 + 3500, done)
    today, before = roll_hours(yesterday, None, today=20261206, yesterday=20261205)
    assert today is None and before == yesterday
    by_six = hours_at(before, 20261205, 18 * 3600)
    assert by_six == 940
    # Today grew by a fifth (an onboarding): at 18:00 it has 1128 and passes the last day's 1000
    # soon after. The rest is the evening's, grown a fifth, on either side of that moment.
    rests = [
        steady_rest(so_far=so_far, before=1000, elapsed=at, left=day - at, before_by_now=hours_at(before, 20261205, at))
        for so_far, at in ((1128, 18 * 3600), (1000 * 1.2 * 0.97, 19.5 * 3600))
    ]
    assert 60 < rests[0] < 75  # 60 × 1.2, shrunk a little towards the last day
    assert rests[1] < rests[0]  # no jump when today's count passes the last day's
    assert steady_rest(so_far=1128, before=1000, elapsed=18 * 3600, left=6 * 3600) == pytest.approx(1128 * 0.25)


def test_busy_calendars_are_not_stretched_while_quiet_ones_can_give() -> None:
    base, cap = 3600.0, 6 * 86400.0
    plan = Plan(base, cap)
    busy, normal, idle = base * 2, base * 8, base * 512  # gaps between changes, on the plan's ladder
    assert {busy, normal, idle} <= set(ladder(plan))
    quiet = [(busy, 1000), (normal, 3000), (idle, 6000)]

    def solve(budget: int) -> Plan:
        cut, total = solve_cut(plan, budget=budget, spent=0, steady_rate=0, left=86400, quiet=quiet)
        assert total <= budget or cut == base
        fitted = dataclasses.replace(plan, cut=cut)
        assert total == projected_total(fitted, spent=0, steady_rate=0, left=86400, quiet=quiet)
        return fitted

    assert solve(241_000).cut == math.inf  # everything at the hour fits (with the margin): nothing stretched
    # The idle calendars at the channel's life give enough: the busy and the normal keep the hour.
    enough = solve(100_000)
    assert enough.interval(busy) == enough.interval(normal) == base < enough.interval(idle)
    # Not enough: the normal ones give next; the busy ones still keep the hour.
    tight = solve(40_000)
    assert tight.interval(busy) == base < tight.interval(normal) and tight.interval(idle) == cap
    # Only when the quieter ones at the cap cannot make the day fit are busy ones stretched.
    assert solve(20_000).interval(busy) > base


def test_a_calendar_quieter_than_the_cut_is_stretched_by_the_square_of_its_gap() -> None:
    base, cut = 3600.0, 4 * 3600.0
    plan = Plan(base, 6 * 86400, cut)
    assert plan.interval(cut * 0.99) == base  # just above the cut: untouched
    assert plan.interval(cut) == 2 * base
    assert plan.interval(cut * math.sqrt(2)) == 4 * base
    assert plan.interval(cut * 2) == 8 * base
    assert plan.interval(30 * 86400) == 6 * 86400  # never past a channel's life
    assert Plan(base, 6 * 86400, 0.0).interval(0.0) == 6 * 86400  # a cut at 0: everything at the cap
