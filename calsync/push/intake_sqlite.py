"""What the intake's writers need on a SQLite file that a PostgreSQL server does for itself.

Three things kept SQLite's commits slow at the tail: writers of several processes that found the file
locked slept and retried (`WriterTurn` makes them queue instead); a writer that found it locked by
anything else (in `calsync serve`, the worker's own transactions) slept in SQLite's busy handler, up
to 100 ms at a time, long after the lock was free (`begin_immediate` looks again every half
millisecond); and every thousandth page or so a commit copied the write-ahead log back into the
database and fsynced it before returning, holding up that batch's requests and every other writer's
turn (`Checkpointer` does that copy in a thread of its own).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from typing import Any

from sqlalchemy import Engine

from calsync.store.db import SQLITE_BUSY_TIMEOUT_MS, execute_when_free, intake_lock_path, sqlite_file

log = logging.getLogger(__name__)

CHECKPOINT_AFTER = 0.25  # seconds from a commit to the checkpoint that covers it: a burst's pages copied once
IDLE_EXIT = 2.0  # seconds without commits before the checkpoint thread ends (a new one starts on demand)
AUTOCHECKPOINT_DEFAULT = 1000  # SQLite's own wal_autocheckpoint, given back with the writer's connection
BUSY_POLL = 0.0005  # seconds between two tries of the writer's BEGIN IMMEDIATE while another connection writes


def begin_immediate(cursor: Any) -> None:
    """BEGIN IMMEDIATE on a connection whose busy timeout is 0 (`Checkpointer.take`), tried again every
    `BUSY_POLL` while another connection holds the write lock.

    SQLite's own busy handler sleeps 1, 2, 5, 10, ... 100 ms between tries: a batch that found the
    worker's short transaction in the way waited for the next try, not for the lock, and in
    `calsync serve` that sleep, not the lock, set its requests' tail latency. Once BEGIN IMMEDIATE
    holds the lock, nothing else in a WAL transaction waits for it.
    """
    execute_when_free(cursor, "BEGIN IMMEDIATE", poll=BUSY_POLL)


class WriterTurn:
    """Makes the intake writers of several processes on one SQLite file take turns in the kernel.

    SQLite's own lock does not queue: a writer that finds the file locked sleeps (1, 2, 5, 10 ms and
    longer) and retries, so two web processes' writers, each holding the lock for a fraction of a
    millisecond, spend most of a burst asleep. An exclusive flock on a
    file beside the database is a queue: the next writer wakes the moment the lock is released.
    Opened lazily, so each process (after gunicorn's fork) has its own open file and so its own lock.
    While a writer holds it, no other transaction on the file starts (`calsync.store.db.IntakeGate`).
    """

    def __init__(self, engine: Engine) -> None:
        self.path = intake_lock_path(engine)
        self._fd: int | None = None

    def __enter__(self) -> None:
        if self.path is None:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Checkpointer:
    """Copies the write-ahead log into the database file after the intake's commits, off their path.

    The writer's connection runs with automatic checkpoints off (`take`); after each commit the
    writer calls `written`, and a thread of this class runs a PASSIVE checkpoint a moment later. A
    passive checkpoint takes no write lock, so batches go on committing while it copies and fsyncs;
    once it has caught up, the next commit starts the log file over, so the file does not grow.
    """

    def __init__(self, engine: Engine, *, after: float | None = None) -> None:
        self.enabled = sqlite_file(engine) is not None
        self.runs = 0  # checkpoints done by this process
        self._engine = engine
        self._after = CHECKPOINT_AFTER if after is None else after
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self, conn: Any) -> None:
        """The writer's connection: its commits leave checkpoints to this thread, and it waits for the
        write lock in `begin_immediate`, not in SQLite's busy handler."""
        self._pragmas(conn, 0, 0)

    def give_back(self, conn: Any) -> None:
        """Back to the pool: other users' commits checkpoint as SQLite's do by default."""
        self._pragmas(conn, AUTOCHECKPOINT_DEFAULT, SQLITE_BUSY_TIMEOUT_MS)

    def _pragmas(self, conn: Any, pages: int, busy_ms: int) -> None:
        if self.enabled:
            cursor = conn.cursor()
            cursor.execute(f"PRAGMA wal_autocheckpoint={pages}")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.close()

    def written(self) -> None:
        """A batch committed without checkpointing: make sure a checkpoint follows."""
        if not self.enabled:
            return
        self._due.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="calsync-checkpoint", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        conn: Any = None
        try:
            while True:
                if not self._due.wait(IDLE_EXIT):
                    with self._lock:  # `written` sets the flag before it looks at the thread
                        if not self._due.is_set():
                            self._thread = None
                            return
                time.sleep(self._after)
                self._due.clear()
                conn = self._checkpoint(conn)
        finally:
            with self._lock:  # a thread that died some other way must not block the next start
                if self._thread is threading.current_thread():
                    self._thread = None
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: Any) -> Any:
        """One passive checkpoint; the connection to keep (None when it failed)."""
        try:
            conn = conn or self._engine.raw_connection()
            cursor = conn.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.fetchall()
            cursor.close()
            self.runs += 1
            return conn
        except Exception:  # the next commit asks again; the log is safe meanwhile
            log.warning("write-ahead log checkpoint failed; will retry", exc_info=True)
            if conn is not None:
                conn.invalidate()
            self._due.set()
            return None
