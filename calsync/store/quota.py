"""Google's quota as one budget in the database, taken from by every call of every process.

Each scope (the project, and each user: Google limits both per minute) is paced with GCRA, the
generic cell rate algorithm: a row keeps `tat`, the time at which the calls taken so far are paid
off at the allowed pace, one every `emission_interval`. A call may go when `tat` is no further
ahead of now than its priority's tolerance; it then moves `tat` on by one interval. The most
tolerant class may run `URGENT_SHARE` of the window ahead, which bounds any sliding window of
`window` seconds to the budget (see `emission_interval`); background work may run less far ahead
or none, so a full window of it still leaves room for urgent calls, which never queue behind it.

First syncs also take from a scope of their own, paced at `FIRST_SYNC_SHARE` of the project's: a
mass onboarding ranks above reconciliations, and without it would take the whole minute for as long
as it lasts, holding up the reconciliations of every calendar already connected. With it, the
claim takes reconciliations while the first syncs' share is spent (`Budget.admits`).

Google's "slow down" (403 usageLimits, 429) halves the scope's pace, which then grows back by a
fixed step per second (additive increase, multiplicative decrease). Retry-After holds the scope's
background work (first syncs, reconciliations) that long; urgent work goes on at the halved pace,
and the calendar that was refused waits out the Retry-After itself (calsync.work.backoff).

The decisions are pure functions of a row (`admit`, `slowed`), so a simulation can drive the same
code; `Budget` applies them to the rows under a row lock, in a transaction of its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, String, bindparam, case, cast, func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from calsync.clock import Clock, quota_day
from calsync.errors import QuotaWait
from calsync.store.db import is_postgres
from calsync.store.models import QuotaBudget
from calsync.store.states import Priority

log = logging.getLogger(__name__)

PROJECT = "project"
FIRST_SYNCS = "first_syncs"
FIRST_SYNC_SHARE = 0.75  # of the project's pace: the rest stays for reconciliations during an onboarding
_NOBODY = object()  # no call prepaid on this thread
# A call less than this early counts as on time: times are stored to the microsecond, and a
# timestamp's float cannot tell apart instants a few tenths of one apart. Work put off to the
# moment its wait ends would otherwise be refused then by a rounding error, and put off again.
RESOLUTION = 1e-6
# The most tolerant class may run this share of the window ahead: the urgent reserve.
URGENT_SHARE = 0.2
# How far ahead each class may run, as a share of that reserve. Background classes stop short,
# so whatever they leave is there for the classes above them at once.
TOLERANCE = {
    Priority.WRITE: 1.0,
    Priority.NOTIFICATION: 0.9,
    Priority.RENEWAL: 0.6,
    Priority.FIRST_SYNC: 0.3,
    Priority.RECONCILE: 0.1,
}
SLOWEST = 1 / 16  # the pace never falls below this share of the budget
RECOVERY_PER_SECOND = 1 / 120  # additive increase: from half pace back to full in a minute
DECREASE_COOLDOWN = 5.0  # 403s from calls already in flight do not halve the pace again
MAX_HOLD = 3600.0  # a Retry-After longer than this is not believed
HELD_FROM = Priority.FIRST_SYNC  # the classes a Retry-After holds back


USER_SCOPE_PREFIX = "user:"  # a user's scope: this, then the account's id (`user_scope`, and `locking_rows` in SQL)


def user_scope(account_id: int) -> str:
    return f"{USER_SCOPE_PREFIX}{account_id}"


@dataclass(frozen=True)
class Limits:
    """The budget: calls per window for the project and for each user; 0 turns a limit off."""

    per_window: int
    per_user_per_window: int
    window: float = 60.0

    @property
    def first_syncs_per_window(self) -> int:
        """The first syncs' own budget: `FIRST_SYNC_SHARE` of the project's (0: no limit, as the project's)."""
        return max(1, int(self.per_window * FIRST_SYNC_SHARE)) if self.per_window > 0 else 0


@dataclass(frozen=True)
class ScopeState:
    """One scope's row, as the pure decisions see it."""

    tat: float = 0.0
    hold_until: float = 0.0
    factor: float = 1.0
    factor_at: float = 0.0


def emission_interval(per_window: int, window: float) -> float:
    """Seconds between calls at full pace.

    A call goes only while `tat` <= now + tolerance, and each moves `tat` on by this interval, so
    calls i..j inside one window satisfy (j - i) * interval <= window + tolerance: with the largest
    tolerance (`URGENT_SHARE` of the window), no window holds more than `per_window` calls.
    """
    return (window * (1 + URGENT_SHARE)) / max(1, per_window - 1)


def pace(state: ScopeState, now: float) -> float:
    """The share of the full rate allowed now: halved by each slow-down, growing back linearly."""
    return min(1.0, state.factor + RECOVERY_PER_SECOND * max(0.0, now - state.factor_at))


def admit(
    state: ScopeState, now: float, priority: Priority, per_window: int, window: float
) -> tuple[ScopeState, float]:
    """Take one call for a class: (the scope's new state, 0.0), or (unchanged, seconds to wait)."""
    if per_window <= 0:
        return state, 0.0
    if now < state.hold_until and priority >= HELD_FROM:
        return state, state.hold_until - now
    start = max(state.tat, now)
    ahead = start - now - URGENT_SHARE * window * TOLERANCE[priority]
    if ahead > RESOLUTION:
        return state, ahead
    return replace(state, tat=start + emission_interval(per_window, window) / pace(state, now)), 0.0


def slowed(state: ScopeState, now: float, retry_after: float | None) -> ScopeState:
    """Google said slow down: halve the pace (once per cooldown) and hold for Retry-After."""
    if now - state.factor_at >= DECREASE_COOLDOWN or state.factor_at == 0.0:
        state = replace(state, factor=max(SLOWEST, pace(state, now) / 2), factor_at=now)
    if retry_after:
        state = replace(state, hold_until=max(state.hold_until, now + min(retry_after, MAX_HOLD)))
    return state


def ceiling(state: ScopeState, now: float, per_window: int, window: float) -> Priority | None:
    """The least urgent class the project's budget admits now (None: not even writes)."""
    for priority in sorted(Priority, reverse=True):
        if admit(state, now, priority, per_window, window)[1] == 0.0:
            return priority
    return None


@dataclass(frozen=True)
class DayCount:
    """The project's calls in the current quota day, by what they were for."""

    day: int
    calls: int
    reconcile: int
    first_sync: int
    cut: float  # the plan's: calendars changing less often are stretched (inf: none)
    projected: int
    planned_at: float
    steady_before: int = 0  # the previous day's calls other than reconciliations and first syncs
    steady_hours: str | None = None  # those calls hour by hour, today and the last day (as stored)
    steady_hours_before: str | None = None

    @property
    def steady(self) -> int:
        """Today's calls other than reconciliations and first syncs (what happens whatever the plan)."""
        return steady_calls(self.calls, self.reconcile, self.first_sync)


def steady_calls(calls: int, reconcile: int, first_sync: int) -> int:
    """A day's calls other than reconciliations and first syncs."""
    return max(0, calls - reconcile - first_sync)


class Budget:
    """The deployment's budget: every Google call takes its place here first."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, limits: Limits, *, max_wait: float = 5.0) -> None:
        self.sessions = sessions
        self.clock = clock
        self.limits = limits
        self.max_wait = max_wait
        self.cut = math.inf  # the day's plan as last read (calsync.work.quota keeps it current)
        self.sleep: Callable[[float], None] = time.sleep
        self._prepaid = threading.local()
        self._refused = threading.local()

    def try_take(self, priority: Priority, account_id: int | None) -> float:
        """Take one call now (0.0), or say how many seconds until this class may."""
        with self.sessions() as session, session.begin():
            return self.take_in(session, priority, account_id)

    def prepay(
        self, session: Session, priority: Priority, account_id: int | None, *, locked: LockedRows | None = None
    ) -> float:
        """Take a job's first call inside the transaction that claims the job (0.0), or say how long to wait.

        The call is then credited to this thread: the job's first request costs no transaction of
        its own, so a one-call incremental sync pays for the budget with no extra round trip.
        """
        wait = self.take_in(session, priority, account_id, locked=locked)
        self._prepaid.account = account_id if wait == 0.0 else _NOBODY
        return wait

    def user_spacing(self) -> float | None:
        """After this thread's last take: the seconds between the user's calls at its pace if the
        user's own budget refused it (the project's had room), else None."""
        spacing: float | None = getattr(self._refused, "spacing", None)
        return spacing

    def use_prepaid(self, account_id: int | None) -> bool:
        """Spend this thread's credit if it was taken for this account (at most once)."""
        if getattr(self._prepaid, "account", _NOBODY) != account_id:
            return False
        self._prepaid.account = _NOBODY
        return True

    def forget_prepaid(self) -> None:
        self._prepaid.account = _NOBODY

    def take_in(
        self, session: Session, priority: Priority, account_id: int | None, *, locked: LockedRows | None = None
    ) -> float:
        """`try_take` inside the caller's transaction (which must commit for the call to count).

        `locked`: the scopes' rows as `locking_rows` read and locked them earlier in the transaction
        (no statement of its own then, unless a row is missing)."""
        limits = self.limits
        scopes = [PROJECT] if account_id is None else [PROJECT, user_scope(account_id)]
        if priority == Priority.FIRST_SYNC:
            scopes.append(FIRST_SYNCS)
        rows = _held(locked) if locked is not None else {}
        if not all(scope in rows for scope in scopes):
            rows = _lock(session, scopes)
        if len(rows) < len(scopes):
            _create(session, [s for s in scopes if s not in rows])
            rows = _lock(session, scopes)
        now_dt = self.clock.now()  # read under the lock: decisions are made in the order of their times
        now = now_dt.timestamp()
        project, wait = admit(_state(rows[PROJECT]), now, priority, limits.per_window, limits.window)
        first: ScopeState | None = None
        if wait == 0.0 and priority == Priority.FIRST_SYNC:
            first, wait = admit(_state(rows[FIRST_SYNCS]), now, priority, limits.first_syncs_per_window, limits.window)
        user: ScopeState | None = None
        self._refused.spacing = None
        if wait == 0.0 and account_id is not None:
            held = _state(rows[user_scope(account_id)])
            user, wait = admit(held, now, priority, limits.per_user_per_window, limits.window)
            if wait > 0.0:
                self._refused.spacing = emission_interval(limits.per_user_per_window, limits.window) / pace(held, now)
        if wait > 0.0:
            return wait  # nothing written: the transaction ends having changed nothing
        day = quota_day(now_dt)
        taken = [_taken(PROJECT, project, day, priority)]
        if user is not None and account_id is not None:
            taken.append(_taken(user_scope(account_id), user, day, None))
        if first is not None:
            taken.append(_taken(FIRST_SYNCS, first, day, None))
        session.execute(_TAKE, taken)  # one statement for every row (psycopg pipelines them)
        return 0.0

    def take(self, priority: Priority, account_id: int | None, *, max_wait: float | None = None) -> None:
        """Take one call, waiting up to `max_wait` seconds for room; else raise QuotaWait."""
        limit = self.max_wait if max_wait is None else max_wait
        waited = 0.0
        while True:
            wait = self.try_take(priority, account_id)
            if wait == 0.0:
                return
            if waited + wait > limit:
                raise QuotaWait(f"no {priority.name.lower()} quota for {wait:.1f}s", wait=wait)
            step = min(wait + 0.005, 1.0)
            self.sleep(step)
            waited += step

    def slowed(self, account_id: int | None, retry_after: float | None) -> None:
        """Google refused a call for its rate: slow the project (or that user) down."""
        now = self.clock.now().timestamp()
        scope = PROJECT if account_id is None else user_scope(account_id)
        with self.sessions() as session, session.begin():
            rows = _lock(session, [scope])
            if scope not in rows:
                _create(session, [scope])
                rows = _lock(session, [scope])
            _write(session, scope, slowed(_state(rows[scope]), now, retry_after))
        log.warning("Google asked %s to slow down (retry after %s s)", scope, retry_after)

    def ceiling(self, session: Session) -> Priority | None:
        """The least urgent class that may start work now (one read of the project's row)."""
        return self.admits(session)[0]

    def admits(self, session: Session) -> tuple[Priority | None, bool]:
        """The least urgent class that may start work now, and whether first syncs may (their share
        left): one read of two rows. When they may not, reconciliations still can."""
        rows = {row.scope: row for row in session.execute(_READ_ADMITS)}
        now = self.clock.now().timestamp()
        project = _state(rows[PROJECT]) if PROJECT in rows else ScopeState()
        top = ceiling(project, now, self.limits.per_window, self.limits.window)
        first = rows.get(FIRST_SYNCS)
        per_window = self.limits.first_syncs_per_window
        first_ok = (
            first is None or admit(_state(first), now, Priority.FIRST_SYNC, per_window, self.limits.window)[1] == 0
        )
        return top, first_ok

    def spender(self, account_id: int | None, priority: Priority) -> Spender:
        return Spender(self, account_id, priority)


