"""Kill -9: a stream of edits while the `calsync worker` process is SIGKILLed at random moments and restarted.

`calsync web` (the receiver) stays up; `calsync worker` is killed 30 times (--quick: 10), each time at
a random moment after it has started working, and started again at once. Leases are short (3 s) so
a dead worker's calendars are taken over quickly; reconciliation is an hour away, so convergence
must come from the notifications and the work queue alone. Every edit touches an event no other
edit touches (insert, patch or delete), so each must appear in the diff log exactly once.

Correctness: afterwards every mirror equals the emulator, each edit is exactly one Change, and the
log holds nothing else. Figure: time to converge after the last kill.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import func, select

from calsync.store.models import WorkerHeartbeat
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


def main(args: Any) -> int:
    report = Report("fault_kill9", args.json)
    kills = args.kills or (10 if args.quick else 30)
    rng = random.Random(args.seed)
    emu = start_emulator()
    try:
        with workdir("kill9") as work:
            for kind in engines(args.db):
                with database(kind, work, "kill9") as url:
                    _run(report, kind, emu, url, work, kills, rng)
                emu.reset()
    finally:
        emu.stop()
    return report.finish()


def _run(report: Report, kind: str, emu: Any, url: str, work: Path, kills: int, rng: random.Random) -> None:
    print(f"-- {kind}: {kills} kills", flush=True)
    dep = Deployment(emu, url, work, lease_seconds=3.0, reconcile_every=3600.0)
    rt = dep.runtime()
    email = emu.create_user("kill9@example.com")
    cals = [email] + [emu.create_calendar(email, f"K{i}") for i in range(1, CALENDARS)]
    for k, cal in enumerate(cals):
        emu.bulk_insert_events(cal, [event_body(k * 1000 + i) for i in range(300)])
    connect_account(rt, emu, email)
    web = dep.start(["web", "--port", str(dep.port), "--workers", "1"], f"web-{kind}")
    worker = dep.start(["worker"], f"worker-{kind}-0")
    try:
        dep.wait_http()
        if not report.check(bool(wait_until(lambda: all_synced(rt, CALENDARS), 120, 0.1)),
                            f"[{kind}] {CALENDARS} calendars synced and watched"):
            print(worker.tail())
            return
        stream = EditStream(emu, cals, "k9")
        stop = threading.Event()
        editor = threading.Thread(target=stream.run, args=(30.0, stop, 100_000), daemon=True)
        editor.start()
        started = time.perf_counter()
        for k in range(kills):
            beats = _heartbeats(rt)
            # the new process is up and working (the lambda is called within this iteration)
            wait_until(lambda: _heartbeats(rt) > beats, 30, 0.02)  # noqa: B023
            time.sleep(rng.uniform(0.05, 1.2))
            worker.kill9()
            dep.procs.remove(worker)
            worker = dep.start(["worker"], f"worker-{kind}-{k + 1}")
        stop.set()
        editor.join()
        report.note(f"[{kind}] {kills} SIGKILLs over {time.perf_counter() - started:.1f}s while {stream.count} "
                    f"edits were made")
        last = time.perf_counter()
        emu.wait_push_idle(30)
        converged = wait_until(lambda: all_synced(rt, CALENDARS) and mirrors_match(rt, emu, cals), 120, 0.2)
        report.figure(f"[{kind}] time to converge after the last kill", time.perf_counter() - last, "s")
        report.check(bool(converged), f"[{kind}] converged")
        check_mirrors(report, rt, emu, cals)
        stream.check(report, rt, f"[{kind}]")
    finally:
        worker.stop()
        web.stop()
        dep.procs.clear()
        rt.close()


def _heartbeats(rt: Any) -> int:
    """Worker processes that ever reported (the rows of killed ones stay until pruned)."""
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WorkerHeartbeat)) or 0)


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0], db_default="sqlite")
    p.add_argument("--kills", type=int, default=None, help="number of SIGKILLs (default 30, --quick 10)")
    p.add_argument("--seed", type=int, default=7)
    run_main(main, p)
