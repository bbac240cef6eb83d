"""The feed alone rebuilds the mirror: hypothesis writes programs of edits, 410s, resyncs and SIGKILLs.

Each example is a calendar of its own. Its program edits it in the emulator (single events, weekly
series, moved and cancelled occurrences, series edits and deletions, noise-only writes), writes to
it through calsync (creations retried with their key, patches with a fresh or a stale If-Match,
deletions, an occurrence moved by its instance id), expires its
sync tokens, syncs it in this process, forces a full resync (as reconciliation does), or starts the
real sync in a child process and SIGKILLs it at a random moment, the first sync included. Once the
program ends and one clean sync has run, the feed folded from its start must equal the mirror, the
mirror must equal what the emulator holds, and no version may be missing or repeated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from calsync.config import Settings
from calsync.errors import WriteConflict
from calsync.runtime import Runtime
from calsync.store.models import Calendar as CalendarRow
from calsync.sync import writes
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.sync.crash_support import Child, child_env
from tests.sync_support import (
    WRITER,
    assert_feed_rebuilds_mirror,
    calendar_row_id,
    changes,
    connect_account,
    google_view,
    mirror,
)

pytestmark = pytest.mark.slow

ALICE = "fold@example.com"
PAGE_SIZE = 7
WEEKS = 8
ACTIONS = (
    "create",
    "edit",
    "delete",
    "touch",
    "series",
    "move occurrence",
    "cancel occurrence",
    "edit series",
    "delete series",
    "api create",
    "api edit",
    "api delete",
    "api move occurrence",
    "expire tokens",
    "sync",
    "resync",
    "kill",
    "kill",
    "kill",
)
FOLD = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def account(runtime: Runtime, emu: Any) -> int:
    return connect_account(runtime, emu, ALICE, scopes=WRITER)


@pytest.fixture
def child(settings: Settings, account: int) -> Iterator[Child]:
    """One syncing child for the whole test: it forks a process per kill round, of any calendar."""
    proc = Child(child_env(settings), 0, PAGE_SIZE)
    yield proc
    proc.close()


class Calendar:
    """One example's calendar in the emulator, and the ids a program can still act on."""

    def __init__(self, emu: Any, google_id: str, rng: random.Random) -> None:
        self.emu, self.id, self.rng = emu, google_id, rng
        self.singles: list[str] = []
        self.series: dict[str, list[str]] = {}  # series id → original starts not yet touched
        self.n = 0

    def label(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def create(self) -> None:
        day = self.rng.randint(1, 28)
        event = self.emu.insert_event(
            self.id,
            {
                "summary": f"single {self.label()}",
                "start": {"dateTime": f"2026-03-{day:02d}T10:00:00Z"},
                "end": {"dateTime": f"2026-03-{day:02d}T11:00:00Z"},
            },
        )
        self.singles.append(event["id"])

    def add_series(self) -> None:
        first = self.rng.randint(1, 4)
        series = self.emu.insert_event(
            self.id,
            {
                "summary": f"series {self.label()}",
                "recurrence": [f"RRULE:FREQ=WEEKLY;COUNT={WEEKS}"],
                "start": {"dateTime": f"2026-06-0{first}T09:00:00+02:00", "timeZone": "Europe/Berlin"},
                "end": {"dateTime": f"2026-06-0{first}T09:30:00+02:00", "timeZone": "Europe/Berlin"},
            },
        )
        start = datetime(2026, 6, first, 7, 0, tzinfo=UTC)
        self.series[series["id"]] = [(start + timedelta(weeks=w)).strftime("%Y-%m-%dT%H:%M:%SZ") for w in range(WEEKS)]

    def write(self, runtime: Runtime, calendar_id: int, action: str) -> None:
        """The same kinds of change made through calsync's API: read-your-writes, no echo."""
        rng = self.rng
        if action == "api create" or (action in ("api edit", "api delete") and not self.singles):
            day, key = rng.randint(1, 28), self.label()
            body = {
                "summary": f"api {key}",
                "start": {"dateTime": f"2026-03-{day:02d}T14:00:00Z"},
                "end": {"dateTime": f"2026-03-{day:02d}T15:00:00Z"},
            }
            made = writes.create_event(runtime, calendar_id, body, idempotency_key=key)
            if rng.random() < 0.5:  # the app retries: the same event, nothing sent
                assert writes.create_event(runtime, calendar_id, body, idempotency_key=key).seq == made.seq
            assert made.event is not None
            self.singles.append(made.event["id"])
        elif action == "api edit":
            event_id = rng.choice(self.singles)
            current = next(e for e in self.emu.events(self.id) if e["id"] == event_id)
            etag = current["etag"] if rng.random() < 0.7 else '"stale"'
            try:
                writes.patch_event(runtime, calendar_id, event_id, {"summary": f"api {self.label()}"}, if_match=etag)
            except WriteConflict:
                assert etag == '"stale"'
        elif action == "api delete":
            writes.delete_event(runtime, calendar_id, self.singles.pop(rng.randrange(len(self.singles))))
        elif not any(self.series.values()):
            self.add_series()
        else:  # api move occurrence, by its instance id
            series_id = rng.choice([s for s, left in self.series.items() if left])
            original = self.series[series_id].pop(rng.randrange(len(self.series[series_id])))
            instance = f"{series_id}_{original.replace('-', '').replace(':', '')}"
            writes.patch_event(runtime, calendar_id, instance, {"summary": f"api moved {self.label()}"})

    def act(self, action: str) -> None:
        rng = self.rng
        if action == "create" or (action in ("edit", "delete", "touch") and not self.singles):
            self.create()
        elif action == "edit":
            self.emu.patch_event(self.id, rng.choice(self.singles), {"summary": f"edited {self.label()}"})
        elif action == "touch":  # a write that changes no field: etag and updated move
            event_id = rng.choice(self.singles)
            summary = next(e for e in self.emu.events(self.id) if e["id"] == event_id)["summary"]
            self.emu.patch_event(self.id, event_id, {"summary": summary})
        elif action == "delete":
            self.emu.delete_event(self.id, self.singles.pop(rng.randrange(len(self.singles))))
        elif action == "series" or not any(self.series.values()):
            self.add_series()
        elif action in ("move occurrence", "cancel occurrence"):
            series_id = rng.choice([s for s, left in self.series.items() if left])
            original = self.series[series_id].pop(rng.randrange(len(self.series[series_id])))
            if action == "cancel occurrence":
                self.emu.cancel_instance(self.id, series_id, original)
            else:
                self.emu.patch_instance(self.id, series_id, original, {"summary": f"moved {self.label()}"})
        elif action == "edit series":
            self.emu.patch_event(self.id, rng.choice(list(self.series)), {"location": f"room {self.label()}"})
        else:  # delete series
            series_id = rng.choice(list(self.series))
            del self.series[series_id]
            self.emu.delete_event(self.id, series_id)


def kill_mid_sync(runtime: Runtime, child: Child, calendar_id: int, rng: random.Random) -> None:
    """Start the real sync in a process of its own and SIGKILL it after a few pages, or before any."""
    child.start(calendar_id)
    child.wait_for("page", rng.randint(0, 3), timeout=2.0)
    time.sleep(rng.uniform(0, 0.03))
    inside = child.kill()
    with runtime.sessions() as session:
        first_done = session.get_one(CalendarRow, calendar_id).baseline_done
    if not first_done and changes(runtime, calendar_id):
        event("killed in the first sync, some of it stored")
    elif inside:
        event("killed in a later sync")


def assert_no_version_lost_or_repeated(runtime: Runtime, calendar_id: int) -> None:
    """Per event, each row moves the event to a version it was not in: none is written twice."""
    current: dict[str, dict[str, Any] | None] = {}
    seqs = [c.seq for c in changes(runtime, calendar_id)]
    assert seqs == sorted(set(seqs))
    for change in changes(runtime, calendar_id):
        assert change.event_id is not None
        before = current.get(change.event_id)
        if change.kind == "snapshot":
            assert change.event_id not in current, f"seq {change.seq}: a second snapshot of {change.event_id}"
        elif change.kind == "created":
            assert before is None, f"seq {change.seq}: created {change.event_id}, which the feed holds"
        elif change.kind == "deleted":
            assert before is not None and change.before == before, f"seq {change.seq}: deleted {change.event_id}"
        else:
            assert change.after != before, f"seq {change.seq}: {change.event_id} updated to the version it had"
            if before is not None:
                assert change.before == before, f"seq {change.seq}: `before` is not the version the feed held"
        current[change.event_id] = change.after


@given(
    initial=st.integers(0, 40),
    series=st.integers(0, 2),
    seed=st.integers(0, 2**32),
    first_kills=st.integers(0, 2),
    program=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12),
)
@FOLD
def test_the_feed_folded_from_its_start_is_the_mirror_after_any_program(
    runtime: Runtime,
    emu: Any,
    account: int,
    child: Child,
    initial: int,
    series: int,
    seed: int,
    first_kills: int,
    program: list[str],
) -> None:
    rng = random.Random(seed)
    google_id = emu.create_calendar(ALICE, f"Fold {seed}")
    cal = Calendar(emu, google_id, rng)
    for _ in range(initial):
        cal.create()
    for _ in range(series):
        cal.add_series()
    refresh_calendar_list(runtime, account)
    calendar_id = calendar_row_id(runtime, google_id)
    for _ in range(first_kills):  # the first sync killed, with edits while no calsync runs
        kill_mid_sync(runtime, child, calendar_id, rng)
        cal.act(rng.choice(ACTIONS[:9]))
    for action in program:
        if action == "expire tokens":
            emu.invalidate_sync_tokens(google_id)
        elif action == "sync":
            sync_calendar(runtime, calendar_id, page_size=PAGE_SIZE)
        elif action == "resync":
            sync_calendar(runtime, calendar_id, page_size=PAGE_SIZE, full=True)
        elif action == "kill":
            kill_mid_sync(runtime, child, calendar_id, rng)
        elif action.startswith("api "):
            cal.write(runtime, calendar_id, action)
        else:
            cal.act(action)
    sync_calendar(runtime, calendar_id, page_size=PAGE_SIZE)
    context = f"program={program} first_kills={first_kills} initial={initial} series={series} seed={seed}"
    assert mirror(runtime, calendar_id) == google_view(emu, google_id), context
    assert_feed_rebuilds_mirror(runtime, calendar_id)
    assert_no_version_lost_or_repeated(runtime, calendar_id)
