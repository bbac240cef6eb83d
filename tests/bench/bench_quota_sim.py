"""The quota over two simulated days: calsync's own budget and scheduling against today's fixed hour.

A simulated clock drives calsync's real decisions: `calsync.store.quota.admit` and `ceiling` (the
per-minute budget and its priorities), `calsync.work.quota.reconcile_in` (spread and stretched
reconciliations) and `solve_stretch` (the day's plan, every five simulated minutes). The database
is modelled in Python: each calendar owes at most one piece of work (a due time and a priority, as
its row does), claimed most urgent first; calls are instantaneous and workers unlimited, so the
budget alone decides when a call goes. The per-user budget is not modelled (two calendars per
account never reach it). Each size is run as a scale model: 5,000 calendars against 1/20 (or 1/200)
of every budget, totals multiplied back (the decisions depend only on counts against the budget).

Activity: 60 % of calendars nearly idle (a change a month), 30 % normal (2 a day), 10 % busy
(15 a day), changes three times as frequent in office hours (08:00-18:00 Pacific); 1 % of
notifications dropped. Existing channels expire uniformly over their six-day life. Day 2 at 09:00
a mass onboarding connects a fifth more calendars (two per account) within five minutes.

Printed for each policy, side by side: calls per day and per calendar, the busiest minute (any
sliding 60 s), and the staleness bound after a dropped notification (the longest gap between two
syncs of one calendar) for busy and idle calendars. "hourly" is today's policy (reconcile one hour
after each sync, no budget), scaled the same way.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calsync.config import Settings
from calsync.store.quota import ScopeState, admit
from calsync.store.states import Priority
from calsync.work.quota import PLAN_SECONDS, QUIET_STEPS, plan_of, reconcile_in_seconds, solve_stretch
from tests.bench._common import Report, parser, run_main

DAY = 86400.0
DAYS = 2
RATES = (1 / 30, 2.0, 15.0)  # changes a day: idle, normal, busy
SHARES = (0.6, 0.3, 0.1)
DROP = 0.01
NOTIFY_DELAY = 1.0
ONBOARD_AT = DAY + 9 * 3600
ONBOARD_SPREAD = 300.0
ONBOARD_SHARE = 0.2
PEAK, OFF_PEAK = 2.5, 0.3  # office hours against the rest of the day (mean ≈ 1.0)

# Timeline events
CHANGE, DUE, RENEW, LIST_DUE, ONBOARD, PLAN = range(6)
WRITE, NOTE, REN, FIRST, RECON = (int(p) for p in Priority)


@dataclass
class Stats:
    calls: list[Counter[int]] = field(default_factory=lambda: [Counter() for _ in range(DAYS)])  # by class
    per_second: list[int] = field(default_factory=lambda: [0] * int(DAYS * DAY + 1))
    dropped_wait: list[list[float]] = field(default_factory=lambda: [[], [], []])
    stretch_max: float = 0.0
    projected_at_end: list[int] = field(default_factory=lambda: [0] * DAYS)


class Sim:
    """One policy over one population."""

    def __init__(self, n: int, *, policy: str, settings: Settings, seed: int = 7) -> None:
        self.policy = policy
        self.settings = settings
        self.rng = random.Random(seed)
        self.base = settings.reconcile_every.total_seconds()
        self.plan = plan_of(settings)
        self.limits = (settings.quota_per_minute, 60.0)
        self.state = ScopeState()
        self.stats = Stats()
        self.timeline: list[tuple[float, int, int, int]] = []
        self.ready: list[tuple[int, float, int, int]] = []
        self.seq = 0
        self._renewing: set[int] = set()
        # Per calendar (lists: index = calendar id)
        self.kind: list[int] = []
        self.created: list[float] = []
        self.last_change: list[float | None] = []  # when a sync last found a change
        self.changed_at: list[float] = []  # the latest change in Google
        self.last_sync: list[float] = []
        self.max_gap: list[float] = []
        self.dropped_since: list[float | None] = []
        self.due: list[float] = []
        self.prio: list[int] = []
        self.version: list[int] = []
        self.first_done: list[bool] = []
        # Per account (calendars 2a and 2a+1): the calendar list
        self.acct_created: list[float] = []
        self.list_due: list[float] = []
        self.list_version: list[int] = []
        # Quiet-time histogram by the hour of the last change (what the plan reads from the database)
        self.quiet_hours: Counter[int] = Counter()
        self.list_hours: Counter[int] = Counter()
        for _ in range(n // 2):
            self._add_account(-30 * DAY, existing=True)
        self._push(ONBOARD_AT, ONBOARD, 0)
        if policy == "calsync":
            self._push(0.0, PLAN, 0)

    # Population ----------------------------------------------------------------------------
    def _add_account(self, at: float, *, existing: bool) -> None:
        a = len(self.acct_created)
        self.acct_created.append(at)
        self.list_version.append(0)
        self.list_due.append(math.inf)
        self.list_hours[int(at // 3600)] += 1
        for _ in range(2):
            self._add_calendar(at, existing)
        if existing:
            self._schedule_list(a, -self.rng.uniform(0, self.base))
        else:
            self._owe(2 * a, at, FIRST)
            self._owe(2 * a + 1, at, FIRST)

    def _add_calendar(self, at: float, existing: bool) -> None:
        c = len(self.kind)
        r = self.rng.random()
        kind = 0 if r < SHARES[0] else (1 if r < SHARES[0] + SHARES[1] else 2)
        self.kind.append(kind)
        self.created.append(at)
        since = self.rng.expovariate(RATES[kind] / DAY) if existing else math.inf
        last = -since if since < 30 * DAY else None
        self.last_change.append(last)
        self.changed_at.append(last if last is not None else -math.inf)
        self.quiet_hours[int((last if last is not None else at) // 3600)] += 1
        self.last_sync.append(at)
        self.max_gap.append(0.0)
        self.dropped_since.append(None)
        self.due.append(math.inf)
        self.prio.append(RECON)
        self.version.append(0)
        self.first_done.append(existing)
        start = max(at, 0.0)
        self._push(start + self._next_change_gap(kind, start), CHANGE, c)
        if existing:
            synced = -self.rng.uniform(0, self.base)
            self.last_sync[c] = synced
            self._schedule_reconcile(c, synced)
            self._push(self.rng.uniform(0, self.plan.cap), RENEW, c)

    def _next_change_gap(self, kind: int, now: float) -> float:
        """Thinning: a Poisson process three times as dense in office hours."""
        rate = RATES[kind] / DAY * PEAK
        t = now
        while True:
            t += self.rng.expovariate(rate)
            hour = (t % DAY) / 3600
            if self.rng.random() < (PEAK if 8 <= hour < 18 else OFF_PEAK) / PEAK:
                return t - now

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

    def _schedule_reconcile(self, c: int, now: float) -> None:
        if self.policy == "hourly":
            gap = self.base
        else:
            gap = reconcile_in_seconds(c, now, last_change=self.last_change[c], since=self.created[c], plan=self.plan)
        self.due[c], self.prio[c] = now + gap, RECON
        self.version[c] += 1
        self._push(now + gap, DUE, c)

    def _schedule_list(self, a: int, now: float) -> None:
        if self.policy == "hourly":
            gap = self.base
        else:
            gap = reconcile_in_seconds(1 << 40 | a, now, last_change=None, since=self.acct_created[a], plan=self.plan)
        self.list_due[a] = now + gap
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
            if not ready:
                now = min(next_t, end)
                continue
            _, _due, ident, version = ready[0]
            if (ident >= 0 and version != self.version[ident]) or (ident < 0 and version != self.list_version[~ident]):
                heapq.heappop(ready)
                continue
            prio = RECON if ident < 0 else self.prio[ident]
            cost = self._cost(ident, prio)
            wait = self._take(now, prio, cost)
            if wait > 0:  # (a step of at least a microsecond: a rounding-sized wait must not stall the clock)
                now = min(now + max(wait, 1e-6), next_t, end)
                continue
            heapq.heappop(ready)
            self._count(now, prio, cost)
            if ident < 0:
                self._schedule_list(~ident, now)
            else:
                self._synced(ident, now, prio)

    def _event(self, t: float, kind: int, ident: int) -> None:
        if kind == DUE:
            if t == self.due[ident]:
                order = self.prio[ident] if self.policy == "calsync" else RECON  # hourly: first come, first served
                heapq.heappush(self.ready, (order, t, ident, self.version[ident]))
        elif kind == LIST_DUE:
            if t == self.list_due[ident]:
                heapq.heappush(self.ready, (RECON, t, ~ident, self.list_version[ident]))
        elif kind == CHANGE:
            c = ident
            self.changed_at[c] = t
            if self.rng.random() < DROP:
                if self.dropped_since[c] is None:
                    self.dropped_since[c] = t
            elif self.first_done[c]:
                self._owe(c, t + NOTIFY_DELAY, NOTE)
            self._push(t + self._next_change_gap(self.kind[c], t), CHANGE, c)
        elif kind == RENEW:
            c = ident
            if self.first_done[c]:
                self._owe(c, t, REN)
                self._renewing.add(c)
            self._push(t + self.plan.cap, RENEW, c)
        elif kind == ONBOARD:
            count = int(len(self.acct_created) * ONBOARD_SHARE)
            for i in range(count):
                self._add_account(t + ONBOARD_SPREAD * i / count, existing=False)
        elif kind == PLAN:
            self._replan(t)
            self._push(t + PLAN_SECONDS, PLAN, 0)

    def _cost(self, ident: int, prio: int) -> int:
        if ident < 0:
            return 1
        if not self.first_done[ident]:
            return 3  # events.list, events.watch, and the seam's list (one page: most calendars are small)
        return 3 if ident in self._renewing else 1  # watch, stop, the seam's list

    def _take(self, now: float, prio: int, cost: int) -> float:
        if self.policy == "hourly":
            return 0.0
        state = self.state
        per_window, window = self.limits
        for _ in range(cost):
            state, wait = admit(state, now, Priority(prio), per_window, window)
            if wait:
                return wait
        self.state = state
        return 0.0

    def _count(self, now: float, prio: int, cost: int) -> None:
        day = min(DAYS - 1, int(now // DAY))
        self.stats.calls[day][prio] += cost
        self.stats.per_second[int(now)] += cost

    def _synced(self, c: int, now: float, prio: int) -> None:
        self._renewing.discard(c)
        gap = now - self.last_sync[c]
        if self.first_done[c] and now >= DAY / 2 and gap > self.max_gap[c]:  # after the warm start
            self.max_gap[c] = gap
        self.first_done[c] = True
        found = self.changed_at[c] > self.last_sync[c]  # this sync finds a change made since the last one
        self.last_sync[c] = now
        if found:
            old = self.last_change[c]
            self.quiet_hours[int((old if old is not None else self.created[c]) // 3600)] -= 1
            self.quiet_hours[int(now // 3600)] += 1
            self.last_change[c] = now
        if self.dropped_since[c] is not None:
            self.stats.dropped_wait[self.kind[c]].append(now - self.dropped_since[c])  # type: ignore[operator]
            self.dropped_since[c] = None
        self._schedule_reconcile(c, now)

    def _replan(self, now: float) -> None:
        day = min(DAYS - 1, int(now // DAY))
        calls = self.stats.calls[day]
        spent = sum(calls.values())
        elapsed = max(600.0, now - day * DAY)
        left = max(0.0, (day + 1) * DAY - now)
        steady = (spent - calls[RECON] - calls[FIRST]) / elapsed
        # Into the buckets calsync's own query makes (quiet_buckets: lower edges base × 2^j).
        edges = [self.base * 2**j for j in range(QUIET_STEPS)]
        buckets: Counter[float] = Counter()
        for hours in (self.quiet_hours, self.list_hours):
            for h, n in hours.items():
                if n:
                    q = now - (h + 1) * 3600
                    buckets[max((e for e in edges if e <= q), default=0.0)] += n
        quiet = sorted(buckets.items())
        stretch, total = solve_stretch(
            plan_of(self.settings),
            budget=self.settings.quota_per_day,
            spent=spent,
            steady_rate=steady,
            left=left,
            quiet=quiet,
        )
        self.plan = plan_of(self.settings, stretch)
        self.stats.stretch_max = max(self.stats.stretch_max, stretch)
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
    busy = sorted(g for g, k, f in zip(gaps, sim.kind, sim.first_done, strict=True) if k == 2 and f)
    idle = sorted(g for g, k, f in zip(gaps, sim.kind, sim.first_done, strict=True) if k == 0 and f)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0

    return {
        "calendars": round(n * scale),
        "calls_day": [round(sum(c.values()) * scale) for c in st.calls],
        "per_calendar_day": [sum(c.values()) / n for c in st.calls],
        "reconcile_day": [round(c[RECON] * scale) for c in st.calls],
        "busiest_minute": round(busiest_minute(st.per_second) * scale),
        "busy_gap_max": busy[-1] if busy else 0.0,
        "busy_gap_p99": pct(busy, 0.99),
        "idle_gap_max": idle[-1] if idle else 0.0,
        "idle_gap_p50": pct(idle, 0.5),
        "dropped_busy_max": max(st.dropped_wait[2], default=0.0),
        "dropped_idle_max": max(st.dropped_wait[0], default=0.0),
        "stretch_max": st.stretch_max,
        "projected": [round(p * scale) for p in st.projected_at_end],
    }


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def main(args: Any) -> int:
    report = Report("bench_quota_sim", args.json)
    settings = Settings()
    sample = 2_000 if args.quick else 5_000
    started = time.perf_counter()
    base_sim = Sim(sample, policy="hourly", settings=settings)
    base_sim.run()
    hourly_sample = summary(base_sim)
    print(f"(fixed hourly policy: {sample:,} calendars simulated in {time.perf_counter() - started:.0f} s)")
    for n in (100_000, 1_000_000):
        scale = n / sample
        # A scale model: 1/scale of the calendars against 1/scale of every budget. The budget's and the
        # plan's decisions depend only on counts relative to the budget, so the shape is the same; the
        # deployment's totals are the sample's times `scale`, per-calendar figures are the sample's.
        scaled = dataclasses.replace(
            settings,
            quota_per_minute=max(2, round(settings.quota_per_minute / scale)),
            quota_per_day=round(settings.quota_per_day / scale),
        )
        started = time.perf_counter()
        sim = Sim(sample, policy="calsync", settings=scaled)
        sim.run()
        ours = summary(sim, scale)
        took = time.perf_counter() - started
        hourly = summary_scaled(hourly_sample, scale)
        print(f"\n-- {n:,} calendars, two simulated days ({sample:,} simulated in {took:.0f} s, scaled x{scale:g})")
        print(f"{'':36}{'calsync':>16}{'fixed hourly':>16}")
        for label, key, fmt in (
            ("calls, day 1", ("calls_day", 0), "{:,}"),
            ("calls, day 2 (mass onboarding)", ("calls_day", 1), "{:,}"),
            ("calls per calendar, day 1", ("per_calendar_day", 0), "{:.2f}"),
            ("reconciliations, day 1", ("reconcile_day", 0), "{:,}"),
            ("busiest minute (sliding 60 s)", "busiest_minute", "{:,}"),
        ):
            a, b = _get(ours, key), _get(hourly, key)
            print(f"{label:36}{fmt.format(a):>16}{fmt.format(b):>16}")
        for label, key in (
            ("staleness bound, busy (max gap)", "busy_gap_max"),
            ("staleness bound, busy (p99 gap)", "busy_gap_p99"),
            ("staleness bound, idle (median)", "idle_gap_p50"),
            ("staleness bound, idle (max gap)", "idle_gap_max"),
            ("dropped notification, busy: worst", "dropped_busy_max"),
            ("dropped notification, idle: worst", "dropped_idle_max"),
        ):
            print(f"{label:36}{_h(ours[key]):>16}{_h(hourly[key]):>16}")
        print(f"{'largest stretch':36}{ours['stretch_max']:>16.3f}")
        print(f"{'projected at the end of day 1, 2':36}{ours['projected']!s:>16}")
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
        report.check(ours["busiest_minute"] <= minute_budget, f"{n:,}: busiest minute within {minute_budget:,}")
        if n <= 100_000:
            report.check(
                max(ours["calls_day"]) <= min(1_000_000, day_budget),
                f"{n:,}: every day within the daily budget ({day_budget:,})",
            )
            report.figure(
                f"{n:,} calendars: longest gap between syncs of a busy calendar",
                ours["busy_gap_max"] / 3600,
                "h",
                baseline=hourly["busy_gap_max"] / 3600,
                baseline_name="fixed hourly",
                target="<= 1 h",
                met=ours["busy_gap_max"] <= settings.reconcile_every.total_seconds() + 1,
            )
    return report.finish()


def summary_scaled(s: dict[str, Any], scale: float) -> dict[str, Any]:
    """The hourly policy scales linearly with the population (no budget, no shared state)."""
    out = dict(s)
    for key in ("calendars", "busiest_minute"):
        out[key] = round(s[key] * scale)
    for key in ("calls_day", "reconcile_day"):
        out[key] = [round(v * scale) for v in s[key]]
    return out


def _get(s: dict[str, Any], key: Any) -> Any:
    if isinstance(key, tuple):
        return s[key[0]][key[1]]
    return s[key]


if __name__ == "__main__":
    run_main(main, parser(__doc__ or "", db_default=None))
