"""Spending the day's Google quota: reconciliations spread over their period, stretched to fit the day.

The per-minute budget and its priorities live in `calsync.store.quota` (every call takes from
it). This module decides *when* the safety-net reconciliations happen:

- Spread: a quiet calendar is reconciled at its own phase of the period (a hash of its id), so
  calendars connected or resynced together never reconcile together, from their first
  reconciliation on; one that reconciled at its phase is next due exactly one period later.
- Stretch, least active calendars first: every few minutes one process projects the quota day
  (calls so far, the rest of everything but reconciliations as the last day went, and the
  reconciliations owed under a plan) and picks the plan's *cut*: a gap between changes. A
  calendar whose changes come more often than the cut (its decayed change rate,
  `calsync.store.activity`; for one not measured, the time since its last change, at least a day)
  keeps `CALSYNC_RECONCILE_EVERY`, untouched. One at the cut is reconciled half as often, and four
  times less often again for each doubling of its gap (never more than a channel's life apart,
  since a renewal syncs anyway). The cut is the highest on a ladder of gaps (a quarter of a
  doubling apart, never below the period) whose projection fits `CALSYNC_QUOTA_PER_DAY` (less
  `AIM`'s margin): the fewest, quietest calendars give, and busy ones keep the hour as long as the
  quiet ones can give enough.
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

from calsync.clock import day_ends, day_started, quota_day
from calsync.config import Settings
from calsync.humanize import human_duration
from calsync.runtime import Runtime
from calsync.store.activity import PRIOR, expected_gap, gap_bound
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar
from calsync.store.quota import DayCount, day_count, ensure_project_row, save_plan
from calsync.store.states import AccountStatus

log = logging.getLogger(__name__)

PLAN_SECONDS = 300.0  # how often the day is projected again
MIN_ELAPSED = 600.0  # the steady rate is measured over at least this much of the day
QUIET_STEPS = 12  # the plan looks at gaps from base to 2^12×base (half a year)
STEPS = 4  # gaps on the plan's ladder per doubling: the cut moves by 19 % at a time
SHAPE_PRIOR = 0.05  # of the last day's count: early calls of a day say little about its growth
MAX_HOURS = 25  # a quota day is 23 to 25 hours long (summer time)
AIM = 0.998  # the plan fits the day to this share of its budget: the last minutes never go exactly as projected
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
    """How long a calendar may go without a sync: `base`, or stretched when its changes are `cut` or more apart."""

    base: float
    cap: float
    cut: float = math.inf  # inf: nothing stretched; 0: everything at the cap

    def interval(self, quiet_for: float) -> float:
        """The reconcile period for a calendar whose changes come `quiet_for` seconds apart.

        `base` below the cut; at the cut twice that, and four times more for each doubling of the
        gap (a calendar's calls fall with the square of its quietness). Always base × 2^j, so an
        idle calendar keeps one period (and its phase) for long stretches of time instead of moving
        its slot at every reconciliation.
        """
        quiet_for = max(0.0, quiet_for)
        if quiet_for < self.cut:
            return self.base
        if self.cut <= 0:
            return self.cap
        doublings = 1 + math.floor(2 * math.log2(quiet_for / self.cut) + 1e-9)
        return min(self.cap, self.base * 2.0 ** min(doublings, 64))


def plan_of(settings: Settings, cut: float = math.inf) -> Plan:
    base = settings.reconcile_every.total_seconds()
    cap = (settings.channel_ttl - settings.renew_before).total_seconds()
    return Plan(base=base, cap=max(base, cap), cut=cut)


def ladder(plan: Plan) -> list[float]:
    """The gaps the plan counts calendars by and may cut at, shortest first: base × 2^(i/STEPS)."""
    return [plan.base * 2 ** (i / STEPS) for i in range(QUIET_STEPS * STEPS + 1)]


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

    From its decayed change rate (measured, or from its first listing); without one (its first
    listing showed no recent update), the time since its last change; for one never seen to change,
    the time since it was connected but at least a day (`PRIOR`).
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
    plan = plan_of(runtime.settings, runtime.budget.cut)
    return reconcile_in(key, now, last_change=last_change, since=since, plan=plan, activity=activity)


@dataclass(frozen=True)
class Projection:
    """The day's outlook: what `calsync status`, the dashboard and /metrics show."""

    budget: int
    calls_today: int
    projected: int
    cut: float  # calendars whose changes come this far apart or more are stretched (inf: none)
    interval_busy: float  # a calendar that changed within the base period
    interval_idle: float  # a calendar quiet for a week

    @property
    def stretched(self) -> bool:
        return math.isfinite(self.cut)


def projected_total(
    plan: Plan, *, spent: float, steady_rate: float, left: float, quiet: Sequence[tuple[float, int]]
) -> float:
    """Calls by the end of the day: spent + the steady rest + each quiet bucket's reconciliations."""
    reconciles = sum(count * left / plan.interval(q) for q, count in quiet)
    return spent + steady_rate * left + reconciles


def steady_rest(
    *, so_far: float, before: float, elapsed: float, left: float, before_by_now: float | None = None
) -> float:
    """The calls other than reconciliations and first syncs still to come today.

    Notifications follow office hours, so today's pace so far misleads: too low at noon, several
    times too high by evening. The last day's shape does not: with its count by this time of day
    (`before_by_now`, from `hours_at`), the rest is the last day's rest, grown as today has grown
    so far (shrunk towards no growth early in the day, when a few calls say little). Without it
    (the first day's plan): the last day's count less today's so far, and once today has outgrown
    it, its count so far spread over the whole day; with no last day, today's pace.
    """
    if before_by_now is not None and before > 0:
        prior = SHAPE_PRIOR * before
        return max(0.0, before - before_by_now) * (so_far + prior) / (before_by_now + prior)
    if so_far < before:
        return before - so_far
    if before > 0:
        return so_far * left / (elapsed + left)
    return so_far / max(MIN_ELAPSED, elapsed) * left


def _hour_counts(hours: str | None, day: int) -> list[int]:
    """The counts of a stored "YYYYMMDD:n0,n1,…" if it is `day`'s (else none)."""
    head, _, body = (hours or "").partition(":")
    if head != str(day) or not body:
        return []
    try:
        return [int(n) for n in body.split(",")]
    except ValueError:
        return []


def mark_hour(hours: str | None, day: int, elapsed: float, so_far: int) -> str:
    """`day`'s steady calls by hour, with `so_far` as the count of the hour holding `elapsed`.

    The plan runs every few minutes, so each hour ends up holding the count near its end; an hour
    with no plan holds the count before it.
    """
    counts = _hour_counts(hours, day)
    hour = min(MAX_HOURS - 1, max(0, int(elapsed // 3600)))
    while len(counts) <= hour:
        counts.append(counts[-1] if counts else 0)
    counts[hour] = so_far
    return f"{day}:" + ",".join(str(n) for n in counts)


def hours_at(hours: str | None, day: int, elapsed: float) -> float | None:
    """`day`'s steady calls by `elapsed` seconds into it, between its hours' counts (None: not known)."""
    counts = _hour_counts(hours, day)
    hour = max(0, int(elapsed // 3600))
    if hour >= len(counts):
        return None
    start = counts[hour - 1] if hour > 0 else 0
    return start + (counts[hour] - start) * (elapsed - 3600 * hour) / 3600


def roll_hours(
    today_hours: str | None, before_hours: str | None, *, today: int, yesterday: int
) -> tuple[str | None, str | None]:
    """(today's, the last day's) hour counts once the day may have turned: today's become the last day's."""
    if _hour_counts(today_hours, today) or today_hours is None:
        return today_hours, before_hours
    return None, today_hours if _hour_counts(today_hours, yesterday) else None


def solve_cut(
    plan: Plan, *, budget: int, spent: float, steady_rate: float, left: float, quiet: Sequence[tuple[float, int]]
) -> tuple[float, float]:
    """The highest cut on the ladder whose projected day fits `budget` (with `AIM`'s margin), and that projection.

    inf (nothing stretched) when the day fits as it is (or there is no daily budget). The quiet
    buckets are counted by the ladder's gaps, so a bucket is wholly above or below any cut: the
    calendars the projection keeps at the base period are exactly the ones that keep it. The
    lowest cut is the base period: a calendar changing more often is synced by its notifications
    sooner anyway. When even that does not fit, the day will go over and the status says so.
    """

    def total(cut: float) -> float:
        return projected_total(replace(plan, cut=cut), spent=spent, steady_rate=steady_rate, left=left, quiet=quiet)

    if budget <= 0 or total(math.inf) <= budget * AIM:
        return math.inf, total(math.inf)
    cuts = ladder(plan)
    for cut in reversed(cuts):
        if total(cut) <= budget * AIM:
            return cut, total(cut)
    return cuts[0], total(cuts[0])


def quiet_buckets(session: Session, now: datetime, plan: Plan) -> list[tuple[float, int]]:
    """Calendars (and calendar lists) that reconcile, by the gap between their changes (`change_gap`).

    One scan of the calendars and one of the accounts, every few minutes; each bucket is
    represented by its lower edge on the `ladder` (so the projection errs on the side of more
    calls). A measured calendar's gap is at least an edge when its `activity` is at most a
    constant (`gap_bound`).
    """
    edges = ladder(plan)
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
            runtime.budget.cut = count.cut
            if now.timestamp() - count.planned_at < PLAN_SECONDS:
                return None
            base = plan_of(settings)
            quiet = quiet_buckets(session, now, base)
            since_start = (now - day_started(now)).total_seconds()
            elapsed = max(MIN_ELAPSED, since_start)
            left = max(0.0, (day_ends(now) - now).total_seconds())
            yesterday = quota_day(day_started(now) - timedelta(seconds=1))
            today_hours, before_hours = roll_hours(
                count.steady_hours, count.steady_hours_before, today=count.day, yesterday=yesterday
            )
            today_hours = mark_hour(today_hours, count.day, since_start, count.steady)
            rest = steady_rest(
                so_far=count.steady,
                before=count.steady_before,
                elapsed=elapsed,
                left=left,
                before_by_now=hours_at(before_hours, yesterday, since_start),
            )
            steady = rest / left if left > 0 else 0.0
            cut, total = solve_cut(
                base, budget=settings.quota_per_day, spent=count.calls, steady_rate=steady, left=left, quiet=quiet
            )
            if save_plan(
                session,
                cut=cut,
                projected=round(total),
                planned_at=now.timestamp(),
                not_after=count.planned_at,
                hours=(today_hours, before_hours),
            ):
                runtime.budget.cut = cut
                if math.isfinite(cut):
                    log.info(
                        "quota: the day projects to %d calls; calendars changing less often than every %s stretched",
                        total,
                        human_duration(cut),
                    )
                return projection(settings, count, cut=cut, projected=round(total))
    except SQLAlchemyError:
        log.exception("quota plan failed; the previous plan stays")
    return None


def projection(
    settings: Settings, count: DayCount, *, cut: float | None = None, projected: int | None = None
) -> Projection:
    plan = plan_of(settings, count.cut if cut is None else cut)
    return Projection(
        budget=settings.quota_per_day,
        calls_today=count.calls,
        projected=max(count.calls, count.projected if projected is None else projected),
        cut=plan.cut,
        interval_busy=plan.interval(0.0),
        interval_idle=plan.interval(7 * 86400.0),
    )


def describe(p: Projection) -> str:
    """One line for people: calls today, the projection against the budget, the reconcile interval."""
    of = f" of {p.budget:,}" if p.budget else " (no daily limit)"
    over = " — over the budget" if p.budget and p.projected > p.budget else ""
    every = _hours(p.interval_busy)
    if p.stretched:
        which = f"calendars changing less often than every {_hours(p.cut)}" if p.cut > 0 else "every calendar"
        every += f" ({which}: up to {_hours(p.interval_idle)})"
    return f"Google quota today: {p.calls_today:,} calls, projected {p.projected:,}{of}{over} · reconcile every {every}"


def _hours(seconds: float) -> str:
    return human_duration(seconds)


def outlook(session: Session, settings: Settings, now: datetime) -> Projection:
    """The day as the last plan saw it, with today's calls counted to now."""
    return projection(settings, day_count(session, now))
