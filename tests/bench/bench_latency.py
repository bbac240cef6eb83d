"""Change-to-diff latency: from an edit in the emulator to the change readable in `/api/changes`.

`calsync serve` (gunicorn, web + worker in one process) runs on SQLite and on PostgreSQL. Edits come
at a fixed rate, spread over the calendars, each writing a unique summary; a consumer follows
`/api/changes?after=SEQ` like a real client and notes when each value appears. The baseline, in the
same run, is the emulator's own push delivery latency: edit -> notification answered by calsync.

Targets: p50 <= 150 ms, p99 <= 1 s (1,000 edits over 100 calendars; --quick: 200 over 20).
Correctness: every edit appears exactly once in the diff log; every mirror equals the emulator.
"""

from __future__ import annotations

import bisect
import datetime as dt
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests

from tests.bench._common import (
    API_TOKEN,
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
    percentile,
    run_main,
    start_emulator,
    wait_until,
    workdir,
)

EVENTS_PER_CALENDAR = 5
CALENDARS_PER_ACCOUNT = 10


def main(args: Any) -> int:
    report = Report("bench_latency", args.json)
    edits = args.edits or (200 if args.quick else 1000)
    calendars = args.calendars or (20 if args.quick else 100)
    emu = start_emulator()
    try:
        with workdir("latency") as work:
            for kind in engines(args.db):
                with database(kind, work, "latency") as url:
                    _run(report, kind, emu, url, work, edits, calendars, args.rate)
                emu.reset()
    finally:
        emu.stop()
    return report.finish()


def _run(report: Report, kind: str, emu: Any, url: str, work: Path, edits: int, calendars: int, rate: float) -> None:
    print(f"-- {kind}: {edits} edits over {calendars} calendars at {rate:g}/s", flush=True)
    dep = Deployment(emu, url, work)
    rt = dep.runtime()
    cal_ids = _make_calendars(emu, calendars)
    for email in sorted({emu_owner for emu_owner, _ in cal_ids}):
        connect_account(rt, emu, email)
    serve = dep.start(["serve", "--port", str(dep.port)], f"serve-{kind}")
    try:
        dep.wait_http()
        started = time.monotonic()
        if not report.check(
            bool(wait_until(lambda: all_synced(rt, calendars), 300, 0.2)),
            f"[{kind}] {calendars} calendars synced and watched",
        ):
            print(serve.tail())
            return
        report.note(
            f"[{kind}] baseline of {calendars} calendars (list, sync, watch) took {time.monotonic() - started:.1f}s"
        )
        emu.wait_push_idle(10)
        consumer = _Consumer(dep.public_url, after=max((c.seq for c in all_changes(rt)), default=0))
        consumer.start()
        edit_at, edit_wall, edit_cal = _edit(emu, cal_ids, edits, rate)
        wanted = {f"lat-{i}" for i in range(edits)}
        wait_until(lambda: wanted <= consumer.seen.keys(), 60, 0.1)
        consumer.stop()
        emu.wait_push_idle(10)
        latencies = [
            (consumer.seen[f"lat-{i}"] - edit_at[i]) * 1000 for i in range(edits) if f"lat-{i}" in consumer.seen
        ]
        push = _push_latencies(emu, edit_wall, edit_cal)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        b50, b99 = percentile(push, 50), percentile(push, 99)
        report.figure(
            f"[{kind}] change-to-diff p50",
            p50,
            "ms",
            baseline=b50,
            baseline_name="push delivery p50",
            target="<= 150 ms",
            met=p50 <= 150,
        )
        report.figure(
            f"[{kind}] change-to-diff p99",
            p99,
            "ms",
            baseline=b99,
            baseline_name="push delivery p99",
            target="<= 1000 ms",
            met=p99 <= 1000,
        )
        report.figure(f"[{kind}] change-to-diff max", max(latencies, default=float("nan")), "ms")
        values = [
            c.after.get("summary")
            for c in all_changes(rt)
            if c.after and str(c.after.get("summary", "")).startswith("lat-")
        ]
        missing = wanted - set(values)
        repeated = len(values) - len(set(values))
        report.check(
            not missing and repeated == 0,
            f"[{kind}] each of {edits} edits is in the diff log exactly once "
            f"(missing {len(missing)}, repeated {repeated})",
        )
        check_mirrors(report, rt, emu, [c for _, c in cal_ids])
    finally:
        serve.stop()
        rt.close()


