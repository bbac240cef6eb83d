"""Full-sync ingest: events/s and peak RSS of a large calendar, on SQLite and on PostgreSQL.

The emulator (in this process) holds one calendar of N events. Each measurement runs in a child
process of its own, so its peak RSS (VmHWM) is its own:
  - calsync: `sync_calendar` (events.list pages of 2,500 from the emulator over HTTP, the mirror,
    one transaction per page), at 25% of N and at N, to show memory stays flat as N grows;
  - baseline: a raw DBAPI `executemany` of the same rows into the same `events` table, and of the
    same rows of the change log (one `event.snapshot` row per event, as the first sync writes them)
    into `changes`, one transaction per 2,500 events, the rows already in memory — the database's
    own write speed;
  - gcal-sync: its CalendarEventSyncManager syncing the same calendar from the same emulator into
    its in-memory store (events/s, for comparison; it keeps no diff log and no database).

The calsync sync of N and its baseline run in pairs, each pair in a fresh database, --rounds times:
the machine is shared, and one pair measured while other work comes and goes can be off by a factor
of two either way. Every pair is printed; the figure is the pair with the median ratio.

Targets: calsync events/s >= 0.5 x raw executemany; peak RSS < 200 MB and flat (25% vs 100%).
Correctness: the mirror holds exactly the emulator's events, and the first sync wrote exactly one
snapshot row per event and no other row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import func, select

from tests.bench._common import (
    Deployment,
    Report,
    check_mirrors,
    connect_account,
    database,
    engines,
    event_body,
    parser,
    proc_status_kb,
    start_emulator,
    workdir,
)

CHUNK = 2500


def main(args: Any) -> int:
    report = Report("bench_ingest", args.json)
    total = args.events or (20_000 if args.quick else 100_000)
    small = total // 4
    rounds = args.rounds or (1 if args.quick else 3)
    emu = start_emulator()
    try:
        with workdir("ingest") as work:
            cals = {n: _make_calendar(emu, f"big{n}@example.com", n) for n in (small, total)}
            rows_file = work / "rows.json"
            rows_file.write_text(json.dumps(emu.events(cals[total])))
            token = emu.issue_tokens(cals[total])["access_token"]
            gcal = _child(["gcal", emu.url + "/calendar/v3", cals[total], token])
            for kind in engines(args.db):
                print(f"-- {kind}: {total:,} events, {rounds} round(s)", flush=True)
                small_run: dict[str, Any] = {}
                pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
                copies: list[dict[str, Any]] = []
                for number in range(rounds):
                    with database(kind, work, f"ingest{number}") as url:
                        dep = Deployment(emu, url, work)
                        rt = dep.runtime()
                        wanted = cals if number == 0 else {total: cals[total]}
                        ids = {n: _connect(rt, emu, email) for n, email in wanted.items()}
                        env = dep.env()
                        if number == 0:
                            small_run = _child(["calsync", str(ids[small])], env)
                            check_mirrors(report, rt, emu, [cals[small]])
                        pairs.append(
                            (
                                _child(["calsync", str(ids[total])], env),
                                _child(["raw", str(rows_file), str(ids[total])], env),
                            )
                        )
                        if kind == "postgresql":
                            copies.append(_child(["raw", str(rows_file), str(ids[total]), "copy"], env))
                        _check_big(report, rt, emu, cals[total], ids[total])
                        rt.close()
                    big_run, raw = pairs[-1]
                    report.note(
                        f"[{kind}] round {number + 1}: calsync {_rate(big_run):,.0f} events/s "
                        f"({big_run['seconds']:.1f}s), raw executemany {_rate(raw):,.0f} events/s "
                        f"({raw['seconds']:.1f}s), ratio {_rate(big_run) / _rate(raw):.2f}"
                        + (f"; raw COPY {_rate(copies[-1]):,.0f} events/s" if copies else "")
                    )
                median = sorted(range(rounds), key=lambda n: _rate(pairs[n][0]) / _rate(pairs[n][1]))[rounds // 2]
                big_run, raw = pairs[median]
                peak_kb = max(run["maxrss_kb"] for run, _ in pairs)  # memory: the worst round, not the median
                _report(report, kind, total, small, small_run, big_run, raw, gcal, peak_kb)
                if copies:
                    report.figure(
                        f"[{kind}] calsync vs a raw COPY of the same rows (calsync writes with COPY here; "
                        "median round)",
                        _rate(big_run),
                        "events/s",
                        baseline=_rate(copies[median]),
                        baseline_name="raw COPY",
                    )
    finally:
        emu.stop()
    return report.finish()


def _connect(rt: Any, emu: Any, email: str) -> int:
    from calsync.sync.calendar_list import refresh_calendar_list

    refresh_calendar_list(rt, connect_account(rt, emu, email))
    return _calendar_row(rt, email)


def _rate(run: dict[str, Any]) -> float:
    return float(run["events"]) / float(run["seconds"])


def _report(
    report: Report,
    kind: str,
    total: int,
    small: int,
    small_run: dict[str, Any],
    big_run: dict[str, Any],
    raw: dict[str, Any],
    gcal: dict[str, Any],
    peak_kb: int,
) -> None:
    rate = _rate(big_run)
    raw_rate = _rate(raw)
    report.figure(
        f"[{kind}] calsync full sync of {total:,} events (median round)",
        rate,
        "events/s",
        baseline=raw_rate,
        baseline_name="raw executemany",
        target=">= 0.5",
        met=rate >= 0.5 * raw_rate,
    )
    report.figure(
        f"[{kind}] calsync full sync of {small:,} events", small_run["events"] / small_run["seconds"], "events/s"
    )
    report.figure(
        f"[{kind}] gcal-sync (in-memory store, same emulator) {total:,} events",
        gcal["events"] / gcal["seconds"],
        "events/s",
        baseline=rate,
        baseline_name="calsync",
    )
    big_mb, small_mb = peak_kb / 1024, small_run["maxrss_kb"] / 1024
    report.figure(
        f"[{kind}] calsync peak RSS at {total:,} events",
        big_mb,
        "MB",
        baseline=small_mb,
        baseline_name=f"at {small:,}",
        target="< 200 MB and flat (ratio <= 1.25)",
        met=big_mb < 200 and big_mb <= 1.25 * small_mb,
    )
    report.figure(f"[{kind}] peak RSS of the raw executemany child (rows in memory)", raw["maxrss_kb"] / 1024, "MB")
    report.figure(f"[{kind}] gcal-sync peak RSS at {total:,} events", gcal["maxrss_kb"] / 1024, "MB")
    report.note(
        f"[{kind}] calsync {big_run['pages']} pages in {big_run['seconds']:.1f}s; "
        f"raw executemany {raw['seconds']:.1f}s; gcal-sync {gcal['seconds']:.1f}s"
    )


def _make_calendar(emu: Any, email: str, n: int) -> str:
    emu.create_user(email)
    for start in range(0, n, 10_000):
        emu.bulk_insert_events(email, [event_body(i, day=i % 365) for i in range(start, min(n, start + 10_000))])
    return email


def _calendar_row(rt: Any, google_id: str) -> int:
    from calsync.store.models import Calendar

    with rt.sessions() as session:
        return int(session.scalar(select(Calendar.id).where(Calendar.google_id == google_id)))


def _check_big(report: Report, rt: Any, emu: Any, google_id: str, cal_id: int) -> None:
    """Every event id and etag of the big calendar matches the emulator (full JSON compare is slow at 100k)."""
    from calsync.store.models import Change, Event

    with rt.sessions() as session:
        mirrored = dict(session.execute(select(Event.google_id, Event.etag).where(Event.calendar_id == cal_id)).all())
        feed = dict(
            session.execute(
                select(Change.event_id, Change.after["etag"].as_string()).where(
                    Change.calendar_id == cal_id, Change.type == "event.snapshot"
                )
            ).all()
        )
        changes = session.scalar(
            select(func.count()).select_from(Change).where(Change.calendar_id == cal_id, Change.type.like("event.%"))
        )
    google = {e["id"]: e["etag"] for e in emu.events(google_id)}
    report.check(
        mirrored == google,
        f"big calendar: {len(mirrored):,} mirrored events == {len(google):,} in Google (ids and etags)",
    )
    report.check(
        feed == mirrored and changes == len(mirrored),
        f"the first sync wrote one snapshot row per event ({changes:,} rows), and the feed's etags are the mirror's",
    )


def _child(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env, timeout=3600
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed:\n{out.stderr[-3000:]}")
    return cast("dict[str, Any]", json.loads(out.stdout.strip().splitlines()[-1]))


# Children ------------------------------------------------------------------------------------------
def _child_calsync(calendar_id: str) -> dict[str, Any]:
    from calsync.config import Settings
    from calsync.runtime import Runtime
    from calsync.sync.run import sync_calendar

    rt = Runtime.create(Settings.from_env())
    started = time.perf_counter()
    result = sync_calendar(rt, int(calendar_id))
    seconds = time.perf_counter() - started
    rt.close()
    return {"events": result.events_seen, "pages": result.pages, "seconds": seconds}


def _child_raw(rows_file: str, calendar_id: str, how: str = "executemany") -> dict[str, Any]:
    """The same rows, the same table, the same engine: the driver's executemany, nothing else.

    With `how="copy"` (PostgreSQL only), the same rows through COPY, as calsync itself writes them
    there: shown next to the target's baseline, not instead of it.
    """
    from calsync.config import Settings
    from calsync.store.db import make_engine
    from calsync.sync.diff import event_time_text

    settings = Settings.from_env()
    items = json.loads(Path(rows_file).read_text())
    sqlite = settings.is_sqlite
    engine = make_engine(settings.database_url)
    mark = "?" if sqlite else "%s"
    data_mark = mark if sqlite else "%s::jsonb"
    columns = 'calendar_id, google_id, status, etag, updated, recurring_event_id, start, "end", data, seen_gen'
    sql = f"INSERT INTO events ({columns}) VALUES ({', '.join([mark] * 8)}, {data_mark}, {mark})"
    cal = -int(calendar_id)  # a calendar row of its own so the unique key does not collide
    rows = [
        (
            cal,
            i["id"],
            i.get("status", "confirmed"),
            i.get("etag"),
            i.get("updated"),
            i.get("recurringEventId"),
            event_time_text(i.get("start")),
            event_time_text(i.get("end")),
            json.dumps(i),
            1,
        )
        for i in items
    ]
    # The change log's rows of the same events: seqs of their own, far above calsync's.
    change_columns = "seq, type, calendar_id, event_id, fields, before, after, detected_at"
    now = datetime.now(UTC).replace(tzinfo=None) if sqlite else datetime.now(UTC)
    change_rows = [
        (10**12 + n, "event.snapshot", cal, i["id"], "[]", None, json.dumps(i), now) for n, i in enumerate(items)
    ]
    change_marks = [mark] * 4 + [data_mark] * 3 + [mark]
    change_sql = f"INSERT INTO changes ({change_columns}) VALUES ({', '.join(change_marks)})"
    conn = engine.raw_connection()
    cur = conn.cursor()
    if sqlite:
        cur.execute("PRAGMA foreign_keys=OFF")
    else:
        cur.execute("SET session_replication_role = replica")  # no FK check against the fake calendar id
        conn.commit()
    started = time.perf_counter()
    for start in range(0, len(rows), CHUNK):
        if how == "copy":
            with cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
                for row in rows[start : start + CHUNK]:
                    copy.write_row(row)
            with cur.copy(f"COPY changes ({change_columns}) FROM STDIN") as copy:
                for change in change_rows[start : start + CHUNK]:
                    copy.write_row(change)
            conn.commit()
            continue
        if sqlite:
            cur.execute("BEGIN IMMEDIATE")
        cur.executemany(sql, rows[start : start + CHUNK])
        cur.executemany(change_sql, change_rows[start : start + CHUNK])
        if sqlite:
            cur.execute("COMMIT")
        else:
            conn.commit()
    seconds = time.perf_counter() - started
    cur.execute("DELETE FROM events WHERE calendar_id = " + str(cal))
    cur.execute("DELETE FROM changes WHERE calendar_id = " + str(cal))
    if sqlite:
        pass
    else:
        conn.commit()
    conn.close()
    engine.dispose()
    return {"events": len(rows), "seconds": seconds}


def _child_gcal(host: str, calendar_id: str, token: str) -> dict[str, Any]:
    import asyncio

    import aiohttp
    from gcal_sync.api import GoogleCalendarService
    from gcal_sync.auth import AbstractAuth
    from gcal_sync.store import InMemoryCalendarStore
    from gcal_sync.sync import CalendarEventSyncManager

    class _Auth(AbstractAuth):
        async def async_get_access_token(self) -> str:
            return token

    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            store = InMemoryCalendarStore()
            manager = CalendarEventSyncManager(
                GoogleCalendarService(_Auth(session, host)), calendar_id=calendar_id, store=store
            )
            started = time.perf_counter()
            await manager.run()
            seconds = time.perf_counter() - started
            data = await store.async_load() or {}
            items = sum(len(v.get("items", {})) for v in data.get("event_sync", {}).values())
            return {"events": items, "seconds": seconds}

    return asyncio.run(run())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        children: dict[str, Callable[..., dict[str, Any]]] = {
            "calsync": _child_calsync,
            "raw": _child_raw,
            "gcal": _child_gcal,
        }
        result = children[kind](*rest)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so a child would report the
        # parent's peak (the emulator's 100,000 events) instead of its own.
        result["maxrss_kb"] = proc_status_kb(os.getpid(), "VmHWM")
        print(json.dumps(result))
        sys.exit(0)
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=None, help="events in the big calendar (default 100,000)")
    p.add_argument(
        "--rounds", type=int, default=None, help="calsync/baseline pairs per engine (default 3, 1 with --quick)"
    )
    args = p.parse_args()
    sys.exit(main(args))
