"""Kill the syncing process at random instants while Google keeps changing: nothing may be lost and
nothing written twice. The child (tests/sync/crash_child.py) runs calsync's real sync in a loop; this
process hosts the emulator, edits the calendar from a thread, and SIGKILLs the child again and again.

Every edit touches an event (or occurrence) no other edit touches and sets a unique summary, so no two
edits can merge into one observed change: the diff log must hold each of them exactly once.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.sync_support import (
    calendar_row_id,
    changes,
    connect_account,
    google_view,
    mirror,
)

pytestmark = pytest.mark.slow

ALICE = "alice@example.com"
KILLS = 20
PAGE_SIZE = 50
SINGLE_EVENTS = 600
SERIES = 3
CHILD = Path(__file__).with_name("crash_child.py")

Expected = tuple[str, str, str | None, tuple[str, ...]]


class Editor(threading.Thread):
    """Edits the calendar the way people do, at a steady pace with bursts, keeping a ledger."""

    def __init__(self, emu: Any, cal: str, singles: list[str], occurrences: list[tuple[str, str]],
                 rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.emu, self.cal, self.rng = emu, cal, rng
        self.singles, self.occurrences = singles, occurrences
        self.expected: list[Expected] = []
        self.stop = threading.Event()
        self.burst = threading.Event()
        self.error: BaseException | None = None
        self._n = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.burst.is_set():
                    self.burst.clear()
                    for _ in range(self.rng.randint(55, 120)):  # more than a page: a multi-page incremental
                        self.edit_once()
                else:
                    self.edit_once()
                time.sleep(self.rng.uniform(0.01, 0.06))
        except BaseException as err:  # surfaced by the test after join()
            self.error = err

    def edit_once(self) -> None:
        self._n += 1
        label = f"v{self._n}"
        choices = ["create"]
        if len(self.singles) > 5:
            choices += ["edit", "edit", "delete"]
        if self.occurrences:
            choices += ["modify occurrence", "cancel occurrence"]
        action = self.rng.choice(choices)
        if action == "create":
            body = {"summary": f"new {label}", "start": {"dateTime": "2026-03-01T10:00:00Z"},
                    "end": {"dateTime": "2026-03-01T11:00:00Z"}}
            created = self.emu.insert_event(self.cal, body)
            self.expected.append(("created", created["id"], f"new {label}", ()))
        elif action == "edit":
            event_id = self.singles.pop(self.rng.randrange(len(self.singles)))
            self.emu.patch_event(self.cal, event_id, {"summary": f"edit {label}"})
            self.expected.append(("updated", event_id, f"edit {label}", ("summary",)))
        elif action == "delete":
            event_id = self.singles.pop(self.rng.randrange(len(self.singles)))
            self.emu.delete_event(self.cal, event_id)
            self.expected.append(("deleted", event_id, None, ()))
        else:
            series_id, original = self.occurrences.pop(self.rng.randrange(len(self.occurrences)))
            if action == "modify occurrence":
                done = self.emu.patch_instance(self.cal, series_id, original, {"summary": f"moved {label}"})
                self.expected.append(("updated", done["id"], f"moved {label}", ("summary",)))
            else:
                done = self.emu.cancel_instance(self.cal, series_id, original)
                self.expected.append(("deleted", done["id"], None, ()))


class Child:
    """tests/sync/crash_child.py: imports calsync once, then forks a syncing process per `start()`."""

    def __init__(self, env: dict[str, str], calendar_id: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(calendar_id), str(PAGE_SIZE)],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.last = ""
        self.pid = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("ready", 1, timeout=60)
        assert self.last == "ready", "the child did not start"

    def start(self) -> None:
        """Fork a new syncing process (the previous one is dead)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.wait_for("pid", 1, timeout=10)
        self.pid = int(self.last.split()[1])

    def wait_for(self, prefix: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count and time.monotonic() < deadline:
            try:
                self.last = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if self.last.startswith(("error", "dead")):
                raise AssertionError(f"the syncing process died on its own: {self.last}")
            if self.last.startswith(prefix):
                seen += 1

    def kill(self) -> bool:
        """SIGKILL the syncing process; True when it was inside a sync (past "begin", before "end")."""
        os.kill(self.pid, signal.SIGKILL)
        was = self.last
        while True:
            line = self.lines.get(timeout=10)
            if line.startswith("dead"):
                return was.startswith(("begin", "page"))
            if line.startswith("error"):
                raise AssertionError(f"the syncing process failed: {line}")
            was = line

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CALSYNC_DATABASE_URL": settings.database_url,
        "CALSYNC_GOOGLE_CLIENT_SECRETS": str(settings.google_client_secrets),
        "CALSYNC_GOOGLE_API_URL": settings.google_api_url,
        "CALSYNC_PUBLIC_URL": settings.public_url,
        "CALSYNC_TOKEN_KEY": str(settings.token_key),
    })
    return env


