"""Kill -9: a stream of edits while the `calsync worker` process is SIGKILLed at random moments and restarted.

`calsync web` (the receiver) stays up; `calsync worker` is killed 30 times (--quick: 10), each time at
a random moment after it has started working, and started again at once. Leases keep their default
length: a dead worker's calendars are taken over once its heartbeat is stale. Reconciliation is an
hour away, so convergence must come from the notifications and the work queue alone. Every edit
touches an event no other edit touches (insert, patch or delete), so each must appear in the diff
log exactly once.

Correctness: afterwards every mirror equals the emulator, each edit is exactly one Change, and the
log holds nothing else. Figure: time to converge after the last kill.

Then the first-sync round, with the default lease (120 s), so take-over must come from liveness: a
calendar of 20,000 events (--quick: 5,000) is connected, `calsync worker` is SIGKILLed in the middle
of its first sync, events it stored and events it had not reached are edited, deleted and added
while no worker runs, and a worker is started again; 10 times (--quick: 3), a new calendar each
time. Every edit is in the feed exactly once (in a snapshot row or an update), a deletion of a
stored event is one `deleted` row and of an unstored one no row at all, no event has two snapshot
rows, and the feed folded from its start equals the mirror and Google. Figure: take-over time, from
the restart to the new worker holding the calendar; target ≤ 10 s.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import func, select

from calsync.store.models import Calendar, Change, WorkerHeartbeat
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
    google_view,
    mirror_of,
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
                with database(kind, work, "first") as url:
                    _first_sync_rounds(
                        report,
                        kind,
                        emu,
                        url,
                        work,
                        args.first_syncs or (3 if args.quick else 10),
                        5_000 if args.quick else 20_000,
                        rng,
                    )
                emu.reset()
    finally:
        emu.stop()
    return report.finish()


def _run(report: Report, kind: str, emu: Any, url: str, work: Path, kills: int, rng: random.Random) -> None:
    print(f"-- {kind}: {kills} kills", flush=True)
    dep = Deployment(emu, url, work, reconcile_every=timedelta(hours=1))
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
        if not report.check(
            bool(wait_until(lambda: all_synced(rt, CALENDARS), 120, 0.1)),
            f"[{kind}] {CALENDARS} calendars synced and watched",
        ):
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
        report.note(
            f"[{kind}] {kills} SIGKILLs over {time.perf_counter() - started:.1f}s while {stream.count} edits were made"
        )
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


def _first_sync_rounds(
    report: Report, kind: str, emu: Any, url: str, work: Path, rounds: int, events: int, rng: random.Random
) -> None:
    print(f"-- {kind}: {rounds} first syncs of {events:,} events, each SIGKILLed midway", flush=True)
    dep = Deployment(emu, url, work, reconcile_every=timedelta(hours=1))  # the default lease: liveness must free it
    rt = dep.runtime()
    takeovers: list[float] = []
    midway = 0
    try:
        for r in range(rounds):
            email = emu.create_user(f"first{r}@example.com")
            emu.bulk_insert_events(email, [event_body(r * 1_000_000 + i) for i in range(events)])
            worker = dep.start(["worker"], f"first-{kind}-{r}")
            connect_account(rt, emu, email)
            cal_id = wait_until(lambda: _calendar_id(rt, email), 60)  # noqa: B023
            wait_until(lambda: _feed(rt, cal_id), 60, 0.005)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.2))
            worker.kill9()
            dep.procs.remove(worker)
            owner, done = _lease(rt, cal_id)
            midway += not done
            stored = set(mirror_of(rt, email))
            ledger = _edit_while_down(emu, email, stored, rng, r)
            restarted = time.perf_counter()
            worker = dep.start(["worker"], f"first-{kind}-{r}-again")
            if wait_until(
                lambda: _lease(rt, cal_id)[0] not in (owner, None) or _lease(rt, cal_id)[1],  # noqa: B023
                60,
                0.02,
            ):
                takeovers.append(time.perf_counter() - restarted)
            synced = wait_until(lambda: _synced(rt, cal_id), 120, 0.1)  # noqa: B023
            worker.stop()
            dep.procs.remove(worker)
            report.check(
                bool(synced) and _check_round(rt, emu, email, cal_id, ledger),
                f"[{kind}] first sync {r + 1}: every edit made while it was down is in the feed once, "
                "and the feed folds to the mirror and Google",
            )
        report.note(f"[{kind}] {midway} of {rounds} kills landed inside the first sync")
        report.check(midway == rounds, f"[{kind}] every kill landed inside the first sync")
        if takeovers:
            report.figure(
                f"[{kind}] take-over after a SIGKILL in a first sync (worst of {len(takeovers)})",
                max(takeovers),
                "s",
                target="<= 10 s",
                met=max(takeovers) <= 10,
            )
            report.figure(
                f"[{kind}] take-over after a SIGKILL in a first sync (median)",
                sorted(takeovers)[len(takeovers) // 2],
                "s",
            )
        report.check(len(takeovers) == rounds, f"[{kind}] a new worker took over each of {rounds} calendars")
    finally:
        dep.stop_all()
        rt.close()


def _edit_while_down(emu: Any, cal: str, stored: set[str], rng: random.Random, r: int) -> dict[str, Any]:
    """Edits of stored and not yet stored events while no calsync runs, each with a summary of its own."""
    unstored = sorted({e["id"] for e in emu.events(cal)} - stored)
    ids = sorted(stored)
    rng.shuffle(ids)
    rng.shuffle(unstored)
    ledger: dict[str, Any] = {"versions": [], "deleted_stored": ids[:10], "deleted_unstored": unstored[:10]}
    for n, event_id in enumerate(ids[10:30] + unstored[10:30]):
        value = f"first{r}-edit-{n}"
        emu.patch_event(cal, event_id, {"summary": value})
        ledger["versions"].append(value)
    for event_id in ledger["deleted_stored"] + ledger["deleted_unstored"]:
        emu.delete_event(cal, event_id)
    for n in range(20):
        value = f"first{r}-new-{n}"
        emu.insert_event(cal, event_body(n, value))
        ledger["versions"].append(value)
    return ledger


def _check_round(rt: Any, emu: Any, cal: str, cal_id: int, ledger: dict[str, Any]) -> bool:
    rows = _feed(rt, cal_id)
    by_summary: dict[str, int] = {}
    per_event: dict[str, list[Change]] = {}
    state: dict[str, Any] = {}
    for change in rows:
        per_event.setdefault(str(change.event_id), []).append(change)
        summary = (change.after or {}).get("summary")
        if summary:
            by_summary[summary] = by_summary.get(summary, 0) + 1
        if change.kind == "deleted":
            state.pop(str(change.event_id), None)
        else:
            state[str(change.event_id)] = change.after
    once = all(by_summary.get(value) == 1 for value in ledger["versions"])
    stored_deletions = all(
        per_event.get(e, [None])[-1] is not None and per_event[e][-1].kind == "deleted"
        for e in ledger["deleted_stored"]
    )
    unstored_deletions = not any(e in per_event for e in ledger["deleted_unstored"])
    one_snapshot = all(sum(c.kind == "snapshot" for c in changes) <= 1 for changes in per_event.values())
    mirror = mirror_of(rt, cal)
    folds = state == mirror == google_view(emu, cal)
    return once and stored_deletions and unstored_deletions and one_snapshot and folds


def _calendar_id(rt: Any, google_id: str) -> int | None:
    with rt.sessions() as session:
        found: int | None = session.scalar(select(Calendar.id).where(Calendar.google_id == google_id))
        return found


def _feed(rt: Any, cal_id: int) -> list[Change]:
    with rt.sessions() as session:
        return list(session.scalars(select(Change).where(Change.calendar_id == cal_id).order_by(Change.seq)))


def _lease(rt: Any, cal_id: int) -> tuple[str | None, bool]:
    with rt.sessions() as session:
        cal = session.get_one(Calendar, cal_id)
        return cal.lease_owner, bool(cal.baseline_done)


def _synced(rt: Any, cal_id: int) -> bool:
    with rt.sessions() as session:
        cal = session.get_one(Calendar, cal_id)
        return bool(cal.baseline_done) and cal.sync_done >= cal.sync_requested and cal.lease_owner is None


def _heartbeats(rt: Any) -> int:
    """Worker processes that ever reported (the rows of killed ones stay until pruned)."""
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WorkerHeartbeat)) or 0)


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0], db_default="sqlite")
    p.add_argument("--kills", type=int, default=None, help="number of SIGKILLs (default 30, --quick 10)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--first-syncs", type=int, default=None, help="first syncs to SIGKILL midway (default 10, --quick 3)"
    )
    run_main(main, p)