def _make_calendars(emu: Any, n: int) -> list[tuple[str, str]]:
    """(owner, calendar id) pairs: accounts of up to 10 calendars (primary + secondaries), 5 events each."""
    out: list[tuple[str, str]] = []
    account = 0
    while len(out) < n:
        email = emu.create_user(f"user{account}@example.com")
        out.append((email, email))
        for j in range(1, CALENDARS_PER_ACCOUNT):
            if len(out) >= n:
                break
            out.append((email, emu.create_calendar(email, f"Team {account}-{j}")))
        account += 1
    for k, (_, cal) in enumerate(out):
        emu.bulk_insert_events(cal, [event_body(k * 10 + e) for e in range(EVENTS_PER_CALENDAR)])
    return out


def _edit(
    emu: Any, cal_ids: list[tuple[str, str]], edits: int, rate: float
) -> tuple[list[float], list[dt.datetime], list[str]]:
    """Open-loop edits at `rate`/s; each patches one event's summary to a unique value."""
    events = {cal: [e["id"] for e in emu.events(cal)] for _, cal in cal_ids}
    at: list[float] = []
    wall: list[dt.datetime] = []
    cals: list[str] = []
    start = time.perf_counter()
    for i in range(edits):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        _, cal = cal_ids[i % len(cal_ids)]
        event_id = events[cal][(i // len(cal_ids)) % len(events[cal])]
        at.append(time.perf_counter())
        wall.append(dt.datetime.now(dt.UTC))
        cals.append(cal)
        emu.patch_event(cal, event_id, {"summary": f"lat-{i}"})
    return at, wall, cals


def _push_latencies(emu: Any, edit_wall: list[dt.datetime], edit_cal: list[str]) -> list[float]:
    """Edit -> notification answered, per edit: the first 200 on the calendar's channels after the edit."""
    channel_cal = {c["id"]: c["calendar_id"] for c in emu.channels()}
    answered: dict[str, list[dt.datetime]] = {}
    for rec in emu.notifications:
        if rec.resource_state == "exists" and rec.status == 200 and rec.channel_id in channel_cal:
            answered.setdefault(channel_cal[rec.channel_id], []).append(rec.time)
    out = []
    for when, cal in zip(edit_wall, edit_cal, strict=True):
        times = sorted(answered.get(cal, []))
        k = bisect.bisect_left(times, when)
        if k < len(times):
            out.append((times[k] - when).total_seconds() * 1000)
    return out


class _Consumer(threading.Thread):
    """Follows /api/changes like a client would, noting when each summary value first appears."""

    def __init__(self, base_url: str, after: int) -> None:
        super().__init__(daemon=True)
        self.url = base_url + "/api/changes"
        self.after = after
        self.seen: dict[str, float] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        http = requests.Session()
        http.trust_env = False
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        while not self._halt.is_set():
            page = http.get(self.url, params={"after": self.after, "limit": 1000}, headers=headers, timeout=10).json()
            now = time.perf_counter()
            for change in page["changes"]:
                value = (change.get("after") or {}).get("summary")
                if value is not None and value not in self.seen:
                    self.seen[value] = now
            self.after = page["next"]
            if not page["changes"]:
                self._halt.wait(0.003)


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=None, help="number of edits (default 1000, --quick 200)")
    p.add_argument("--calendars", type=int, default=None, help="number of calendars (default 100, --quick 20)")
    p.add_argument("--rate", type=float, default=20.0, help="edits per second (open loop)")
    run_main(main, p)