def test_killing_the_sync_at_random_instants_loses_and_duplicates_nothing(
        runtime: Runtime, settings: Settings, emu: Any) -> None:
    seed = int(os.environ.get("CALSYNC_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    account_id = connect_account(runtime, emu, ALICE)
    cal = emu.create_calendar(ALICE, "Busy")
    emu.bulk_insert_events(cal, [{"summary": f"event {i}", "start": {"dateTime": "2026-02-01T10:00:00Z"},
                                  "end": {"dateTime": "2026-02-01T11:00:00Z"}} for i in range(SINGLE_EVENTS)])
    singles = [e["id"] for e in emu.events(cal)]
    occurrences: list[tuple[str, str]] = []
    for s in range(SERIES):
        series = emu.insert_event(cal, {
            "summary": f"series {s}", "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=40"],
            "start": {"dateTime": f"2026-01-0{5 + s}T09:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": f"2026-01-0{5 + s}T09:30:00+01:00", "timeZone": "Europe/Berlin"}})
        first = datetime(2026, 1, 5 + s, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
        occurrences += [(series["id"], (first + timedelta(weeks=w)).isoformat()) for w in range(40)]
    refresh_calendar_list(runtime, account_id)
    cal_id = calendar_row_id(runtime, cal)
    child = Child(child_env(settings), cal_id)
    editor = Editor(emu, cal, singles, occurrences, rng)
    mid_sync = 0
    try:
        assert sync_calendar(runtime, cal_id, page_size=PAGE_SIZE).kind == "full"
        editor.start()
        started = time.monotonic()
        for kill in range(KILLS):
            child.start()
            if kill % 4 == 1:
                editor.burst.set()
            if kill % 6 == 3:
                emu.invalidate_sync_tokens(cal)  # the next sync is a 410 resync of every page
            child.wait_for("page", rng.randint(0, 4), timeout=1.0)
            time.sleep(rng.uniform(0, 0.1))  # anywhere in a page: fetch, transaction, commit
            mid_sync += child.kill()
    finally:
        child.close()
        editor.stop.set()
        if editor.is_alive():
            editor.join(timeout=10)
    assert editor.error is None, editor.error
    elapsed = time.monotonic() - started

    # A clean run finishes the job; a second one must find nothing left to do.
    sync_calendar(runtime, cal_id, page_size=PAGE_SIZE)
    final = sync_calendar(runtime, cal_id, page_size=PAGE_SIZE)
    assert (final.created, final.updated, final.deleted) == (0, 0, 0)

    context = f"seed={seed} kills={KILLS} mid_sync={mid_sync} edits={len(editor.expected)} {elapsed:.1f}s"
    assert mid_sync >= KILLS // 3, context
    assert mirror(runtime, cal_id) == google_view(emu, cal), context
    logged = changes(runtime, cal_id)
    actual = sorted((c.kind, c.event_id, (c.after or {}).get("summary"), tuple(c.fields)) for c in logged)
    assert actual == sorted(editor.expected), context
    every = changes(runtime, lifecycle=True)  # with the calendars' added and synced rows
    assert [c.seq for c in every] == list(range(1, len(every) + 1)), context
