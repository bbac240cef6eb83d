"""Spending the day's Google quota: reconciliations spread over their period, stretched to fit the day.

The per-minute budget and its priorities live in `calsync.store.quota` (every call takes from
it). This module decides *when* the safety-net reconciliations happen:

- Spread: a quiet calendar is reconciled at its own phase of the period (a hash of its id), so
  calendars connected or resynced together never reconcile together, from their first
  reconciliation on; one that reconciled at its phase is next due exactly one period later.
- Stretch: every few minutes one process projects the quota day (calls so far, the rest of
  everything but reconciliations as the last day went, and the reconciliations owed at the
  current stretch) and picks
  the smallest stretch whose projection fits `CALSYNC_QUOTA_PER_DAY`. A calendar whose changes
  come every `q` seconds (its decayed change rate, `calsync.store.activity`; for one not measured
  yet, the time since its last change, at least a day) is then reconciled every
  `stretch * q² / period` (never less than `CALSYNC_RECONCILE_EVERY`, never more than a channel's
  life, since a renewal syncs anyway). The square puts the stretch on the least active first: a
  calendar changing a few times a day keeps the period, nights included, until the idle and the
  occasional ones have given what they can.
  Notification syncs, renewals and writes are never held back for the day.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, and_, case, func, or_, select, true
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from calsync.config import Settings
from calsync.humanize import human_duration
from calsync.runtime import Runtime
from calsync.store.activity import PRIOR, expected_gap, gap_bound
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar
from calsync.store.quota import DayCount, day_count, day_started, ensure_project_row, save_plan
from calsync.store.states import AccountStatus

log = logging.getLogger(__name__)

PLAN_SECONDS = 300.0  # how often the day is projected again
MIN_ELAPSED = 600.0  # the steady rate is measured over at least this much of the day
QUIET_STEPS = 12  # quiet-time buckets: base, 2×base, … 2^11×base
MIN_SLOT = 1.0  # seconds: the longest gap is the period plus at most this
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def phase(key: int) -> float:
    """A calendar's place in its period, in [0, 1): Fibonacci hashing of its id.

    Consecutive ids (calendars connected together) land as far apart as possible.
    """
    return ((key * _GOLDEN) & _MASK) / float(1 << 64)


@dataclass(frozen=True)
class Plan:
    """How long a calendar may go without a sync: `base` stretched by `stretch` × its quiet time."""

    base: float
    cap: float
    stretch: float = 0.0

    def interval(self, quiet_for: float) -> float:
        """The reconcile period for a calendar whose changes come `quiet_for` seconds apart.

        Rounded down to base × 2^j, so an idle calendar keeps one period (and its phase) for long
        stretches of time instead of moving its slot at every reconciliation.
        """
        raw = min(self.cap, max(self.base, self.stretch * max(0.0, quiet_for) ** 2 / self.base))
        if raw <= self.base:
            return self.base
        return min(self.cap, self.base * 2.0 ** math.floor(math.log2(raw / self.base) + 1e-9))


def plan_of(settings: Settings, stretch: float = 0.0) -> Plan:
    base = settings.reconcile_every.total_seconds()
    cap = (settings.channel_ttl - settings.renew_before).total_seconds()
    return Plan(base=base, cap=max(base, cap), stretch=stretch)


def reconcile_in(
    key: int,
    now: datetime,
    *,
    last_change: datetime | None,
    since: datetime | None,
    plan: Plan,
    activity: float | None = None,
) -> float:
    """Seconds from a successful sync at `now` until the calendar's next reconciliation.

    A calendar that changed within the base period is busy: its notifications keep it fresh, so it
    is reconciled one period after its last sync. Any other one goes to its next phase slot, in
    [1 s, period + 1 s): never later than one period (and a second), spread over the whole period.
    The period is stretched by how rarely it changes (`activity`; else its quiet time).
    """
    return reconcile_in_seconds(
        key,
        now.timestamp(),
        last_change=None if last_change is None else last_change.timestamp(),
        since=None if since is None else since.timestamp(),
        plan=plan,
        activity=activity,
    )


def change_gap(now: float, *, last_change: float | None, since: float | None, activity: float | None) -> float:
    """Seconds between the calendar's changes, as the stretch sees it.

    From its decayed change rate once one was measured; before that, the time since its last
    change; for one never changed, the time since it was connected but at least a day: no change
    seen reads as at most one a day (`PRIOR`), so a mass of newly connected calendars is not taken
    for a mass of busy ones.
    """
    if activity is not None:
        return expected_gap(activity, now)
    if last_change is not None:
        return now - last_change
    return max(PRIOR, now - (since if since is not None else now))


def reconcile_in_seconds(
    key: int, now: float, *, last_change: float | None, since: float | None, plan: Plan, activity: float | None = None
) -> float:
    """`reconcile_in` on Unix seconds (what the simulation in tests/bench drives)."""
    interval = plan.interval(change_gap(now, last_change=last_change, since=since, activity=activity))
    if last_change is not None and now - last_change < plan.base:
        return interval
    slot = (phase(key) * interval - now) % interval
    # A calendar reconciled at its slot is next due one period on, not again at once (rounding).
    return slot if slot >= MIN_SLOT else slot + interval


def next_reconcile(
    runtime: Runtime,
    key: int,
    now: datetime,
    last_change: datetime | None,
    since: datetime | None,
    activity: float | None = None,
) -> float:
    """`reconcile_in` under this process's current plan."""
    plan = plan_of(runtime.settings, runtime.budget.stretch)
    return reconcile_in(key, now, last_change=last_change, since=since, plan=plan, activity=activity)


