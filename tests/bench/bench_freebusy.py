"""Free/busy and expanded occurrences from the mirror, on SQLite and on PostgreSQL.

Setup: 10 calendars of 2,000 events each (1,800 single events spread over two years, 200 recurring
series with moved and cancelled occurrences; calendar 0 also holds a daily series begun ten years
ago), written into the emulator and synced into calsync by its real sync.

  - calsync: `POST /api/freebusy` for all 10 calendars over HTTP under `calsync web` (gunicorn),
    one random week per request: p50 and p99 (target p99 <= 10 ms); and for one calendar.
  - baseline, the way a peer without a mirror answers it: `events.list?singleEvents=true` for each
    calendar from the emulator, in the same run, then the busy blocks merged client-side
    (target calsync >= 10x faster at p50).
  - the occurrences of a one-year window of the ten-year daily series: time cold (the series'
    history expanded once) and warm, and the peak RSS of the process that does it; and the same
    year of calendar 0 over HTTP (`/api/events?singleEvents=true`, every page).

Correctness: every measured free/busy answer equals the busy blocks computed from the emulator's
expanded listing for the same window.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests
from dateutil.parser import isoparse

from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.bench._common import (
    API_TOKEN,
    Deployment,
    Report,
    connect_account,
    database,
    engines,
    parser,
    percentile,
    proc_status_kb,
    run_main,
    start_emulator,
    workdir,
)
from tests.occurrence_support import EmulatorApi, busy_from_listing
from tests.push_support import calendar_id_of

T0 = datetime(2026, 6, 1, tzinfo=UTC)
OWNER = "busy@example.com"
ZONES = ["UTC", "Europe/Berlin", "America/New_York"]
DAYS = ["MO", "TU", "WE", "TH", "FR"]


def main(args: Any) -> int:
    report = Report("bench_freebusy", args.json)
    calendars, per_calendar, series = (10, 2000, 200) if not args.quick else (4, 1000, 100)
    requests_n = 200 if args.quick else 1000
    peer_n = 6 if args.quick else 12
    emu = start_emulator()
    try:
        with workdir("freebusy") as work:
            emu.create_user(OWNER)
            cal_ids = [
                emu.create_calendar(OWNER, f"team {i}", time_zone=ZONES[i % len(ZONES)]) for i in range(calendars)
            ]
            started = time.perf_counter()
            for i, cal in enumerate(cal_ids):
                _fill(emu, cal, i, per_calendar, series)
            report.note(
                f"{calendars} calendars x {per_calendar:,} events ({series} series each) written "
                f"into the emulator in {time.perf_counter() - started:.1f}s"
            )
            for kind in engines(args.db):
                with database(kind, work, "freebusy") as url:
                    _run(report, kind, emu, url, work, cal_ids, requests_n, peer_n)
    finally:
        emu.stop()
    return report.finish()


def _run(
    report: Report, kind: str, emu: Any, url: str, work: Path, cal_ids: list[str], requests_n: int, peer_n: int
) -> None:
    print(f"-- {kind}", flush=True)
    dep = Deployment(emu, url, work)
    rt = dep.runtime()
    started = time.perf_counter()
    account_id = connect_account(rt, emu, OWNER)
    refresh_calendar_list(rt, account_id)
    for cal in cal_ids:
        sync_calendar(rt, calendar_id_of(rt, cal))
    report.note(f"[{kind}] synced into calsync in {time.perf_counter() - started:.1f}s")
    web = dep.start(["web", "--port", str(dep.port)], f"web-{kind}")
    try:
        dep.wait_http()
        rss_start = [proc_status_kb(pid) for pid in _children(web.pid)]
        base = f"http://127.0.0.1:{dep.port}"
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        rng = random.Random(7)
        weeks = [T0 + timedelta(hours=rng.randrange(-180 * 24, 180 * 24)) for _ in range(requests_n)]
        items = [{"id": cal} for cal in cal_ids]
        # Warm every gunicorn process (fresh connections land on either), then measure on one keep-alive client.
        cold = time.perf_counter()
        requests.post(base + "/api/freebusy", headers=auth, timeout=60, json=_body(weeks[0], items))
        cold_ms = (time.perf_counter() - cold) * 1000
        for week in weeks[:20]:
            requests.post(base + "/api/freebusy", headers=auth, timeout=60, json=_body(week, items))
        http = requests.Session()
        http.headers.update(auth)
        # The load comes from a child process on one keep-alive connection (http.client), as in
        # bench_receiver, so the emulator's threads in this process do not share its interpreter.
        floor = _load(dep.port, [("GET", "/api/calendars", None)] * (requests_n // 2))
        many = _load(dep.port, [("POST", "/api/freebusy", _body(week, items)) for week in weeks], keep=peer_n)
        one = _load(dep.port, [("POST", "/api/freebusy", _body(week, items[:1])) for week in weeks[: requests_n // 2]])
        all_ms, one_ms, floor_ms = many["ms"], one["ms"], floor["ms"]
        answers = dict(zip(weeks, many["answers"], strict=False))
        report.note(f"[{kind}] first request after start (parses {len(cal_ids)} calendars): {cold_ms:.0f} ms")
        report.figure(f"[{kind}] HTTP floor: GET /api/calendars p50", percentile(floor_ms, 50), "ms")
        # The peer: events.list?singleEvents=true per calendar from the emulator, busy merged client-side.
        api = EmulatorApi(emu, OWNER)
        peer_weeks = weeks[:peer_n]
        peer: dict[datetime, dict[str, list[Any]]] = {}
        peer_ms = _timed(lambda week: peer.setdefault(week, _peer(api, cal_ids, week)), peer_weeks)
        p50, p99 = percentile(all_ms, 50), percentile(all_ms, 99)
        peer_p50 = percentile(peer_ms, 50)
        report.figure(f"[{kind}] free/busy, {len(cal_ids)} calendars, one week, p50", p50, "ms")
        report.figure(
            f"[{kind}] free/busy, {len(cal_ids)} calendars, one week, p99",
            p99,
            "ms",
            target="<= 10 ms",
            met=p99 <= 10.0,
        )
        report.figure(f"[{kind}] free/busy, 1 calendar, one week, p50", percentile(one_ms, 50), "ms")
        report.figure(f"[{kind}] free/busy, 1 calendar, one week, p99", percentile(one_ms, 99), "ms")
        report.figure(
            f"[{kind}] speed-up over the peer's way (p50)",
            peer_p50 / p50,
            "x",
            baseline=peer_p50,
            baseline_name=f"{len(cal_ids)} x events.list?singleEvents=true p50 (ms)",
            ratio=peer_p50 / p50,
            target=">= 10x",
            met=peer_p50 / p50 >= 10,
        )
        same = [w for w in peer_weeks if _busy(answers[w], cal_ids) == peer[w]]
        report.check(
            len(same) == len(peer_weeks),
            f"[{kind}] free/busy == blocks from the emulator's expanded listing for {len(same)}/"
            f"{len(peer_weeks)} weeks",
        )
        report.check(
            many["statuses"] == {"200": len(weeks)} and one["statuses"] == {"200": len(weeks) // 2},
            f"[{kind}] every free/busy request answered 200 ({many['statuses']}, {one['statuses']})",
        )
        report.check(
            all(not a["calendars"][c].get("errors") for a in answers.values() for c in cal_ids),
            f"[{kind}] no calendar answered with an error",
        )
        # A year of calendar 0 over HTTP, every page.
        year = (T0.isoformat(), (T0 + timedelta(days=365)).isoformat())
        listed = time.perf_counter()
        count = _list_year(http, base, cal_ids[0], *year)
        report.figure(
            f"[{kind}] /api/events?singleEvents=true, calendar 0, one year ({count:,} items)",
            (time.perf_counter() - listed) * 1000,
            "ms",
        )
        rss = [proc_status_kb(pid) for pid in _children(web.pid)]
        report.figure(
            f"[{kind}] largest gunicorn worker RSS after the run ({len(cal_ids)} calendars parsed)",
            max(rss) / 1024,
            "MB",
            baseline=max(rss_start) / 1024,
            baseline_name="the workers at start",
        )
    finally:
        web.stop()
        rt.close()
    if kind == "sqlite":
        _ten_year_series(report, url)


def _ten_year_series(report: Report, url: str) -> None:
    """The one-year listing of the ten-year daily series alone, in a child process (its own peak RSS)."""
    code = f"""
