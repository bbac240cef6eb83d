"""Ingest with webhook subscriptions: an incremental sync of N edited events while three `*`
subscriptions listen, on the code before webhooks followed the feed with a cursor and on this tree,
run side by side in the same run.

Before, the feed's writer queued one delivery per subscription inside each sync page's commit; now
the sync writes only the feed, and the worker's next pass moves each subscription's cursor over the
new rows and queues the deliveries. Both trees run the same steps in a child process of their own
(`PYTHONPATH` names the tree), against the same emulator, in a fresh database per round:
  1. connect the account, first sync, then three `*` subscriptions (no endpoint is called);
  2. the parent edits every event in the emulator;
  3. timed: the incremental sync (`sync_calendar`), then, timed apart, queuing the deliveries
     (the cursor's pass; nothing to do before, where the sync queued them itself).
Correctness: each tree ends with exactly 3 x N deliveries, one per subscription and change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[2]
# A child measures the tree it is given (calsync and tests.bench._common from there).
sys.path.insert(0, os.environ.get("CALSYNC_BENCH_TREE", str(ROOT)))

from tests.bench._common import (  # noqa: E402
    Deployment,
    Report,
    database,
    engines,
    event_body,
    parser,
    run_main,
    start_emulator,
    workdir,
)

SUBSCRIPTIONS = 3
EMAIL = "busy@example.com"
CURSOR_MIGRATION = "0004_webhook_cursor.py"


def main(args: Any) -> int:
    if args.child:
        print(json.dumps(_child(args.child)))
        return 0
    report = Report("bench_feed_consumers", args.json)
    total = args.events or (2_000 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 3)
    old_rev = args.old or _commit_before_cursor()
    emu = start_emulator()
    try:
        with workdir("consumers") as work, tempfile.TemporaryDirectory(prefix="calsync-old-") as old:
            subprocess.run(
                f"git -C {ROOT} archive {old_rev} calsync tests alembic | tar -x -C {old}", shell=True, check=True
            )
            trees = {"before": Path(old), "after": ROOT}
            emu.create_user(EMAIL)
            emu.bulk_insert_events(EMAIL, [event_body(i, day=i % 365) for i in range(total)])
            for kind in engines(args.db):
                runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
                for number in range(rounds):
                    for label, tree in trees.items():
                        with database(kind, work, f"consumers_{label}{number}") as url:
                            dep = Deployment(emu, url, work)
                            _connect(dep, emu)
                            env = dep.env()
                            _run_child(["first", EMAIL], env, tree)
                            for item in emu.events(EMAIL):
                                emu.patch_event(EMAIL, item["id"], {"summary": f"{label} {number} {item['id']}"})
                            run = _run_child(["edit", EMAIL], env, tree)
                            runs[label].append(run)
                            report.check(
                                run["deliveries"] == SUBSCRIPTIONS * total and run["changes"] == total,
                                f"[{kind}] {label} round {number + 1}: {run['changes']:,} changes, "
                                f"{run['deliveries']:,} deliveries (want {SUBSCRIPTIONS} x {total:,})",
                            )
                _report(report, kind, total, runs)
    finally:
        emu.stop()
    return report.finish()


def _report(report: Report, kind: str, total: int, runs: dict[str, list[dict[str, Any]]]) -> None:
    def median(label: str, key: str) -> float:
        values = sorted(float(r[key]) for r in runs[label])
        return values[len(values) // 2]

    before_sync, after_sync = median("before", "sync_seconds"), median("after", "sync_seconds")
    before_all = median("before", "sync_seconds") + median("before", "queue_seconds")
    after_all = median("after", "sync_seconds") + median("after", "queue_seconds")
    report.figure(
        f"[{kind}] incremental sync of {total:,} edited events with {SUBSCRIPTIONS} subscriptions (median)",
        total / after_sync,
        "changes/s",
        baseline=total / before_sync,
        baseline_name="queued in the sync's commit",
    )
    report.figure(
        f"[{kind}] the same, plus queuing every delivery (the cursor's pass)",
        total / after_all,
        "changes/s",
        baseline=total / before_all,
        baseline_name="queued in the sync's commit",
    )
    report.note(
        f"[{kind}] rows written in the sync's commits: before {SUBSCRIPTIONS + 1} per change, after 1 per change; "
        f"queue pass after: {median('after', 'queue_seconds'):.2f}s"
    )


def _connect(dep: Deployment, emu: Any) -> None:
    """The account and its calendar list, as a consent leaves them (the same tables in both trees)."""
    from calsync.sync.calendar_list import refresh_calendar_list
    from tests.bench._common import connect_account

    rt = dep.runtime()
    try:
        refresh_calendar_list(rt, connect_account(rt, emu, EMAIL))
    finally:
        rt.close()


def _run_child(argv: list[str], env: dict[str, str], tree: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *argv],
        capture_output=True,
        text=True,
        env={**env, "CALSYNC_BENCH_TREE": str(tree)},
        timeout=3600,
        cwd=tree,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed in {tree}:\n{out.stderr[-3000:]}")
    return cast("dict[str, Any]", json.loads(out.stdout.strip().splitlines()[-1]))


def _commit_before_cursor() -> str:
    """The parent of the commit that gave subscriptions their cursor: the design measured against."""
    added = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "alembic/versions/0004_webhook_cursor.py",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return f"{added[-1]}^"


# The child, run in the tree under test ---------------------------------------------------------
def _child(argv: list[str]) -> dict[str, Any]:
    from sqlalchemy import func, select

    from calsync.config import Settings
    from calsync.runtime import Runtime
    from calsync.store.db import transaction
    from calsync.store.models import Calendar, Change, Delivery
    from calsync.sync.run import sync_calendar
    from calsync.webhooks.subscriptions import SubscriptionSpec, add_subscription

    step, email = argv
    rt = Runtime.create(Settings.from_env())
    try:
        with rt.sessions() as session:
            cal_id = session.scalar(select(Calendar.id).where(Calendar.google_id == email))
        if step == "first":
            sync_calendar(rt, int(cal_id or 0))
            with transaction(rt.sessions) as session:
                for n in range(SUBSCRIPTIONS):
                    spec = SubscriptionSpec(url=f"https://hooks{n}.example.com/calsync", events=["*"], calendars=None)
                    add_subscription(session, rt.cipher, spec, rt.clock.now())
            return {}
        started = time.perf_counter()
        sync_calendar(rt, int(cal_id or 0))
        sync_seconds = time.perf_counter() - started
        started = time.perf_counter()
        try:
            from calsync.webhooks.outbox import fill  # type: ignore[attr-defined,unused-ignore]
        except ImportError:  # before: the sync queued them itself
            pass
        else:
            while True:
                with transaction(rt.sessions) as session:
                    if not fill(session, rt.clock.now()):
                        break
        queue_seconds = time.perf_counter() - started
        with rt.sessions() as session:
            changes = session.scalar(select(func.count()).select_from(Change).where(Change.type == "event.updated"))
            deliveries = session.scalar(select(func.count()).select_from(Delivery))
        return {
            "sync_seconds": sync_seconds,
            "queue_seconds": queue_seconds,
            "changes": int(changes or 0),
            "deliveries": int(deliveries or 0),
        }
    finally:
        rt.close()


if __name__ == "__main__":
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=0, help="events in the calendar (default 10,000; --quick 2,000)")
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--old", default="", help="the commit to compare with (default: the one before the cursor)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    run_main(main, p)
