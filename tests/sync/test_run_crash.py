"""Kill the syncing process at random instants while Google keeps changing: nothing may be lost and
nothing written twice. The child (tests/sync/crash_child.py) runs calsync's real sync in a loop; this
process hosts the emulator, edits the calendar from a thread, and SIGKILLs the child again and again.

Every edit touches an event (or occurrence) no other edit touches and sets a unique summary, so no two
edits can merge into one observed change: the diff log must hold each of them exactly once.
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import SyncKind, sync_calendar
from tests.sync.crash_support import Child, child_env
from tests.sync_support import (
    assert_feed_rebuilds_mirror,
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

Expected = tuple[str, str, str | None, tuple[str, ...]]


class Editor(threading.Thread):
    """Edits the calendar the way people do, at a steady pace with bursts, keeping a ledger."""

    def __init__(
        self, emu: Any, cal: str, singles: list[str], occurrences: list[tuple[str, str]], rng: random.Random
    ) -> None:
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
            body = {
                "summary": f"new {label}",
                "start": {"dateTime": "2026-03-01T10:00:00Z"},
                "end": {"dateTime": "2026-03-01T11:00:00Z"},
            }
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
                self.expected.append(("cancelled", done["id"], None, ()))


def test_killing_the_sync_at_random_instants_loses_and_duplicates_nothing(
    runtime: Runtime, settings: Settings, emu: Any
) -> None:
    seed = int(os.environ.get("CALSYNC_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    account_id = connect_account(runtime, emu, ALICE)
    cal = emu.create_calendar(ALICE, "Busy")
    emu.bulk_insert_events(
        cal,
        [
            {
                "summary": f"event {i}",
                "start": {"dateTime": "2026-02-01T10:00:00Z"},
                "end": {"dateTime": "2026-02-01T11:00:00Z"},
            }
            for i in range(SINGLE_EVENTS)
        ],
    )
    singles = [e["id"] for e in emu.events(cal)]
    occurrences: list[tuple[str, str]] = []
    for s in range(SERIES):
        series = emu.insert_event(
            cal,
            {
                "summary": f"series {s}",
                "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=40"],
                "start": {"dateTime": f"2026-01-0{5 + s}T09:00:00+01:00", "timeZone": "Europe/Berlin"},
                "end": {"dateTime": f"2026-01-0{5 + s}T09:30:00+01:00", "timeZone": "Europe/Berlin"},
            },
        )
        first = datetime(2026, 1, 5 + s, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
        occurrences += [(series["id"], (first + timedelta(weeks=w)).isoformat()) for w in range(40)]
    refresh_calendar_list(runtime, account_id)
    cal_id = calendar_row_id(runtime, cal)
    child = Child(child_env(settings), cal_id, PAGE_SIZE)
    editor = Editor(emu, cal, singles, occurrences, rng)
    mid_sync = 0
    try:
        assert sync_calendar(runtime, cal_id, page_size=PAGE_SIZE).kind == SyncKind.FULL
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
    assert_feed_rebuilds_mirror(runtime, cal_id)
    logged = changes(runtime, cal_id)
    snapshots = [c for c in logged if c.kind == "snapshot"]
    assert len(snapshots) == SINGLE_EVENTS + SERIES and snapshots == logged[: len(snapshots)], context
    actual = sorted(_observed(c) for c in logged[len(snapshots) :])
    assert actual == sorted(editor.expected), context
    every = changes(runtime, lifecycle=True)  # with the calendars' added and synced rows
    assert [c.seq for c in every] == list(range(1, len(every) + 1)), context


def _observed(change: Any) -> Expected:
    """A row as the ledger writes it; an occurrence updated to cancelled is its cancellation."""
    after = change.after or {}
    if change.kind == "updated" and after.get("status") == "cancelled":
        return ("cancelled", change.event_id, None, ())
    return (change.kind, change.event_id, after.get("summary"), tuple(change.fields))