class Spender:
    """What a Google client calls around each request: take from the budget, report slow-downs."""

    def __init__(self, budget: Budget, account_id: int | None, priority: Priority) -> None:
        self.budget = budget
        self.account_id = account_id
        self.priority = priority

    def before_call(self, method: str) -> None:
        if not self.budget.use_prepaid(self.account_id):
            self.budget.take(self.priority, self.account_id)

    def rate_limited(self, method: str, reason: str | None, retry_after: float | None) -> None:
        per_user = reason == "userRateLimitExceeded" and self.account_id is not None
        self.budget.slowed(self.account_id if per_user else None, retry_after)

    def at(self, priority: Priority) -> Spender:
        """The same user's budget for another kind of work (a renewal inside a sync job)."""
        return Spender(self.budget, self.account_id, priority)


def day_count(session: Session, now: datetime) -> DayCount:
    """The project's counts for the quota day holding `now` (zeros once the day has turned)."""
    row = session.execute(
        select(
            QuotaBudget.day,
            QuotaBudget.calls_today,
            QuotaBudget.reconcile_today,
            QuotaBudget.first_sync_today,
            QuotaBudget.reconcile_cut,
            QuotaBudget.projected,
            QuotaBudget.planned_at,
            QuotaBudget.steady_before,
            QuotaBudget.steady_hours,
            QuotaBudget.steady_hours_before,
        ).where(QuotaBudget.scope == PROJECT)
    ).first()
    if row is None:
        return DayCount(quota_day(now), 0, 0, 0, math.inf, 0, 0.0)
    cut = math.inf if row.reconcile_cut is None else float(row.reconcile_cut)
    if row.day != quota_day(now):  # no call yet today: the row's counts are the last day's
        before = steady_calls(int(row.calls_today), int(row.reconcile_today), int(row.first_sync_today))
        hours = (row.steady_hours, row.steady_hours_before)
        return DayCount(quota_day(now), 0, 0, 0, cut, 0, float(row.planned_at), before, *hours)
    return DayCount(
        row.day,
        int(row.calls_today),
        int(row.reconcile_today),
        int(row.first_sync_today),
        cut,
        int(row.projected),
        float(row.planned_at),
        int(row.steady_before),
        row.steady_hours,
        row.steady_hours_before,
    )


