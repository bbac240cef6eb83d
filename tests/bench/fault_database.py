"""Database outages: the database goes away again and again while edits and notifications flow.

`calsync web` and `calsync worker` run as processes of their own. On PostgreSQL a private server
(initdb into a temporary folder, its own port) is stopped and started again; on SQLite another
process holds the write lock (`BEGIN IMMEDIATE`) for as long, which is what a SQLite deployment
meets ("database is locked" past the busy timeout). Outages last 1-30 s at random (--quick: 1-5 s),
10 of them (--quick: 3), during a steady stream of edits (each touching an event no other edit
touches) and of reads of /api/changes and /healthz. The emulator retries a notification answered
5xx for about two minutes, as Google retries them.

Figures: edits made and how many reached the feed exactly once; the time from each return to the
moment every edit made before it is in the feed (worst and median), and as a baseline the same
measure at a moment with no outage; the answers of the web process by status (5xx must be 503
only). Correctness: every edit in the feed exactly once, nothing else in it, mirrors equal Google,
no calsync process exited.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests
from sqlalchemy import make_url

from tests.bench._common import (
    API_TOKEN,
    Deployment,
    EditStream,
    Report,
    all_changes,
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
from tests.pg_support import PrivateServer, unavailable

CALENDARS = 3
RATE = 10.0  # edits per second


def main(args: Any) -> int:
    report = Report("fault_database", args.json)
    rng = random.Random(args.seed)
    outages = args.outages or (3 if args.quick else 10)
    longest = 5.0 if args.quick else 30.0
    emu = start_emulator()
    try:
        with workdir("dbfault") as work:
            for kind in engines(args.db):
                if kind == "postgresql":
                    why = unavailable()
                    if why:
                        report.note(f"[postgresql] skipped: {why}")
                        continue
                    server = PrivateServer()
                    try:
                        server.start()
                        server.make_template()
                        url = server.fresh_database("bench")
                        _run(report, kind, emu, url, work, outages, longest, rng, server)
                    finally:
                        server.close()
                else:
                    with database(kind, work, "dbfault") as url:
                        _run(report, kind, emu, url, work, outages, longest, rng, None)
                emu.reset()
    finally:
        emu.stop()
    return report.finish()


def _run(
    report: Report,
    kind: str,
    emu: Any,
    url: str,
    work: Path,
    outages: int,
    longest: float,
    rng: random.Random,
    server: PrivateServer | None,
) -> None:
    print(f"-- {kind}: {outages} outages of 1-{longest:g} s", flush=True)
    emu.push.retry_base, emu.push.max_attempts = 0.25, 10  # retried for about two minutes, as Google does
    dep = Deployment(emu, url, work, reconcile_every=timedelta(hours=1))
    rt = dep.runtime()
    email = emu.create_user(f"dbfault-{kind}@example.com")
    cals = [email] + [emu.create_calendar(email, f"D{i}") for i in range(1, CALENDARS)]
    for k, cal in enumerate(cals):
        emu.bulk_insert_events(cal, [event_body(k * 1000 + i) for i in range(300)])
    connect_account(rt, emu, email)
    web = dep.start(["web", "--port", str(dep.port), "--workers", "1"], f"web-{kind}")
    worker = dep.start(["worker"], f"worker-{kind}")
    answers: Counter[str] = Counter()
    stop = threading.Event()
    try:
        dep.wait_http()
        if not report.check(
            bool(wait_until(lambda: all_synced(rt, CALENDARS), 120, 0.1)),
            f"[{kind}] {CALENDARS} calendars synced and watched",
        ):
            print(worker.tail())
            return
        stream = EditStream(emu, cals, f"db-{kind}")
        editor = threading.Thread(target=stream.run, args=(RATE, stop, 1_000_000), daemon=True)
        reader = threading.Thread(target=_read, args=(dep.public_url, answers, stop), daemon=True)
        editor.start()
        reader.start()
        time.sleep(2.0)
        baseline = _time_to_feed(rt, stream, time.perf_counter())
        returns: list[float] = []
        lengths: list[float] = []
        for _ in range(outages):
            length = rng.uniform(1.0, longest)
            lengths.append(length)
            _outage(kind, url, server, length)
            returns.append(_time_to_feed(rt, stream, time.perf_counter()))
            time.sleep(rng.uniform(1.0, 3.0))
        stop.set()
        editor.join()
        reader.join()
        report.note(
            f"[{kind}] {outages} outages, {sum(lengths):.0f} s in all (longest {max(lengths):.1f} s), "
            f"{stream.count} edits at {RATE:g}/s"
        )
        emu.wait_push_idle(150)
        converged = wait_until(lambda: all_synced(rt, CALENDARS) and mirrors_match(rt, emu, cals), 150, 0.2)
        report.check(bool(converged), f"[{kind}] converged")
        once = _exactly_once(rt, stream)
        report.figure(f"[{kind}] edits made", stream.count, "edits")
        report.figure(
            f"[{kind}] edits in the feed exactly once", once, "edits", baseline=stream.count, baseline_name="made"
        )
        worst = max(returns)
        report.figure(
            f"[{kind}] return → every earlier edit in the feed (worst of {len(returns)})",
            worst,
            "s",
            baseline=baseline,
            baseline_name="same measure, no outage",
        )
        report.figure(
            f"[{kind}] return → every earlier edit in the feed (median)", sorted(returns)[len(returns) // 2], "s"
        )
        pushes = Counter(str(r.status) for r in emu.notifications)
        retried = sum(r.attempts - 1 for r in emu.notifications)
        report.note(f"[{kind}] reads by status: {dict(sorted(answers.items()))}")
        report.note(f"[{kind}] notifications by final status: {dict(pushes)}; retried by Google {retried} times")
        server_errors = {s: n for s, n in answers.items() if s.startswith("5") and s != "503"}
        report.check(not server_errors, f"[{kind}] no 5xx but 503 from the web process ({server_errors or 'none'})")
        # Outages take most of the run, so a notification's every retry can meet one and Google give
        # up on it: its change still arrives with the calendar's next sync (the checks below).
        report.note(f"[{kind}] notifications Google gave up on: {sum(n for s, n in pushes.items() if s != '200')}")
        report.check(web.alive() and worker.alive(), f"[{kind}] no calsync process exited")
        check_mirrors(report, rt, emu, cals)
        stream.check(report, rt, f"[{kind}]")
    finally:
        stop.set()
        worker.stop()
        web.stop()
        dep.procs.clear()
        rt.close()


def _outage(kind: str, url: str, server: PrivateServer | None, seconds: float) -> None:
    """The database away for `seconds`: the server stopped, or SQLite's write lock held elsewhere."""
    if server is not None:
        server.outage(seconds).join()
        return
    path = make_url(url).database or ""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _read(base: str, answers: Counter[str], stop: threading.Event) -> None:
    """An API consumer and a load balancer's probe, all along."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    while not stop.is_set():
        for path in ("/api/changes?after=0&limit=10", "/healthz"):
            try:
                answers[str(requests.get(base + path, headers=headers, timeout=35).status_code)] += 1
            except requests.RequestException as err:
                answers[type(err).__name__] += 1
        stop.wait(0.1)


def _time_to_feed(rt: Any, stream: EditStream, since: float) -> float:
    """Seconds from `since` until every edit the stream had made by then is in the feed."""
    created, updated, deleted = set(stream.created), set(stream.updated), {e for _, e in stream.deleted}

    def there() -> bool:
        try:
            changes = all_changes(rt)
        except Exception:  # the database may still be starting
            return False
        summaries = {(c.after or {}).get("summary") for c in changes if c.kind in ("created", "updated")}
        gone = {c.event_id for c in changes if c.kind == "deleted"}
        return created | updated <= summaries and deleted <= gone

    wait_until(there, 180, 0.05)
    return time.perf_counter() - since


def _exactly_once(rt: Any, stream: EditStream) -> int:
    changes = [c for c in all_changes(rt) if c.kind != "snapshot"]
    summaries = Counter((c.after or {}).get("summary") for c in changes if c.kind in ("created", "updated"))
    gone = Counter(c.event_id for c in changes if c.kind == "deleted")
    once = sum(summaries[s] == 1 for s in stream.created | stream.updated)
    return once + sum(gone[e] == 1 for _, e in stream.deleted)


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--outages", type=int, default=None, help="how many (default 10, --quick 3)")
    p.add_argument("--seed", type=int, default=None)
    run_main(main, p)