@dataclass(frozen=True)
class Projection:
    """The day's outlook: what `calsync status`, the dashboard and /metrics show."""

    budget: int
    calls_today: int
    projected: int
    stretch: float
    interval_busy: float  # a calendar that changed within the base period
    interval_idle: float  # a calendar quiet for a week

    @property
    def stretched(self) -> bool:
        return self.interval_idle > self.interval_busy


def projected_total(
    plan: Plan, *, spent: float, steady_rate: float, left: float, quiet: Sequence[tuple[float, int]]
) -> float:
    """Calls by the end of the day: spent + the steady rest + each quiet bucket's reconciliations."""
    reconciles = sum(count * left / plan.interval(q) for q, count in quiet)
    return spent + steady_rate * left + reconciles


def steady_rest(*, so_far: float, before: float, elapsed: float, left: float) -> float:
    """The calls other than reconciliations and first syncs still to come today.

    Notifications follow office hours, so today's pace so far misleads: too low at noon, several
    times too high by evening. The last day's count less today's so far follows the same shape.
    Once today has outgrown the last day (a mass onboarding), its count so far is spread over the
    whole day: extrapolating office hours into the night would stretch busy calendars for nothing.
    With no last day, today's pace is all there is.
    """
    if so_far < before:
        return before - so_far
    if before > 0:
        return so_far * left / (elapsed + left)
    return so_far / max(MIN_ELAPSED, elapsed) * left


def solve_stretch(
    plan: Plan, *, budget: int, spent: float, steady_rate: float, left: float, quiet: Sequence[tuple[float, int]]
) -> tuple[float, float]:
    """The smallest stretch whose projected day fits `budget`, and that projection.

    0 when the day fits unstretched (or there is no daily budget); the largest useful stretch when
    even that does not fit (everything at the cap: the day will go over, and the status says so).
    """

    def total(k: float) -> float:
        return projected_total(replace(plan, stretch=k), spent=spent, steady_rate=steady_rate, left=left, quiet=quiet)

    if budget <= 0 or total(0.0) <= budget:
        return 0.0, total(0.0)
    shortest = min((q for q, n in quiet if n and q > 0), default=plan.base)
    high = plan.cap * plan.base / shortest**2 * 2
    if total(high) > budget:
        return high, total(high)
    low = 0.0
    for _ in range(50):
        mid = (low + high) / 2
        if total(mid) <= budget:
            high = mid
        else:
            low = mid
    return high, total(high)


