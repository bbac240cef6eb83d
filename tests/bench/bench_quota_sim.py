"""The quota over two simulated days: calsync's own budget and scheduling against today's fixed hour.

A simulated clock drives calsync's real decisions, called as the worker calls them:
`calsync.store.quota.admit` for the project's and each user's per-minute budget and its priorities,
`calsync.store.activity.after_change` (the change rate a sync's commit stores) and `from_first_sync`
(the rate a first listing gives, from its events updated in the week before),
`calsync.work.quota.reconcile_in_seconds` (spread and stretched reconciliations) and
`solve_cut` (the day's plan, every five simulated minutes, from the buckets calsync's plan query
counts, and `steady_rest` from the steady calls by hour the plan keeps). What is modelled in Python
is the database's queue: each calendar owes at most one piece of work (a due time and a priority, as
its row does), claimed most urgent first (the claim's ORDER BY due_priority, due_at); a job whose
user is out of budget is put off by the wait, as `QuotaWait` does; calls are instantaneous and
workers unlimited, so the budget alone decides when a call goes.

Population: accounts of 1 to 200 calendars (4.6 on average; a few large resource accounts), so
the per-user budget matters. Activity: 60 % of calendars nearly idle (a change a month), 30 %
normal (2 a day), 10 % busy (15 a day), each rate jittered ×0.5-2, changes three times as frequent
in office hours (08:00-18:00 Pacific); 1 % of notifications dropped. Existing calendars carry the
change rate of their last nine days (the day before the run gives the plan its last day's count of
notification syncs and renewals); their channels expire uniformly over a channel's life. Day 2
at 09:00 a mass onboarding connects a fifth more calendars (new accounts) within five minutes.

100,000 calendars run at full size. 1,000,000 run as a scale model by default (`--unscaled` runs
them in full, ten times as long): 100,000 calendars against a tenth of the project's budgets
(per minute and per day), totals multiplied back. The per-user budget is not scaled: accounts keep
their size, and a user's calls do not depend on the deployment's. The project's decisions depend
only on counts against its budget, so the shape is the same. "fixed hourly" (reconcile one hour
after each sync, no budget) has no shared state, so its 1,000,000 figures are the 100,000 run's
times ten.

Printed for each policy, side by side, in the same run: calls per day and per calendar, the busiest
minute (any sliding 60 s) of the project and of any one user, and the staleness bound after a
dropped notification (the longest gap between two syncs of one calendar, and how long dropped
notifications waited) for busy and idle calendars.
Targets: 100,000 calendars within 1,000,000 calls a day with busy calendars reconciled at least
hourly; the busiest minute under the per-minute budget through the onboarding.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calsync.config import Settings
from calsync.store.activity import PRIOR, RECENT, TAU, after_change, from_first_sync, gap_bound
from calsync.store.quota import Limits, ScopeState, admit
from calsync.store.states import Priority
from calsync.work.quota import (
    PLAN_SECONDS,
    hours_at,
    ladder,
    mark_hour,
    plan_of,
    reconcile_in_seconds,
    roll_hours,
    solve_cut,
    steady_rest,
)
from tests.bench._common import Report, parser, run_main

DAY = 86400.0
DAYS = 2
RATES = (1 / 30, 2.0, 15.0)  # changes a day: idle, normal, busy
SHARES = (0.6, 0.3, 0.1)
ACCOUNT_SIZES = ((1, 0.35), (2, 0.3), (3, 0.15), (5, 0.1), (10, 0.07), (40, 0.025), (200, 0.005))
DROP = 0.01
NOTIFY_DELAY = 1.0
ONBOARD_AT = DAY + 9 * 3600
ONBOARD_SPREAD = 300.0
ONBOARD_SHARE = 0.2
PEAK, OFF_PEAK = 2.5, 0.3  # office hours against the rest of the day (mean ≈ 1.0)
HISTORY = 3 * TAU  # the warm start replays this much of each calendar's past
WARM_UP = DAY / 2  # gaps are measured from here on, past the artificial start
BIN = 20.0  # activity histogram: bins of 1/20 (5 % of a gap), rounded towards more calls
GOOGLE_USER_LIMIT = 600

# Timeline events
CHANGE, DUE, RENEW, LIST_DUE, ONBOARD, PLAN, LIST_RENEW = range(7)
WRITE, NOTE, REN, FIRST, RECON = (int(p) for p in Priority)


@dataclass
class Stats:
    calls: list[Counter[int]] = field(default_factory=lambda: [Counter() for _ in range(DAYS)])  # by class
    per_second: list[int] = field(default_factory=lambda: [0] * int(DAYS * DAY + 1))
    dropped_wait: list[list[float]] = field(default_factory=lambda: [[], [], []])
    user_minute: int = 0
    deferred: int = 0
    cut_min: float = math.inf
    projected_at_end: list[int] = field(default_factory=lambda: [0] * DAYS)


class Sim:
    """One policy over one population."""

    def __init__(self, n: int, *, policy: str, settings: Settings, seed: int = 7) -> None:
        self.policy = policy
        self.calsync = policy == "calsync"
        self.settings = settings
        self.rng = random.Random(seed)
        self.history_rng = random.Random(seed + 1)
        self.base = settings.reconcile_every.total_seconds()
        self.plan = plan_of(settings)
        self.window = settings.quota_window.total_seconds()
        self.state = ScopeState()
        self.first_state = ScopeState()  # the first syncs' own share (`Budget.admits`)
        self.first_per_window = Limits(settings.quota_per_minute, 0, self.window).first_syncs_per_window
        self.users: dict[int, ScopeState] = {}
        self.user_calls: dict[int, deque[tuple[float, int]]] = {}
        self.user_sum: dict[int, int] = {}
        self.stats = Stats()
        self.timeline: list[tuple[float, int, int, int]] = []
        self.ready: list[tuple[int, float, int, int]] = []  # owed sync, by class then due time
        self.ready_recon: list[tuple[int, float, int, int]] = []  # reconciliations, by due time
        self.seq = 0
        self._renewing: set[int] = set()
        self.steady_before = 0.0  # the day before the run's: the warm start counts it
        self.hours: tuple[str | None, str | None] = (None, None)  # steady calls by hour, as the plan keeps them
        # Per calendar (lists: index = calendar id)
        self.acct: list[int] = []
        self.kind: list[int] = []
        self.rate: list[float] = []  # changes per second at the office-hours peak
        self.created: list[float] = []
        self.last_change: list[float | None] = []  # when a sync last found a change
        self.activity: list[float | None] = []
        self.changed_at: list[float] = []  # the latest change in Google
        self.last_sync: list[float] = []
        self.max_gap: list[float] = []
        self.dropped_since: list[float | None] = []
        self.due: list[float] = []
        self.prio: list[int] = []
        self.version: list[int] = []
        self.first_done: list[bool] = []
        self.first_listing: list[tuple[int, float | None]] = []  # a new calendar's recent updates, newest
        # Per account: the calendar list
        self.acct_created: list[float] = []
        self.list_due: list[float] = []
        self.list_prio: list[int] = []
        self.list_version: list[int] = []
        self._list_renewing: set[int] = set()
        # What the plan's query counts: measured calendars by activity bin, the others (and the
        # calendar lists) by the hour they have been quiet since.
        self.bins: Counter[int] = Counter()
        self.quiet_hours: Counter[int] = Counter()  # by the hour of the last change
        self.new_hours: Counter[int] = Counter()  # never changed: by the hour connected
        self.list_hours: Counter[int] = Counter()
        while len(self.kind) < n:
            self._add_account(-30 * DAY, self._size(), existing=True)
        self.steady_before += 3 * (len(self.kind) + len(self.acct_created)) * DAY / self.plan.cap  # renewals
        self._push(ONBOARD_AT, ONBOARD, 0)
        if self.calsync:
            self._push(0.0, PLAN, 0)

    # Population ----------------------------------------------------------------------------
    def _size(self) -> int:
        sizes, weights = zip(*ACCOUNT_SIZES, strict=True)
        return int(self.rng.choices(sizes, weights)[0])

    def _add_account(self, at: float, size: int, *, existing: bool) -> None:
        a = len(self.acct_created)
        self.acct_created.append(at)
        self.list_version.append(0)
        self.list_due.append(math.inf)
        self.list_prio.append(RECON)
        self.list_hours[int(at // 3600)] += 1
        for _ in range(size):
            self._add_calendar(a, at, existing)
        self._push(max(at, 0.0) + (self.rng.uniform(0, self.plan.cap) if existing else self.plan.cap), LIST_RENEW, a)
        if existing:
            self._schedule_list(a, -self.rng.uniform(0, self.base))
        else:  # the calendar list, and each calendar's first sync (the list finds them)
            self._owe_list(a, at, FIRST)
            for c in range(len(self.kind) - size, len(self.kind)):
                self._owe(c, at, FIRST)

    def _add_calendar(self, a: int, at: float, existing: bool) -> None:
        c = len(self.kind)
        r = self.rng.random()
        kind = 0 if r < SHARES[0] else (1 if r < SHARES[0] + SHARES[1] else 2)
        self.acct.append(a)
        self.kind.append(kind)
        self.rate.append(RATES[kind] * 2 ** self.rng.uniform(-1, 1) / DAY * PEAK)
        self.created.append(at)
        self.last_change.append(None)
        self.activity.append(None)
        self.changed_at.append(-math.inf)
        self.last_sync.append(at)
        self.max_gap.append(0.0)
        self.dropped_since.append(None)
        self.due.append(math.inf)
        self.prio.append(RECON)
        self.version.append(0)
        self.first_done.append(existing)
        self.first_listing.append((0, None))
        if existing:
            self._warm_start(c)
        else:
            self.first_listing[c] = self._past_week(c, at)
        self._measure(c, add=True)
        start = max(at, 0.0)
        self._push(start + self._next_change_gap(c, start), CHANGE, c)
        if existing:
            synced = -self.rng.uniform(0, self.base)
            self.last_sync[c] = synced
            self._schedule_reconcile(c, synced)
            self._push(self.rng.uniform(0, self.plan.cap), RENEW, c)

    def _warm_start(self, c: int) -> None:
        """The calendar's last changes, as syncs found them: its stored activity at the start."""
        rng, t, last, activity = self.history_rng, -HISTORY, None, None
        while True:
            t += self._next_change_gap(c, t, rng)
            if t >= 0:
                break
            if t >= -DAY:  # a notification's sync the day before
                self.steady_before += 1 - DROP
            if self.calsync:
                activity = after_change(activity, last_change=last, created=self.created[c], now=t)
            last = t
        if last is None and rng.random() < 1 - math.exp(-RATES[self.kind[c]] * (30 * DAY - HISTORY) / DAY):
            last = -rng.uniform(HISTORY, 30 * DAY)  # one older change: its time, not yet a rate
        self.last_change[c] = last
        self.changed_at[c] = last if last is not None else -math.inf
        self.activity[c] = activity

    def _past_week(self, c: int, at: float) -> tuple[int, float | None]:
        """What a new calendar's first listing shows: its changes in the week before `at`, the newest.

        Each change is taken to touch its own event (the listing shows one `updated` per event).
        """
        rng, t, count, last = self.history_rng, at - RECENT, 0, None
        while True:
            t += self._next_change_gap(c, t, rng)
            if t >= at:
                return count, last
            count, last = count + 1, t

    def _next_change_gap(self, c: int, now: float, rng: random.Random | None = None) -> float:
        """Thinning: a Poisson process three times as dense in office hours."""
        rng = rng or self.rng
        rate = self.rate[c]
        t = now
        while True:
            t += rng.expovariate(rate)
            hour = (t % DAY) / 3600
            if rng.random() < (PEAK if 8 <= hour < 18 else OFF_PEAK) / PEAK:
                return t - now

    def _measure(self, c: int, *, add: bool) -> None:
        """Count the calendar in (or out of) what the plan's query reads."""
        step = 1 if add else -1
        activity = self.activity[c]
        if activity is not None:
            self.bins[math.ceil(activity * BIN)] += step
        elif self.last_change[c] is not None:
            self.quiet_hours[int(self.last_change[c] // 3600)] += step  # type: ignore[operator]
        else:
            self.new_hours[int(self.created[c] // 3600)] += step

    # Queue ---------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, ident: int) -> None:
        self.seq += 1
        heapq.heappush(self.timeline, (t, self.seq, kind, ident))

    def _owe(self, c: int, t: float, prio: int) -> None:
        """The calendar owes a sync: the row's due time and priority (as OWE_SYNC keeps them)."""
        due, best = min(self.due[c], t), min(self.prio[c], prio)
        if due == self.due[c] and best == self.prio[c]:
            return
        self.due[c], self.prio[c] = due, best
        self.version[c] += 1
        self._push(due, DUE, c)

    def _owe_list(self, a: int, t: float, prio: int) -> None:
        due, best = min(self.list_due[a], t), min(self.list_prio[a], prio)
        if due == self.list_due[a] and best == self.list_prio[a]:
            return
        self.list_due[a], self.list_prio[a] = due, best
        self.list_version[a] += 1
        self._push(due, LIST_DUE, a)

    def _schedule_reconcile(self, c: int, now: float, *, first: bool = False) -> None:
        if self.calsync:
            gap = reconcile_in_seconds(
                c,
                now,
                last_change=None if first else self.last_change[c],  # as the first sync passes it on
                since=self.created[c],
                plan=self.plan,
                activity=self.activity[c],
            )
        else:
            gap = self.base
        self.due[c], self.prio[c] = now + gap, RECON
        self.version[c] += 1
        self._push(now + gap, DUE, c)

    def _schedule_list(self, a: int, now: float) -> None:
        if self.calsync:
            gap = reconcile_in_seconds(1 << 40 | a, now, last_change=None, since=self.acct_created[a], plan=self.plan)
        else:
            gap = self.base
        self.list_due[a], self.list_prio[a] = now + gap, RECON
        self.list_version[a] += 1
        self._push(now + gap, LIST_DUE, a)

    # The run -------------------------------------------------------------------------------
    def run(self) -> Stats:
        end = DAYS * DAY
        now = 0.0
        tl, ready = self.timeline, self.ready
        while True:
            while tl and tl[0][0] <= now:
                t, _, kind, ident = heapq.heappop(tl)
                self._event(t, kind, ident)
            if now >= end:
                return self.stats
            next_t = tl[0][0] if tl else end
            heap, head = ready, self._head(ready)
            if head is not None and head[0] == FIRST and head[2] >= 0:
                first_wait = self._first_wait(now, self._cost(head[2]))
                if first_wait > 0:  # the first syncs' share is spent: the claim takes a reconciliation
                    heap, head = self.ready_recon, self._head(self.ready_recon)
                    if head is None:
                        now = min(now + max(first_wait, 1e-6), next_t, end)
                        continue
            elif head is None:
                heap, head = self.ready_recon, self._head(self.ready_recon)
            if head is None:
                now = min(next_t, end)
                continue
            _, _due, ident, _version = head
            a = self.acct[ident] if ident >= 0 else ~ident
            prio = self.list_prio[a] if ident < 0 else self.prio[ident]
            cost = (3 if a in self._list_renewing else 1) if ident < 0 else self._cost(ident)
            wait, user_wait = self._take(now, a, prio, cost, first=ident >= 0 and prio == FIRST)
            if wait > 0:  # (a step of at least a microsecond: a rounding-sized wait must not stall the clock)
                now = min(now + max(wait, 1e-6), next_t, end)
                continue
            heapq.heappop(heap)
            if user_wait > 0:  # QuotaWait: the job is put off, the next one goes
                user_wait = max(user_wait, 1e-3)  # (a rounding-sized wait must not come straight back)
                self.stats.deferred += 1
                if ident < 0:
                    self.list_due[a] = now + user_wait
                    self.list_version[a] += 1
                    self._push(now + user_wait, LIST_DUE, a)
                else:
                    self.due[ident] = now + user_wait
                    self.version[ident] += 1
                    self._push(now + user_wait, DUE, ident)
                continue
            self._charge(a, now, cost, prio)
            if ident < 0:
                self._list_renewing.discard(a)
                self._schedule_list(a, now)
            else:
                self._synced(ident, now)

    def _head(self, heap: list[tuple[int, float, int, int]]) -> tuple[int, float, int, int] | None:
        """The heap's first job still owed as queued (stale entries dropped)."""
        while heap:
            _, _due, ident, version = heap[0]
            if (ident >= 0 and version != self.version[ident]) or (ident < 0 and version != self.list_version[~ident]):
                heapq.heappop(heap)
                continue
            return heap[0]
        return None

    def _first_wait(self, now: float, cost: int) -> float:
        """Seconds until the first syncs' share has room for a job of `cost` calls (`Budget.admits`)."""
        state = self.first_state
        for _ in range(cost):
            state, wait = admit(state, now, Priority.FIRST_SYNC, self.first_per_window, self.window)
            if wait:
                return wait
        return 0.0

    def _event(self, t: float, kind: int, ident: int) -> None:
        if kind == DUE:
            if t == self.due[ident]:
                order = self.prio[ident] if self.calsync else RECON  # hourly: first come, first served
                heapq.heappush(
                    self.ready if order < RECON else self.ready_recon, (order, t, ident, self.version[ident])
                )
        elif kind == LIST_DUE:
            if t == self.list_due[ident]:
                order = self.list_prio[ident] if self.calsync else RECON
                entry = (order, t, ~ident, self.list_version[ident])
                heapq.heappush(self.ready if order < RECON else self.ready_recon, entry)
        elif kind == CHANGE:
            c = ident
            self.changed_at[c] = t
            if self.rng.random() < DROP:
                if self.dropped_since[c] is None:
                    self.dropped_since[c] = t
            elif self.first_done[c]:
                self._owe(c, t + NOTIFY_DELAY, NOTE)
            self._push(t + self._next_change_gap(c, t), CHANGE, c)
        elif kind == RENEW:
            c = ident
            if self.first_done[c]:
                self._owe(c, t, REN)
                self._renewing.add(c)
            self._push(t + self.plan.cap, RENEW, c)
        elif kind == LIST_RENEW:  # watch, stop, and the refresh across the seam
            self._owe_list(ident, t, REN)
            self._list_renewing.add(ident)
            self._push(t + self.plan.cap, LIST_RENEW, ident)
        elif kind == ONBOARD:
            count = int(len(self.kind) * ONBOARD_SHARE)
            first = len(self.kind)
            while len(self.kind) - first < count:
                self._add_account(t + ONBOARD_SPREAD * (len(self.kind) - first) / count, self._size(), existing=False)
        elif kind == PLAN:
            self._replan(t)
            self._push(t + PLAN_SECONDS, PLAN, 0)

    def _cost(self, c: int) -> int:
        if not self.first_done[c]:
            return 3  # events.list, events.watch, and the seam's list (one page: most calendars are small)
        return 3 if c in self._renewing else 1  # watch, stop, the seam's list

    def _take(self, now: float, a: int, prio: int, cost: int, *, first: bool = False) -> tuple[float, float]:
        """(the project's wait, the user's wait): calsync's budget, both scopes, as `Budget.take_in`."""
        if not self.calsync:
            return 0.0, 0.0
        per_window, per_user, window = (
            self.settings.quota_per_minute,
            self.settings.quota_per_user_per_minute,
            self.window,
        )
        state, user, first_state = self.state, self.users.get(a, ScopeState()), self.first_state
        for _ in range(cost):
            state, wait = admit(state, now, Priority(prio), per_window, window)
            if wait:
                return wait, 0.0
            if first:
                first_state, wait = admit(first_state, now, Priority(prio), self.first_per_window, window)
                if wait:
                    return wait, 0.0
            user, wait = admit(user, now, Priority(prio), per_user, window)
            if wait:
                return 0.0, wait
        self.state, self.users[a], self.first_state = state, user, first_state
        return 0.0, 0.0

    def _charge(self, a: int, now: float, cost: int, prio: int) -> None:
        day = min(DAYS - 1, max(0, int(now // DAY)))
        self.stats.calls[day][prio] += cost
        self.stats.per_second[max(0, int(now))] += cost
        calls = self.user_calls.setdefault(a, deque())
        total = self.user_sum.get(a, 0) + cost
        calls.append((now, cost))
        while calls[0][0] <= now - 60.0:
            total -= calls.popleft()[1]
        self.user_sum[a] = total
        self.stats.user_minute = max(self.stats.user_minute, total)

    def _synced(self, c: int, now: float) -> None:
        self._renewing.discard(c)
        gap = now - self.last_sync[c]
        if self.first_done[c] and now >= WARM_UP and gap > self.max_gap[c]:
            self.max_gap[c] = gap
        found = self.changed_at[c] > self.last_sync[c]  # this sync finds a change made since the last one
        if found and self.first_done[c]:
            self._measure(c, add=False)
            self.activity[c] = after_change(
                self.activity[c], last_change=self.last_change[c], created=self.created[c], now=now
            )
            self.last_change[c] = now
            self._measure(c, add=True)
        first = not self.first_done[c]
        if first and self.calsync:  # the first listing's `updated` times give the calendar its rate
            recent, newest = self.first_listing[c]
            self._measure(c, add=False)
            self.activity[c] = from_first_sync(recent, now=now)
            self.last_change[c] = newest
            self._measure(c, add=True)
        self.first_done[c] = True
        self.last_sync[c] = now
        if self.dropped_since[c] is not None:
            self.stats.dropped_wait[self.kind[c]].append(now - self.dropped_since[c])  # type: ignore[operator]
            self.dropped_since[c] = None
        self._schedule_reconcile(c, now, first=first)

    def _replan(self, now: float) -> None:
        """calsync's `replan`, with the buckets its query counts (`quiet_buckets`)."""
        day = min(DAYS - 1, int(now // DAY))
        calls = self.stats.calls[day]
        spent = sum(calls.values())
        elapsed = max(600.0, now - day * DAY)
        left = max(0.0, (day + 1) * DAY - now)
        so_far = spent - calls[RECON] - calls[FIRST]
        before = (
            self.steady_before
            if day == 0
            else sum(self.stats.calls[day - 1].values())
            - self.stats.calls[day - 1][RECON]
            - self.stats.calls[day - 1][FIRST]
        )
        today, before_hours = roll_hours(*self.hours, today=day, yesterday=day - 1)
        today = mark_hour(today, day, now - day * DAY, int(so_far))
        self.hours = (today, before_hours)
        by_now = hours_at(before_hours, day - 1, now - day * DAY)
        rest = steady_rest(so_far=so_far, before=before, elapsed=elapsed, left=left, before_by_now=by_now)
        steady = rest / left if left > 0 else 0.0
        edges = ladder(plan_of(self.settings))
        buckets: Counter[float] = Counter()
        bounds = [gap_bound(e, now) * BIN for e in edges]
        for b, n in self.bins.items():
            if n:
                buckets[max((e for e, bound in zip(edges, bounds, strict=True) if b <= bound), default=0.0)] += n
        for hours, floor in ((self.quiet_hours, 0.0), (self.new_hours, PRIOR), (self.list_hours, PRIOR)):
            for h, n in hours.items():
                if n:
                    q = max(floor, now - (h + 1) * 3600)  # as `change_gap`: never changed, at least a day
                    buckets[max((e for e in edges if e <= q), default=0.0)] += n
        cut, total = solve_cut(
            plan_of(self.settings),
            budget=self.settings.quota_per_day,
            spent=spent,
            steady_rate=steady,
            left=left,
            quiet=sorted(buckets.items()),
        )
        self.plan = plan_of(self.settings, cut)
        self.stats.cut_min = min(self.stats.cut_min, cut)
        self.stats.projected_at_end[day] = round(total)


def busiest_minute(per_second: list[int]) -> int:
    best = window = 0
    for i, n in enumerate(per_second):
        window += n
        if i >= 60:
            window -= per_second[i - 60]
        best = max(best, window)
    return best


def summary(sim: Sim, scale: float = 1.0) -> dict[str, Any]:
    st = sim.stats
    n = len(sim.kind)
    end = DAYS * DAY
    # The longest gap between two syncs, the one still open at the end included.
    gaps = [max(g, end - last) for g, last in zip(sim.max_gap, sim.last_sync, strict=True)]
    old = [t < 0 for t in sim.created]  # connected before the run (the onboarding's are new)
    rows = list(zip(gaps, sim.kind, sim.first_done, old, strict=True))
    busy = sorted(g for g, k, f, o in rows if k == 2 and f and o)
    new_busy = sorted(g for g, k, f, o in rows if k == 2 and f and not o)
    idle = sorted(g for g, k, f, o in rows if k == 0 and f and o)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0

    hourly = sim.base + 60.0  # a reconciliation put off by the budget for up to a minute still counts
    return {
        "calendars": round(n * scale),
        "calls_day": [round(sum(c.values()) * scale) for c in st.calls],
        "per_calendar_day": [sum(c.values()) / n for c in st.calls],
        "reconcile_day": [round(c[RECON] * scale) for c in st.calls],
        "busiest_minute": round(busiest_minute(st.per_second) * scale),
        "user_minute": st.user_minute,
        "busy_gap_max": busy[-1] if busy else 0.0,
        "busy_gap_p99": pct(busy, 0.99),
        "busy_hourly": sum(1 for g in busy if g <= hourly) / max(1, len(busy)),
        "new_busy_hourly": sum(1 for g in new_busy if g <= hourly) / max(1, len(new_busy)),
        "idle_gap_p50": pct(idle, 0.5),
        "idle_gap_max": idle[-1] if idle else 0.0,
        "dropped_busy_max": max(st.dropped_wait[2], default=0.0),
        "dropped_idle_max": max(st.dropped_wait[0], default=0.0),
        "cut_min": st.cut_min,
        "deferred": round(st.deferred * scale),
        "projected": [round(p * scale) for p in st.projected_at_end],
    }


def summary_scaled(s: dict[str, Any], scale: float) -> dict[str, Any]:
    """The hourly policy scales linearly with the population (no budget, no shared state)."""
    out = dict(s)
    for key in ("calendars", "busiest_minute"):
        out[key] = round(s[key] * scale)
    for key in ("calls_day", "reconcile_day"):
        out[key] = [round(v * scale) for v in s[key]]
    return out


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def _get(s: dict[str, Any], key: Any) -> Any:
    if isinstance(key, tuple):
        return s[key[0]][key[1]]
    return s[key]


def _table(ours: dict[str, Any], hourly: dict[str, Any], settings: Settings) -> None:
    print(f"{'':40}{'calsync':>16}{'fixed hourly':>16}")
    for label, key, fmt in (
        ("calls, day 1", ("calls_day", 0), "{:,}"),
        ("calls, day 2 (mass onboarding)", ("calls_day", 1), "{:,}"),
        ("calls per calendar, day 1", ("per_calendar_day", 0), "{:.2f}"),
        ("calls per calendar, day 2", ("per_calendar_day", 1), "{:.2f}"),
        ("reconciliations, day 1", ("reconcile_day", 0), "{:,}"),
        ("busiest minute, project (sliding 60 s)", "busiest_minute", "{:,}"),
        ("busiest minute, one user", "user_minute", "{:,}"),
        ("busy calendars reconciled hourly", "busy_hourly", "{:.1%}"),
        ("  the same, connected in the onboarding", "new_busy_hourly", "{:.1%}"),
    ):
        print(f"{label:40}{fmt.format(_get(ours, key)):>16}{fmt.format(_get(hourly, key)):>16}")
    for label, key in (
        ("longest gap between syncs, busy: max", "busy_gap_max"),
        ("longest gap between syncs, busy: p99", "busy_gap_p99"),
        ("longest gap, idle: median", "idle_gap_p50"),
        ("longest gap, idle: max", "idle_gap_max"),
        ("dropped notification waited, busy: max", "dropped_busy_max"),
        ("dropped notification waited, idle: max", "dropped_idle_max"),
    ):
        print(f"{label:40}{_h(ours[key]):>16}{_h(hourly[key]):>16}")
    print(f"{'lowest cut (gap between changes)':40}{_h(ours['cut_min']):>16}")
    print(f"{'jobs put off by a user budget':40}{ours['deferred']:>16,}")
    print(f"{'projected at the end of day 1, 2':40}{ours['projected']!s:>16}")
    print(
        f"(budgets: {settings.quota_per_minute:,}/min, {settings.quota_per_user_per_minute}/min per user, "
        f"{settings.quota_per_day:,}/day)"
    )


def main(args: Any) -> int:
    report = Report("bench_quota_sim", args.json)
    settings = Settings()
    sample = 10_000 if args.quick else 100_000
    started = time.perf_counter()
    base_sim = Sim(sample, policy="hourly", settings=settings)
    base_sim.run()
    hourly_sample = summary(base_sim)
    print(f"(fixed hourly policy: {sample:,} calendars simulated in {time.perf_counter() - started:.0f} s)", flush=True)
    for n in (100_000, 1_000_000):
        size = n if args.unscaled else min(n, sample)
        scale = n / size
        # A scale model: 1/scale of the calendars against 1/scale of the project's budgets (not the
        # user's: accounts keep their size). Totals are the sample's times `scale`.
        scaled = dataclasses.replace(
            settings,
            quota_per_minute=max(2, round(settings.quota_per_minute / scale)),
            quota_per_day=round(settings.quota_per_day / scale),
        )
        started = time.perf_counter()
        sim = Sim(size, policy="calsync", settings=scaled)
        sim.run()
        ours = summary(sim, scale)
        took = time.perf_counter() - started
        hourly = summary_scaled(hourly_sample, n / sample)
        how = f"{size:,} simulated in {took:.0f} s" + (f", scaled x{scale:g}" if scale != 1 else ", full size")
        print(f"\n-- {n:,} calendars, two simulated days ({how})", flush=True)
        _table(ours, hourly, scaled)
        day_budget, minute_budget = settings.quota_per_day, settings.quota_per_minute
        report.figure(
            f"{n:,} calendars: calls on the busiest day",
            max(ours["calls_day"]),
            "calls",
            baseline=max(hourly["calls_day"]),
            baseline_name="fixed hourly",
            target="<= 1,000,000" if n <= 100_000 else None,
            met=max(ours["calls_day"]) <= 1_000_000,
        )
        report.figure(
            f"{n:,} calendars: busiest minute",
            ours["busiest_minute"],
            "calls",
            baseline=hourly["busiest_minute"],
            baseline_name="fixed hourly",
            target=f"<= {minute_budget:,}",
            met=ours["busiest_minute"] <= minute_budget,
        )
        report.figure(
            f"{n:,} calendars: busiest minute of one user",
            ours["user_minute"],
            "calls",
            baseline=hourly["user_minute"],
            baseline_name="fixed hourly",
            target=f"<= {GOOGLE_USER_LIMIT} (Google)",
            met=ours["user_minute"] <= GOOGLE_USER_LIMIT,
        )
        report.check(ours["busiest_minute"] <= minute_budget, f"{n:,}: busiest minute within {minute_budget:,}")
        report.check(ours["user_minute"] <= settings.quota_per_user_per_minute, f"{n:,}: every user within its budget")
        if n <= 100_000:
            report.check(
                max(ours["calls_day"]) <= min(1_000_000, day_budget),
                f"{n:,}: every day within the daily budget ({day_budget:,})",
            )
            report.figure(
                f"{n:,} calendars: busy calendars reconciled at least hourly",
                100 * ours["busy_hourly"],
                "%",
                baseline=100 * hourly["busy_hourly"],
                baseline_name="fixed hourly",
                target=">= 99 %",
                met=ours["busy_hourly"] >= 0.99,
            )
            report.check(ours["busy_hourly"] >= 0.99, f"{n:,}: busy calendars reconciled at least hourly")
    return report.finish()


def _parser() -> Any:
    p = parser(__doc__ or "", db_default=None)
    p.add_argument("--unscaled", action="store_true", help="run 1,000,000 calendars in full (about ten times as long)")
    return p


if __name__ == "__main__":
    run_main(main, _parser())