import json, time, resource
from datetime import datetime, timedelta, UTC
from sqlalchemy import select
from calsync.store.db import make_engine, make_sessionmaker
from calsync.store.models import Event
from calsync.readmodels.occurrences import CalendarMirror
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with make_sessionmaker(make_engine({url!r}))() as s:
    row = s.scalars(select(Event.data).where(Event.google_id == "d2016each0")).one()
low = datetime(2026, 6, 1, tzinfo=UTC); high = low + timedelta(days=365)
t = time.perf_counter(); mirror = CalendarMirror([row], "UTC"); cold = mirror.occurrences(low, high)
cold_ms = (time.perf_counter() - t) * 1000
t = time.perf_counter(); warm = [o.item() for o in mirror.occurrences(low + timedelta(days=1), high)]
warm_ms = (time.perf_counter() - t) * 1000
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"n": len(cold), "cold_ms": cold_ms, "warm_ms": warm_ms, "rss_before": before, "rss_after": after}}))
"""
    out = json.loads(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()[-1]
    )
    report.figure(f"one-year window of the ten-year daily series, cold ({out['n']} occurrences)", out["cold_ms"], "ms")
    report.figure("the same, warm (history already expanded), with each item's JSON", out["warm_ms"], "ms")
    report.figure(
        "peak RSS of that process",
        out["rss_after"] / 1024,
        "MB",
        baseline=out["rss_before"] / 1024,
        baseline_name="before the listing",
    )
    report.check(out["n"] == 365, f"the year holds 365 daily occurrences ({out['n']})")


# --- helpers ----------------------------------------------------------------------------------------
def _fill(emu: Any, cal: str, index: int, total: int, series: int) -> None:
    rng = random.Random(index)
    bodies: list[dict[str, Any]] = []
    for n in range(total - series):
        start = T0 + timedelta(days=rng.randrange(-365, 365), hours=rng.randrange(7, 19), minutes=rng.choice([0, 30]))
        if rng.random() < 0.03:
            day = start.date()
            bodies.append(
                {
                    "summary": f"day {n}",
                    "start": {"date": day.isoformat()},
                    "end": {"date": (day + timedelta(days=1)).isoformat()},
                }
            )
            continue
        body = {
            "summary": f"meeting {n}",
            "start": {"dateTime": start.isoformat()},
            "end": {"dateTime": (start + timedelta(minutes=rng.choice([30, 60, 90]))).isoformat()},
        }
        if rng.random() < 0.05:
            body["transparency"] = "transparent"
        bodies.append(body)
    edits: list[tuple[str, datetime, str]] = []
    for n in range(series):
        zone = ZONES[n % len(ZONES)]
        if index == 0 and n == 0:
            start, rule = datetime(2016, 6, 1, 8, 0), "RRULE:FREQ=DAILY"
            event_id = "d2016each0"
        else:
            start = (T0 - timedelta(days=rng.randrange(7, 365))).replace(tzinfo=None, hour=rng.randrange(7, 18))
            days = sorted({DAYS[start.weekday() % 5]} | set(rng.sample(DAYS, rng.randrange(0, 3))), key=DAYS.index)
            if start.weekday() >= 5:
                start += timedelta(days=7 - start.weekday())
                days = sorted({"MO"} | set(days), key=DAYS.index)
            rule = rng.choice(
                [
                    f"RRULE:FREQ=WEEKLY;BYDAY={','.join(days)}",
                    "RRULE:FREQ=DAILY;COUNT=120",
                    f"RRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY={DAYS[start.weekday()]}",
                    f"RRULE:FREQ=MONTHLY;BYDAY=1{DAYS[start.weekday()]}",
                ]
            )
            if rule.startswith("RRULE:FREQ=MONTHLY"):
                start = start.replace(day=1)
                start += timedelta(days=(DAYS.index(rule[-2:]) - start.weekday()) % 7)
            event_id = f"ser{index}q{n}"
        body = {
            "id": event_id,
            "summary": f"series {n}",
            "start": {"dateTime": start.isoformat(), "timeZone": zone},
            "end": {"dateTime": (start + timedelta(minutes=30)).isoformat(), "timeZone": zone},
            "recurrence": [rule],
        }
        bodies.append(body)
        if n % 10 == 1 and "WEEKLY;BYDAY" in rule:
            edits.append((event_id, start + timedelta(days=7), zone))
    rng.shuffle(bodies)
    emu.bulk_insert_events(cal, bodies)
    for k, (event_id, original, zone) in enumerate(edits):
        from zoneinfo import ZoneInfo

        when = original.replace(tzinfo=ZoneInfo(zone)).isoformat()
        if k % 2:
            emu.cancel_instance(cal, event_id, when)
        else:
            moved = original.replace(tzinfo=ZoneInfo(zone)) + timedelta(hours=2)
            emu.patch_instance(
                cal,
                event_id,
                when,
                {
                    "start": {"dateTime": moved.isoformat(), "timeZone": zone},
                    "end": {"dateTime": (moved + timedelta(minutes=45)).isoformat(), "timeZone": zone},
                },
            )


def _body(week: datetime, items: list[dict[str, str]]) -> dict[str, Any]:
    return {"timeMin": week.isoformat(), "timeMax": (week + timedelta(days=7)).isoformat(), "items": items}


def _load(port: int, calls: list[tuple[str, str, Any]], keep: int = 0) -> dict[str, Any]:
    """Send the calls one after another from a child process; latencies, statuses, the first `keep` answers."""
    root = str(Path(__file__).resolve().parents[2])
    code = (
        f"import json,sys; sys.path.insert(0, {root!r}); from tests.bench.bench_freebusy import load_child; "
        "print(json.dumps(load_child(*json.loads(sys.stdin.read()))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([port, calls, keep]),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def load_child(port: int, calls: list[list[Any]], keep: int) -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
    latencies, answers, statuses = [], [], {}  # type: ignore[var-annotated]
    for i, (method, path, body) in enumerate(calls):
        payload = None if body is None else json.dumps(body).encode()
        started = time.perf_counter()
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
        if i < keep:
            answers.append(json.loads(data))
    return {"ms": latencies, "answers": answers, "statuses": statuses}


def _timed(call: Any, weeks: list[datetime]) -> list[float]:
    out = []
    for week in weeks:
        started = time.perf_counter()
        call(week)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _peer(api: EmulatorApi, cal_ids: list[str], week: datetime) -> dict[str, list[Any]]:
    end = week + timedelta(days=7)
    out = {}
    for i, cal in enumerate(cal_ids):
        listing = api.listing(cal, singleEvents="true", timeMin=week.isoformat(), timeMax=end.isoformat())
        out[cal] = busy_from_listing(listing, week, end, ZONES[i % len(ZONES)])
    return out


def _busy(answer: dict[str, Any], cal_ids: list[str]) -> dict[str, list[Any]]:
    return {
        cal: [(isoparse(b["start"]), isoparse(b["end"])) for b in answer["calendars"][cal]["busy"]] for cal in cal_ids
    }


def _list_year(http: requests.Session, base: str, cal: str, low: str, high: str) -> int:
    count, token = 0, None
    while True:
        resp = http.get(
            base + "/api/events",
            timeout=60,
            params={
                "calendar": cal,
                "singleEvents": "true",
                "timeMin": low,
                "timeMax": high,
                "maxResults": "2500",
                **({"pageToken": token} if token else {}),
            },
        )
        resp.raise_for_status()
        count += len(resp.json()["items"])
        token = resp.json()["nextPageToken"]
        if token is None:
            return count


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


if __name__ == "__main__":
    run_main(main, parser(__doc__.splitlines()[0]))