def quiet_buckets(session: Session, now: datetime, plan: Plan) -> list[tuple[float, int]]:
    """Calendars (and calendar lists) that reconcile, by the gap between their changes (`change_gap`).

    One scan of the calendars and one of the accounts, every few minutes; each bucket is
    represented by its lower edge (so the projection errs on the side of more calls). A measured
    calendar's gap is at least an edge when its `activity` is at most a constant (`gap_bound`).
    """
    edges = [plan.base * 2**j for j in range(QUIET_STEPS)]
    buckets: list[tuple[float, int]] = []
    quiet_acct = func.coalesce(Account.connected_at, Account.created_at)

    def at_least(edge: float, table: Any) -> Any:
        """`change_gap` >= edge, as SQL: one comparison with a constant for each kind of row."""
        before = now - timedelta(seconds=edge)
        never = true() if edge <= PRIOR else None
        if table is Account:
            return never if never is not None else quiet_acct <= before
        unchanged = never if never is not None else Calendar.created_at <= before
        return or_(
            Calendar.activity <= gap_bound(edge, now.timestamp()),
            and_(Calendar.activity.is_(None), Calendar.last_changed_at <= before),
            and_(Calendar.activity.is_(None), Calendar.last_changed_at.is_(None), unchanged),
        )

    for table, stmt in (
        (
            Calendar,
            select()
            .select_from(Calendar)
            .join(Account, Account.id == Calendar.account_id)
            .where(
                Account.status == AccountStatus.ACTIVE, Calendar.removed_at.is_(None), Calendar.baseline_done.is_(True)
            ),
        ),
        (Account, select().select_from(Account).where(Account.status == AccountStatus.ACTIVE)),
    ):
        columns = [func.count()] + [func.sum(case((at_least(edge, table), 1), else_=0)).cast(Integer) for edge in edges]
        row = session.execute(stmt.add_columns(*columns)).one()
        counts = [int(v or 0) for v in row]
        above = [*counts[1:], 0]
        buckets.append((0.0, counts[0] - above[0]))
        for j, edge in enumerate(edges):
            buckets.append((edge, above[j] - above[j + 1]))
    merged: dict[float, int] = {}
    for q, n in buckets:
        merged[q] = merged.get(q, 0) + n
    return sorted(merged.items())


def replan(runtime: Runtime) -> Projection | None:
    """Project the day and store a new stretch if the last plan is older than PLAN_SECONDS.

    Any process may call it on every scheduler pass: the stored plan's time elects one planner, and
    every process picks up the stretch from the row. Failures are logged: the old plan stays.
    """
    settings = runtime.settings
    now = runtime.clock.now()
    try:
        with transaction(runtime.sessions) as session:
            ensure_project_row(session)
            count = day_count(session, now)
            runtime.budget.stretch = count.stretch
            if now.timestamp() - count.planned_at < PLAN_SECONDS:
                return None
            base = plan_of(settings)
            quiet = quiet_buckets(session, now, base)
            elapsed = max(MIN_ELAPSED, (now - day_started(now)).total_seconds())
            left = max(0.0, 86400.0 - (now - day_started(now)).total_seconds())
            rest = steady_rest(so_far=count.steady, before=count.steady_before, elapsed=elapsed, left=left)
            steady = rest / left if left > 0 else 0.0
            stretch, total = solve_stretch(
                base, budget=settings.quota_per_day, spent=count.calls, steady_rate=steady, left=left, quiet=quiet
            )
            if save_plan(
                session, stretch=stretch, projected=round(total), planned_at=now.timestamp(), not_after=count.planned_at
            ):
                runtime.budget.stretch = stretch
                if stretch:
                    log.info("quota: the day projects to %d calls; reconciliations stretched by %.2f", total, stretch)
                return projection(settings, count, stretch=stretch, projected=round(total))
    except SQLAlchemyError:
        log.exception("quota plan failed; the previous plan stays")
    return None


def projection(
    settings: Settings, count: DayCount, *, stretch: float | None = None, projected: int | None = None
) -> Projection:
    plan = plan_of(settings, count.stretch if stretch is None else stretch)
    return Projection(
        budget=settings.quota_per_day,
        calls_today=count.calls,
        projected=max(count.calls, count.projected if projected is None else projected),
        stretch=plan.stretch,
        interval_busy=plan.interval(0.0),
        interval_idle=plan.interval(7 * 86400.0),
    )


def describe(p: Projection) -> str:
    """One line for people: calls today, the projection against the budget, the reconcile interval."""
    of = f" of {p.budget:,}" if p.budget else " (no daily limit)"
    over = " — over the budget" if p.budget and p.projected > p.budget else ""
    every = _hours(p.interval_busy)
    if p.stretched:
        every += f" (quiet calendars: up to {_hours(p.interval_idle)})"
    return f"Google quota today: {p.calls_today:,} calls, projected {p.projected:,}{of}{over} · reconcile every {every}"


def _hours(seconds: float) -> str:
    return human_duration(seconds)


def outlook(session: Session, settings: Settings, now: datetime) -> Projection:
    """The day as the last plan saw it, with today's calls counted to now."""
    return projection(settings, day_count(session, now))
