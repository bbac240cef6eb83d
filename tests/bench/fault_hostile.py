"""Hostile network: 30% of notifications dropped, others duplicated and reordered, bursts of 429 and 503.

`calsync serve` runs with a short reconciliation interval (8 s; --quick 6 s). While edits stream in,
the emulator drops 30% of push messages, duplicates 30% of the rest, shuffles their order, and every
2 s makes the next events.list calls fail with 429 (Retry-After 1) or 503. After the last edit,
everything must converge within one reconciliation interval: the dropped notifications are what the
reconciliation is for, and the failed calls are retried with per-calendar backoff.

Correctness: convergence within the interval (plus the worker's 1.5 s poll and one sync), every
mirror equals the emulator, each edit is exactly one Change.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench._common import (
    Deployment,
    EditStream,
    Report,
    all_synced,
    check_mirrors,
    connect_account,
    database,
    engines,
    event_body,
    mirrors_match,
    parser,
    run_main,
    start_emulator,
    wait_until,
    workdir,
)

CALENDARS = 5
SLACK = 3.0  # the worker's 1.5 s fallback poll plus one sync


def main(args: Any) -> int:
    report = Report("fault_hostile", args.json)
    reconcile = args.reconcile or (6.0 if args.quick else 8.0)
    seconds = 10.0 if args.quick else 30.0
    emu = start_emulator(seed=11)
    try:
        with workdir("hostile") as work:
            for kind in engines(args.db):
                with database(kind, work, "hostile") as url:
                    _run(report, kind, emu, url, work, reconcile, seconds)
                emu.reset()
    finally:
        emu.stop()
    return report.finish()


def _run(report: Report, kind: str, emu: Any, url: str, work: Path, reconcile: float, seconds: float) -> None:
    print(f"-- {kind}: reconcile every {reconcile:g}s, {seconds:g}s of edits", flush=True)
    dep = Deployment(emu, url, work, reconcile_every=timedelta(seconds=reconcile))
    rt = dep.runtime()
    email = emu.create_user("hostile@example.com")
    cals = [email] + [emu.create_calendar(email, f"H{i}") for i in range(1, CALENDARS)]
    for k, cal in enumerate(cals):
        emu.bulk_insert_events(cal, [event_body(k * 1000 + i) for i in range(200)])
    connect_account(rt, emu, email)
    serve = dep.start(["serve", "--port", str(dep.port)], f"serve-{kind}")
    try:
        dep.wait_http()
        if not report.check(
            bool(wait_until(lambda: all_synced(rt, CALENDARS), 120, 0.1)),
            f"[{kind}] {CALENDARS} calendars synced and watched",
        ):
            print(serve.tail())
            return
        emu.push_faults(drop=0.3, duplicate=0.3, reorder=True)
        stream = EditStream(emu, cals, "hn")
        stop = threading.Event()
        editor = threading.Thread(target=stream.run, args=(20.0, stop, 100_000), daemon=True)
        editor.start()
        started = time.perf_counter()
        bursts = 0
        while time.perf_counter() - started < seconds:
            if bursts % 2:
                emu.fail_next(3, status=503, reason="backendError", method="calendar.events.list")
            else:
                emu.fail_next(3, status=429, reason="rateLimitExceeded", retry_after=1, method="calendar.events.list")
            bursts += 1
            time.sleep(2.0)
        stop.set()
        editor.join()
        last_edit = time.perf_counter()
        emu.faults.clear()
        converged = wait_until(lambda: mirrors_match(rt, emu, cals), reconcile + 60, 0.1)
        took = time.perf_counter() - last_edit
        records = emu.notifications
        dropped = sum(1 for r in records if r.fault == "dropped")
        failed = sum(1 for r in emu.requests if r.api_method == "calendar.events.list" and r.status in (429, 503))
        report.note(
            f"[{kind}] {stream.count} edits; {dropped} of {len(records)} notifications dropped; "
            f"{failed} events.list calls answered 429/503 ({bursts} bursts)"
        )
        report.figure(
            f"[{kind}] convergence after the last edit",
            took,
            "s",
            baseline=reconcile,
            baseline_name="reconciliation interval",
            target=f"<= interval + {SLACK:g}s",
            met=took <= reconcile + SLACK,
        )
        report.check(
            bool(converged) and took <= reconcile + SLACK,
            f"[{kind}] converged within one reconciliation interval ({took:.1f}s <= {reconcile:g}s + {SLACK:g}s)",
        )
        emu.push_faults()
        wait_until(lambda: all_synced(rt, CALENDARS), 30, 0.1)
        check_mirrors(report, rt, emu, cals)
        stream.check(report, rt, f"[{kind}]")
    finally:
        serve.stop()
        dep.procs.clear()
        rt.close()


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0], db_default="sqlite")
    p.add_argument("--reconcile", type=float, default=None, help="reconciliation interval in seconds")
    run_main(main, p)
