"""What taking a call from the quota budget adds to a sync, on each engine.

The same calendar (no change, so each sync is one events.list answered by the emulator) is synced
again and again, alternating in one run:
1. the worker's path: the claim, the job, the finish; the budget's take folded into the claim's
   transaction (`Budget.prepay`), against the same claim and job with no budget at all;
2. a sync outside the worker (the CLI's path): the take is a transaction of its own, against none.
Printed: the median and p90 of each, the difference per sync and its ratio to the baseline.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.owed import request_calendar_sync
from calsync.store.quota import Budget
from calsync.sync.run import sync_calendar
from calsync.work.jobs import run_calendar_job
from calsync.work.leases import claim_calendar
from calsync.work.worker import Worker
from tests.bench._common import (
    Deployment,
    Report,
    connect_account,
    database,
    engines,
    parser,
    percentile,
    run_main,
    start_emulator,
    workdir,
)
from tests.push_support import calendar_id_of

LEASE = timedelta(seconds=60)


class _NoBudget:
    """The baseline: no budget at all (what calsync did before it counted its calls)."""

    cut = math.inf

    def spender(self, account_id: int | None, priority: Any) -> None:
        return None

    def prepay(self, *args: Any) -> float:
        return 0.0

    def forget_prepaid(self) -> None:
        pass


def main(args: Any) -> int:
    report = Report("bench_quota_take", args.json)
    rounds = 60 if args.quick else 300
    emu = start_emulator()
    try:
        for kind in engines(args.db):
            with workdir("quota-take") as work, database(kind, work, "take") as url:
                # Limits far above what the run asks: the take's statements run, no call waits for room.
                dep = Deployment(emu, url, work, quota_per_minute=10**7, quota_per_user_per_minute=10**7)
                _engine(report, dep, kind, rounds)
    finally:
        emu.stop()
    return report.finish()


def _engine(report: Report, dep: Deployment, kind: str, rounds: int) -> None:
    rt = dep.runtime()
    off = dataclasses.replace(rt)
    off.budget = cast("Budget", _NoBudget())
    email = f"take-{kind}@example.com"
    connect_account(rt, dep.emu, email)
    Worker(rt, threads=1).run_burst()
    cal = calendar_id_of(rt, email)
    timings: dict[str, list[float]] = {"job+budget": [], "job": [], "sync+budget": [], "sync": []}
    for _ in range(rounds):
        for name, runtime in (("job+budget", rt), ("job", off)):
            timings[name].append(_job(runtime, cal))
        for name, runtime in (("sync+budget", rt), ("sync", off)):
            started = time.perf_counter()
            sync_calendar(runtime, cal)
            timings[name].append(time.perf_counter() - started)
    for path, base in (("job+budget", "job"), ("sync+budget", "sync")):
        value, baseline = percentile(timings[path], 50) * 1000, percentile(timings[base], 50) * 1000
        report.figure(
            f"{kind}: {path} median",
            value,
            "ms",
            baseline=baseline,
            baseline_name=f"{base} without a budget",
        )
        report.note(
            f"{kind}: {path} adds {value - baseline:+.2f} ms per sync at the median "
            f"(p90 {percentile(timings[path], 90) * 1000:.2f} vs {percentile(timings[base], 90) * 1000:.2f} ms)"
        )
    rt.close()


def _job(rt: Runtime, cal: int) -> float:
    """One incremental sync as the worker runs it: owed, claimed (and paid for), done."""
    with transaction(rt.sessions) as session:
        request_calendar_sync(session, cal, rt.clock.now())
    started = time.perf_counter()
    with transaction(rt.sessions) as session:
        if isinstance(rt.budget, Budget):
            rt.budget.ceiling(session)  # the worker asks which classes may start
        claim = claim_calendar(session, "bench/0", rt.clock.now(), LEASE, rt.settings.renew_before)
        assert claim is not None and claim.calendar is not None
        assert rt.budget.prepay(session, claim.priority, claim.calendar.account_id) == 0.0
    run_calendar_job(rt, claim)
    rt.budget.forget_prepaid()
    return time.perf_counter() - started


if __name__ == "__main__":
    run_main(main, parser(__doc__ or ""))
