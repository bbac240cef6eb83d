"""Quota efficiency: events.list calls per burst of notifications, and Google calls per idle calendar per day.

1. Burst: `calsync serve` (SQLite) watches one calendar; one real edit, then 1,000 valid notifications
   for its channel sent as fast as 16 connections allow (aimed at one second). Counted from the
   emulator's request log: events.list calls for that calendar until everything is quiet.
   Target <= 2. Correctness: the edit is in the diff log exactly once.
2. A simulated day: an in-process worker driven by a FrozenClock (the emulator runs on the same
   clock, so access tokens and channels expire in simulated time) runs every 5 simulated minutes for
   8 days over idle calendars; Google calls are counted from the emulator's log and divided by
   calendars and days. Baseline: polling every 5 minutes = 288 events.list calls per calendar per day.
"""

from __future__ import annotations

import http.client
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench._common import (
    Deployment,
    Report,
    all_changes,
    all_synced,
    check_mirrors,
    connect_account,
    database,
    event_body,
    parser,
    run_main,
    start_emulator,
    wait_until,
    workdir,
)

POLL_CALLS_PER_DAY = 24 * 60 // 5


def main(args: Any) -> int:
    report = Report("bench_quota", args.json)
    with workdir("quota") as work:
        _burst(report, work, 1000)
        _simulated_days(report, work, calendars=5 if args.quick else 20, days=8)
    return report.finish()


def _burst(report: Report, work: Path, count: int) -> None:
    print(f"-- burst of {count} notifications (calsync serve, SQLite)", flush=True)
    emu = start_emulator()
    try:
        with database("sqlite", work, "burst") as url:
            dep = Deployment(emu, url, work)
            rt = dep.runtime()
            email = "burst@example.com"
            connect_account(rt, emu, email)
            emu.bulk_insert_events(email, [event_body(i) for i in range(20)])
            serve = dep.start(["serve", "--port", str(dep.port)], "serve-burst")
            try:
                dep.wait_http()
                report.check(bool(wait_until(lambda: all_synced(rt, 1), 60, 0.1)), "calendar synced and watched")
                emu.wait_push_idle(10)
                time.sleep(1.0)
                channel = next(c for c in emu.channels() if c["calendar_id"] == email)
                before = emu.count("calendar.events.list", email)
                event_id = emu.events(email)[0]["id"]
                emu.patch_event(email, event_id, {"summary": "burst-edit"})
                started = time.perf_counter()
                statuses = _send_burst(dep.port, channel, count, 1.0)
                sent_in = time.perf_counter() - started
                emu.wait_push_idle(10)
                wait_until(lambda: all_synced(rt, 1), 30, 0.05)
                time.sleep(2.0)  # anything still owed would be claimed by now (the worker polls every 1.5 s)
                lists = emu.count("calendar.events.list", email) - before
                report.note(
                    f"{count} notifications (+1 from the edit) sent in {sent_in:.2f}s; answers {dict(statuses)}"
                )
                report.figure(
                    f"events.list calls for {count} notifications",
                    lists,
                    "calls",
                    baseline=count,
                    baseline_name="one call per notification",
                    target="<= 2",
                    met=lists <= 2,
                )
                report.check(statuses.get(200, 0) == count, "every notification answered 200")
                edits = [c for c in all_changes(rt) if (c.after or {}).get("summary") == "burst-edit"]
                report.check(len(edits) == 1, f"the edit is in the diff log exactly once ({len(edits)})")
                check_mirrors(report, rt, emu, [email])
            finally:
                serve.stop()
                rt.close()
    finally:
        emu.stop()


