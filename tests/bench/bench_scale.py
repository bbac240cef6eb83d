"""Scale: the scheduler's cost with 10,000 calendars, worker RSS, and syncs/s with 1, 2, 4 worker processes.

1. Rows inserted directly: N calendars, each with a live channel, of which a fixed number (100) is due
   for renewal. One scheduler pass (`Worker.tick()`: heartbeat, due renewals, lapsed channels, log
   trim) and one claim are timed at 1,000 and 10,000 calendars: the cost must follow the due rows,
   not the table (O(due)). Target: tick < 50 ms at 10,000. Then a worker's pass that finds nothing
   (what a thread woken for work another thread took pays).
2. A `calsync worker` process idling over the 10,000 calendars: its RSS.
3. PostgreSQL, calendars that exist in the emulator (one edit each), all made due at once; 1, 2 and 4
   `calsync worker` processes drain them: syncs/s (baseline: 1 process).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import func, insert, select, text, update

from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Channel, WorkerHeartbeat
from tests.bench._common import (
    Deployment,
    Report,
    all_changes,
    all_synced,
    check_mirrors,
    connect_account,
    database,
    engines,
    event_body,
    parser,
    proc_status_kb,
    run_main,
    start_emulator,
    wait_until,
    workdir,
)

LEASE = timedelta(seconds=60)
DUE = 100


def main(args: Any) -> int:
    report = Report("bench_scale", args.json)
    big = 10_000
    emu = start_emulator()
    try:
        with workdir("scale") as work:
            for kind in engines(args.db):
                print(f"-- {kind}: scheduler pass", flush=True)
                ticks = {}
                for n in (1_000, big):
                    with database(kind, work, f"tick{n}") as url:
                        dep = Deployment(emu, url, work)
                        ticks[n] = _tick_cost(dep, n)
                        if n == big and kind == "postgresql":
                            _worker_rss(report, dep, n)
                small_t, big_t = ticks[1_000], ticks[big]
                report.figure(
                    f"[{kind}] scheduler pass, {big:,} calendars ({DUE} due)",
                    big_t["tick"],
                    "ms",
                    baseline=small_t["tick"],
                    baseline_name="1,000 calendars, same due",
                    target="< 50 ms",
                    met=big_t["tick"] < 50,
                )
                report.figure(
                    f"[{kind}] claim of the next due calendar, {big:,} calendars",
                    big_t["claim"],
                    "ms",
                    baseline=small_t["claim"],
                    baseline_name="1,000 calendars",
                )
                report.figure(
                    f"[{kind}] a worker's pass that finds nothing to take, {big:,} calendars",
                    big_t["idle"],
                    "ms",
                    baseline=big_t["claim"],
                    baseline_name="the claim of a due calendar",
                )
                report.check(
                    big_t["marked"] == DUE and small_t["marked"] == DUE,
                    f"[{kind}] the pass made exactly the {DUE} calendars near expiry due "
                    f"({small_t['marked']}, {big_t['marked']})",
                )
            if "postgresql" in engines(args.db):
                _throughput(report, emu, work, calendars=60 if args.quick else 200)
    finally:
        emu.stop()
    return report.finish()


def _insert_calendars(dep: Deployment, n: int, due: int) -> None:
    """n calendars with active channels; `due` of them expire within the renewal window."""
    rt = dep.runtime()
    now = rt.clock.now()
    try:
        with transaction(rt.sessions) as session:
            account_id = session.execute(
                insert(Account)
                .values(
                    email="scale@example.com",
                    credentials=rt.cipher.encrypt_str("{}"),
                    scopes=[],
                    status="active",
                    list_requested=0,
                    list_done=0,
                    list_due_at=now + timedelta(hours=1),
                )
                .returning(Account.id)
            ).scalar_one()
            session.execute(
                insert(Calendar),
                [
                    {
                        "account_id": account_id,
                        "google_id": f"c{i}@group.calendar.google.com",
                        "baseline_done": True,
                        "sync_requested": 1,
                        "sync_done": 1,
                        "sync_state": "synced",
                        "sync_token": "t",
                        "due_at": now + timedelta(minutes=30 + i % 60),
                        "next_reconcile_at": now + timedelta(hours=1),
                        "created_at": now,
                    }
                    for i in range(n)
                ],
            )
            ids = list(session.scalars(select(Calendar.id).order_by(Calendar.id)))
            session.execute(
                insert(Channel),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "account_id": account_id,
                        "calendar_id": cid,
                        "kind": "events",
                        "token_hash": "0" * 64,
                        "resource_id": f"r{cid}",
                        "status": "active",
                        # Opened days ago: a channel opened within the scheduler's RENEW_RETRY counts
                        # as a renewal just tried, and is not made due again.
                        "created_at": now - timedelta(days=1),
                        "expires_at": now + (timedelta(hours=2) if k < due else timedelta(days=6, minutes=k % 600)),
                    }
                    for k, cid in enumerate(ids)
                ],
            )
        if not dep.settings.is_sqlite:
            # Outside a transaction: statistics that ANALYZE writes inside one are rolled back with it,
            # and the claims were then planned as on a table never analysed.
            with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
                kept = conn.execute(text("SELECT count(*) FROM pg_stats WHERE tablename = 'calendars'")).scalar()
            assert kept, "ANALYZE kept no statistics of calendars"
    finally:
        rt.close()


def _tick_cost(dep: Deployment, n: int) -> dict[str, float]:
    from calsync.work.leases import claim_calendar, release_calendar
    from calsync.work.worker import Worker

    _insert_calendars(dep, n, DUE)
    rt = dep.runtime()
    try:
        worker = Worker(rt, threads=1)
        started = time.perf_counter()
        worker.tick()  # the first pass marks the due calendars
        first = (time.perf_counter() - started) * 1000
        with rt.sessions() as session:
            marked = session.scalar(select(func.count()).select_from(Calendar).where(Calendar.due_at <= rt.clock.now()))
        times = []
        for _ in range(20):
            started = time.perf_counter()
            worker.tick()
            times.append((time.perf_counter() - started) * 1000)
        claims = []
        for _ in range(20):
            started = time.perf_counter()
            with transaction(rt.sessions) as session:
                claim = claim_calendar(session, "bench", rt.clock.now(), LEASE)
            claims.append((time.perf_counter() - started) * 1000)
            assert claim is not None
            with transaction(rt.sessions) as session:
                release_calendar(session, claim)
        # What a thread woken for work another thread took pays: a pass that claims nothing.
        with transaction(rt.sessions) as session:
            session.execute(update(Calendar).values(due_at=rt.clock.now() + timedelta(hours=1)))
        idle = []
        for _ in range(200):
            started = time.perf_counter()
            assert worker.work_once("bench/0") == 0
            idle.append((time.perf_counter() - started) * 1000)
        return {
            "tick": statistics.median([*times, first]),
            "first": first,
            "claim": statistics.median(claims),
            "idle": statistics.median(idle),
            "marked": float(marked or 0),
        }
    finally:
        rt.close()


def _worker_rss(report: Report, dep: Deployment, n: int) -> None:
    """An idle `calsync worker` over n calendars (the due ones put out of reach so it only schedules)."""
    rt = dep.runtime()
    with transaction(rt.sessions) as session:
        session.execute(update(Channel).values(expires_at=rt.clock.now() + timedelta(days=6)))
        session.execute(update(Calendar).values(due_at=rt.clock.now() + timedelta(hours=1)))
    proc = dep.start(["worker"], "worker-rss")
    try:
        wait_until(lambda: _heartbeats(rt) >= 1, 30, 0.1)
        time.sleep(5)
        rss, peak = proc_status_kb(proc.pid, "VmRSS"), proc_status_kb(proc.pid, "VmHWM")
        report.figure(f"[postgresql] idle `calsync worker` RSS with {n:,} calendars", rss / 1024, "MB")
        report.figure("[postgresql] its peak RSS (VmHWM)", peak / 1024, "MB")
    finally:
        proc.stop()
        rt.close()


def _heartbeats(rt: Any) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WorkerHeartbeat)) or 0)


def _throughput(report: Report, emu: Any, work: Path, calendars: int) -> None:
    print(f"-- postgresql: syncs/s with 1, 2, 4 `calsync worker` processes over {calendars} calendars", flush=True)
    emu.reset()
    per_account = 10
    cal_ids: list[str] = []
    with database("postgresql", work, "throughput") as url:
        dep = Deployment(emu, url, work)
        rt = dep.runtime()
        for a in range(calendars // per_account):
            email = emu.create_user(f"w{a}@example.com")
            cals = [email] + [emu.create_calendar(email, f"C{a}-{j}") for j in range(1, per_account)]
            for k, cal in enumerate(cals):
                emu.bulk_insert_events(cal, [event_body(k * 5 + e) for e in range(5)])
            cal_ids += cals
            connect_account(rt, emu, email)
        procs = [dep.start(["worker"], f"worker-baseline-{i}") for i in range(2)]
        started = time.perf_counter()
        ok = wait_until(lambda: all_synced(rt, calendars), 600, 0.2)
        report.note(
            f"baseline (list, full sync, watch, seam sync) of {calendars} calendars with 2 workers: "
            f"{time.perf_counter() - started:.1f}s"
        )
        for p in procs:
            p.stop()
        dep.procs.clear()
        if not report.check(bool(ok), f"{calendars} calendars synced and watched"):
            return
        results = {}
        for n in (1, 2, 4):
            for cal in cal_ids:
                event_id = emu.events(cal)[0]["id"]
                emu.patch_event(cal, event_id, {"summary": f"scale-{n}-{cal}"})
            procs = [dep.start(["worker"], f"worker-{n}-{i}") for i in range(n)]
            wait_until(lambda: _heartbeats(rt) >= n, 60, 0.1)  # noqa: B023 - called within this iteration
            time.sleep(1.0)
            with transaction(rt.sessions) as session:
                session.execute(
                    update(Calendar).values(sync_requested=Calendar.sync_requested + 1, due_at=rt.clock.now())
                )
                session.execute(text("NOTIFY calsync_work"))
            started = time.perf_counter()
            done = wait_until(lambda: all_synced(rt, calendars), 300, 0.02)
            elapsed = time.perf_counter() - started
            rss = [proc_status_kb(p.pid, "VmHWM") / 1024 for p in procs]
            for p in procs:
                p.stop()
            dep.procs.clear()
            with transaction(rt.sessions) as session:
                session.execute(text("DELETE FROM worker_heartbeats"))
            results[n] = calendars / elapsed
            report.check(bool(done), f"{n} worker(s): all {calendars} calendars synced")
            report.figure(
                f"[postgresql] syncs/s with {n} worker process(es) (4 threads each)",
                results[n],
                "syncs/s",
                baseline=results[1],
                baseline_name="1 process",
            )
            report.note(f"{n} worker(s): peak RSS per process {', '.join(f'{r:.0f}' for r in rss)} MB")
        values = [
            c.after.get("summary")
            for c in all_changes(rt)
            if c.after and str(c.after.get("summary", "")).startswith("scale-")
        ]
        report.check(
            len(values) == len(set(values)) == 3 * calendars,
            f"every edit in the diff log exactly once ({len(values)} of {3 * calendars})",
        )
        check_mirrors(report, rt, emu, cal_ids)
        rt.close()


if __name__ == "__main__":
    run_main(main, parser(__doc__.splitlines()[0]))
