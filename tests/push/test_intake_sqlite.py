"""The intake on a SQLite file: its commits leave the write-ahead log's checkpoints to a thread of
their own, which keeps the log from growing; PostgreSQL needs none of it."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy.pool import QueuePool

from calsync.push import intake_sqlite
from calsync.push.intake import Intake
from calsync.push.intake_sqlite import AUTOCHECKPOINT_DEFAULT, Checkpointer
from calsync.runtime import Runtime
from calsync.store.db import SQLITE_BUSY_TIMEOUT_MS
from calsync.store.states import NotificationOutcome
from tests.push_support import push_of, wait_for

WAL_HEADER, FRAME_HEADER = 32, 24


def _wal_frames(database: Path) -> int:
    """How many frames the log file can hold: it grows while nothing checkpoints, and is reused after."""
    page_size = sqlite3.connect(database).execute("PRAGMA page_size").fetchone()[0]
    wal = Path(f"{database}-wal")
    return max(0, (wal.stat().st_size - WAL_HEADER) // (page_size + FRAME_HEADER)) if wal.exists() else 0


def _record(intake: Intake, channel: dict[str, Any], numbers: range) -> None:
    for n in numbers:  # one at a time: each is a batch, and a commit, of its own
        assert intake.record(push_of(channel, n), {"X-Goog-Message-Number": str(n)}) == NotificationOutcome.QUEUED


def test_commits_leave_checkpoints_to_the_checkpointer_which_keeps_the_log_small(
    runtime: Runtime, watched: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if runtime.engine.dialect.name != "sqlite":
        assert not Intake(runtime).checkpointer.enabled
        return
    database = Path(str(runtime.engine.url.database))
    intake = Intake(runtime)
    monkeypatch.setattr(intake.checkpointer, "written", lambda: None)  # no checkpoint yet
    size_before = database.stat().st_size
    _record(intake, watched["channel"], range(10, 510))
    # Past SQLite's automatic threshold, and still nothing copied back: no commit checkpointed.
    assert _wal_frames(database) > AUTOCHECKPOINT_DEFAULT + 200
    assert database.stat().st_size == size_before

    monkeypatch.undo()
    monkeypatch.setattr(intake_sqlite, "CHECKPOINT_AFTER", 0.01)
    intake.checkpointer = Checkpointer(runtime.engine)
    _record(intake, watched["channel"], range(510, 511))
    wait_for(lambda: intake.checkpointer.runs >= 1, what="a checkpoint after the commit")
    assert database.stat().st_size > size_before  # the log's pages are in the database file now
    frames = _wal_frames(database)
    _record(intake, watched["channel"], range(511, 811))  # fewer pages than the file holds
    assert _wal_frames(database) == frames  # the log was started over, not extended


def test_the_writer_gives_its_connection_back_with_checkpoints_on(
    runtime: Runtime, watched: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other users of the pool (the worker, the API) checkpoint as SQLite does by default."""
    if runtime.engine.dialect.name != "sqlite":
        return
    monkeypatch.setattr("calsync.push.intake.IDLE_EXIT", 0.05)
    intake = Intake(runtime)
    writer_settings: list[int] = []
    original = intake._transaction

    def spy(conn: Any, batch: Any) -> bool:
        driver = conn.driver_connection
        writer_settings.append(driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        writer_settings.append(driver.execute("PRAGMA busy_timeout").fetchone()[0])
        return original(conn, batch)

    monkeypatch.setattr(intake, "_transaction", spy)
    _record(intake, watched["channel"], range(10, 12))
    assert writer_settings == [0, 0, 0, 0]  # no automatic checkpoints, no busy handler
    wait_for(
        lambda: cast("QueuePool", runtime.engine.pool).checkedout() == 0 and intake._writer is None,
        what="the writer to go idle and give its connection back",
    )
    conns = [runtime.engine.raw_connection() for _ in range(cast("QueuePool", runtime.engine.pool).checkedin())]
    try:
        assert {c.cursor().execute("PRAGMA wal_autocheckpoint").fetchone()[0] for c in conns} == {
            AUTOCHECKPOINT_DEFAULT
        }
        assert {c.cursor().execute("PRAGMA busy_timeout").fetchone()[0] for c in conns} == {SQLITE_BUSY_TIMEOUT_MS}
    finally:
        for c in conns:
            c.close()


def test_the_checkpoint_thread_ends_when_idle_and_comes_back(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    if runtime.engine.dialect.name != "sqlite":
        return
    monkeypatch.setattr(intake_sqlite, "IDLE_EXIT", 0.05)
    checkpointer = Checkpointer(runtime.engine, after=0.0)
    checkpointer.written()
    wait_for(
        lambda: checkpointer.runs == 1 and checkpointer._thread is None, what="one checkpoint, then the thread gone"
    )
    checkpointer.written()
    wait_for(lambda: checkpointer.runs == 2, what="a new thread's checkpoint")
    assert os.path.exists(f"{runtime.engine.url.database}-wal")


def test_a_batch_takes_the_write_lock_as_soon_as_another_writer_lets_go(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """SQLite's busy handler sleeps up to 100 ms between tries: a lock freed 335 ms into the wait was
    taken at its 428 ms try, every time. The writer looks every half millisecond instead. The best of
    three tries counts, so that a loaded machine's scheduling delay in one try does not decide."""
    if runtime.engine.dialect.name != "sqlite":
        return
    intake = Intake(runtime)
    _record(intake, watched["channel"], range(1, 2))  # the writer's connection is set up
    lags: list[float] = []
    for number in range(2, 5):
        blocker = runtime.engine.raw_connection()
        blocker.cursor().execute("BEGIN IMMEDIATE")  # the worker's transaction, say
        done: list[float] = []

        def record_one(number: int = number, done: list[float] = done) -> None:
            _record(intake, watched["channel"], range(number, number + 1))
            done.append(time.monotonic())

        recorder = threading.Thread(target=record_one)
        recorder.start()
        time.sleep(0.335)
        assert not done  # it waits for the lock, and does not give up
        released = time.monotonic()
        blocker.commit()
        recorder.join(5)
        blocker.close()
        assert done, "the batch never took the lock"
        lags.append(done[0] - released)
    assert min(lags) < 0.04, lags