def _send_burst(port: int, channel: dict[str, Any], count: int, seconds: float) -> Counter[int]:
    """`count` notifications spread over `seconds` (or as fast as the server takes them) from 16 connections."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    state = {"next": 0}
    start = time.perf_counter()
    base = 1_000_000

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= count:
                break
            delay = start + i * seconds / count - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.request(
                "POST",
                "/notifications",
                body=b"",
                headers={
                    "X-Goog-Channel-ID": channel["id"],
                    "X-Goog-Channel-Token": channel["token"],
                    "X-Goog-Resource-ID": channel["resource_id"],
                    "X-Goog-Resource-State": "exists",
                    "X-Goog-Resource-URI": channel["resource_uri"],
                    "X-Goog-Message-Number": str(base + i),
                    "Content-Length": "0",
                },
            )
            resp = conn.getresponse()
            resp.read()
            with lock:
                statuses[resp.status] += 1
        conn.close()

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def _simulated_days(report: Report, work: Path, *, calendars: int, days: int) -> None:
    from calsync.clock import FrozenClock
    from calsync.work.worker import Worker

    print(f"-- {days} simulated days, {calendars} idle calendars in one account (FrozenClock worker)", flush=True)
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    emu = start_emulator(clock=clock.now)
    try:
        with database("sqlite", work, "days") as url:
            dep = Deployment(emu, url, work)
            rt = dep.runtime(clock=clock)
            email = "idle@example.com"
            emu.create_user(email)
            cal_ids = [email] + [emu.create_calendar(email, f"Idle {i}") for i in range(calendars - 1)]
            for k, cal in enumerate(cal_ids):
                emu.bulk_insert_events(cal, [event_body(k * 10 + i) for i in range(5)])
            connect_account(rt, emu, email)
            worker = Worker(rt, threads=1)
            worker.run_burst()
            report.check(all_synced(rt, calendars), f"{calendars} calendars synced and watched")
            first = len(emu.requests)
            step = timedelta(minutes=5)
            for _ in range(days * 24 * 12):
                clock.advance(step.total_seconds())
                worker.run_burst()
            # google-auth tracks token expiry on the real clock, so each simulated hour starts with one
            # 401 and a refresh; in real time it refreshes ahead of expiry, so those 401s are left out.
            served = emu.requests[first:]
            expired = sum(1 for r in served if r.status == 401)
            calls = Counter(r.api_method for r in served if r.status != 401)
            per_cal_day = {k: v / calendars / days for k, v in sorted(calls.items())}
            report.note(f"left out: {expired} calls answered 401 (simulated-time token expiry)")
            report.note(
                "calls per calendar per day by method: " + ", ".join(f"{k} {v:.2f}" for k, v in per_cal_day.items())
            )
            calendar_api = sum(v for k, v in per_cal_day.items() if k.startswith("calendar."))
            report.figure(
                "events.list per idle calendar per day",
                per_cal_day.get("calendar.events.list", 0.0),
                "calls",
                baseline=POLL_CALLS_PER_DAY,
                baseline_name="polling every 5 min",
            )
            report.figure(
                "Calendar API calls per idle calendar per day (list + watch + stop + calendarList)",
                calendar_api,
                "calls",
                baseline=POLL_CALLS_PER_DAY,
                baseline_name="polling every 5 min",
                target="well under polling",
                met=calendar_api < POLL_CALLS_PER_DAY / 4,
            )
            report.figure(
                "all Google calls per idle calendar per day (incl. token refresh)",
                sum(per_cal_day.values()),
                "calls",
                baseline=POLL_CALLS_PER_DAY,
                baseline_name="polling every 5 min",
            )
            report.note(
                f"settings: reconcile_every={rt.settings.reconcile_every.total_seconds():g}s, "
                f"channel_ttl={rt.settings.channel_ttl.total_seconds():g}s, "
                f"renew_before={rt.settings.renew_before.total_seconds():g}s, "
                f"emulator access token ttl {emu.access_token_ttl}s"
            )
            report.check(all_synced(rt, calendars), "still synced and watched after the simulated days")
            check_mirrors(report, rt, emu, cal_ids)
            rt.close()
    finally:
        emu.stop()


if __name__ == "__main__":
    run_main(main, parser(__doc__.splitlines()[0], db_default=None))