def save_plan(
    session: Session,
    *,
    cut: float,
    projected: int,
    planned_at: float,
    not_after: float,
    hours: tuple[str | None, str | None] | None = None,
) -> bool:
    """Record a new plan (and the steady calls by hour, today's and the last day's) unless another
    process planned since `not_after` (then False)."""
    values: dict[str, Any] = {
        "reconcile_cut": cut if math.isfinite(cut) else None,
        "projected": projected,
        "planned_at": planned_at,
    }
    if hours is not None:
        values.update(steady_hours=hours[0], steady_hours_before=hours[1])
    result = session.execute(
        update(QuotaBudget).where(QuotaBudget.scope == PROJECT, QuotaBudget.planned_at <= not_after).values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


def ensure_project_row(session: Session) -> None:
    if session.get(QuotaBudget, PROJECT) is None:
        _create(session, [PROJECT])


# Helpers ---------------------------------------------------------------------------------------
_Q = QuotaBudget.__table__
_STATE_COLUMNS = (_Q.c.scope, _Q.c.tat, _Q.c.hold_until, _Q.c.factor, _Q.c.factor_at)
# Built once: a take runs these in every claim, and building a statement cost more CPU than running it.
_READ_ADMITS = select(*_STATE_COLUMNS).where(_Q.c.scope.in_([PROJECT, FIRST_SYNCS]))
# By the number of scopes (a take has one to three): a fixed list of parameters keeps the whole
# statement compiled once, where an expanding IN renders it again at every execution.
_LOCK = {
    n: select(*_STATE_COLUMNS, _Q.c.day)
    .where(_Q.c.scope.in_([bindparam(f"scope{i}") for i in range(n)]))
    .order_by(_Q.c.scope)
    for n in (1, 2, 3)
}
_LOCK_PG = {n: stmt.with_for_update() for n, stmt in _LOCK.items()}


def _today(column: str) -> Any:
    """A day counter as it stands before this call: zero once the quota day has turned."""
    return case((_Q.c.day == bindparam("day"), _Q.c[column]), else_=0)


# The pace state of one scope, and its day counters moved on by the call (zero for a user's row).
# On a new day `steady_before` keeps the day that ended (the right-hand sides read the row as it was).
_TAKE = (
    update(_Q)
    .where(_Q.c.scope == bindparam("s"))
    .values(
        tat=bindparam("tat"),
        hold_until=bindparam("hold_until"),
        factor=bindparam("factor"),
        factor_at=bindparam("factor_at"),
        day=bindparam("day"),
        calls_today=_today("calls_today") + bindparam("calls"),
        reconcile_today=_today("reconcile_today") + bindparam("reconcile"),
        first_sync_today=_today("first_sync_today") + bindparam("first_sync"),
        steady_before=case(
            (_Q.c.day == bindparam("day"), _Q.c.steady_before),
            else_=_Q.c.calls_today - _Q.c.reconcile_today - _Q.c.first_sync_today,
        ),
    )
)


class LockedRow(NamedTuple):
    """A scope's row as `locking_rows` returns it."""

    scope: str
    tat: float
    hold_until: float
    factor: float
    factor_at: float
    day: int


# What a `locking_rows` column holds: each row as a JSON array (None when there is none).
LockedRows = Sequence[Sequence[Any]]


def locking_rows(account_id: ColumnElement[int]) -> ColumnElement[Any]:
    """PostgreSQL: a column that locks the project's row and the account's (`FOR UPDATE`, in
    `_lock`'s order) and returns them for `take_in(..., locked=...)`.

    For the first statement of a transaction that will take a call for the account (a write reads
    its calendar with it): the take then costs no round trip of its own to read its rows.
    """
    user = literal(USER_SCOPE_PREFIX, String) + cast(account_id, String)
    rows = (
        select(*_STATE_COLUMNS, _Q.c.day)
        .where(_Q.c.scope.in_([literal(PROJECT, String), user]))
        .order_by(_Q.c.scope)
        .with_for_update()
        .correlate_except(_Q)
        .subquery("quota_rows")
    )
    return select(func.json_agg(func.json_build_array(*rows.c))).scalar_subquery()


def _held(locked: LockedRows) -> dict[str, LockedRow]:
    return {
        str(scope): LockedRow(str(scope), float(tat), float(hold), float(factor), float(factor_at), int(day))
        for scope, tat, hold, factor, factor_at, day in locked
    }


def _lock(session: Session, scopes: list[str]) -> dict[str, Any]:
    """The scopes' rows, locked in one order (project first) so two takers never deadlock."""
    stmt = (_LOCK_PG if is_postgres(session) else _LOCK)[len(scopes)]
    return {row.scope: row for row in session.execute(stmt, {f"scope{i}": s for i, s in enumerate(scopes)})}


def _create(session: Session, scopes: list[str]) -> None:
    if is_postgres(session):
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(_Q).values([{"scope": s} for s in scopes]).on_conflict_do_nothing())
    else:
        session.execute(insert(_Q).prefix_with("OR IGNORE").values([{"scope": s} for s in scopes]))


def _state(row: Any) -> ScopeState:
    return ScopeState(tat=row.tat, hold_until=row.hold_until, factor=row.factor, factor_at=row.factor_at)


def _taken(scope: str, state: ScopeState, day: int, priority: Priority | None) -> dict[str, Any]:
    """`_TAKE`'s parameters for one scope: its new pace state, and one call counted (the project only)."""
    return {
        "s": scope,
        "tat": state.tat,
        "hold_until": state.hold_until,
        "factor": state.factor,
        "factor_at": state.factor_at,
        "day": day,
        "calls": 0 if priority is None else 1,
        "reconcile": 1 if priority == Priority.RECONCILE else 0,
        "first_sync": 1 if priority == Priority.FIRST_SYNC else 0,
    }


def _write(session: Session, scope: str, state: ScopeState) -> None:
    session.execute(
        update(_Q)
        .where(_Q.c.scope == scope)
        .values(tat=state.tat, hold_until=state.hold_until, factor=state.factor, factor_at=state.factor_at)
    )
