"""What the intake's writers need on a SQLite file that a PostgreSQL server does for itself.

Two things kept SQLite's commits slow at the tail: writers of several processes that found the file
locked slept and retried (`WriterTurn` makes them queue instead), and every thousandth page or so a
commit copied the write-ahead log back into the database and fsynced it before returning, holding up
that batch's requests and every other writer's turn (`Checkpointer` does that copy in a thread of
its own).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from typing import Any

from sqlalchemy import Engine

log = logging.getLogger(__name__)

CHECKPOINT_AFTER = 0.25  # seconds from a commit to the checkpoint that covers it: a burst's pages copied once
IDLE_EXIT = 2.0  # seconds without commits before the checkpoint thread ends (a new one starts on demand)
AUTOCHECKPOINT_DEFAULT = 1000  # SQLite's own wal_autocheckpoint, given back with the writer's connection


def sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine; None for PostgreSQL and in-memory databases."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


class WriterTurn:
    """Makes the intake writers of several processes on one SQLite file take turns in the kernel.

    SQLite's own lock does not queue: a writer that finds the file locked sleeps (1, 2, 5, 10 ms and
    longer) and retries, so two web processes' writers, each holding the lock for a fraction of a
    millisecond, spend most of a burst asleep. An exclusive flock on a
    file beside the database is a queue: the next writer wakes the moment the lock is released.
    Opened lazily, so each process (after gunicorn's fork) has its own open file and so its own lock.
    """

    def __init__(self, engine: Engine) -> None:
        database = sqlite_file(engine)
        self.path = f"{database}-intake.lock" if database else None
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
        """The writer's connection: its commits leave checkpoints to this thread."""
        self._autocheckpoint(conn, 0)

    def give_back(self, conn: Any) -> None:
        """Back to the pool: other users' commits checkpoint as SQLite's do by default."""
        self._autocheckpoint(conn, AUTOCHECKPOINT_DEFAULT)

    def _autocheckpoint(self, conn: Any, pages: int) -> None:
        if self.enabled:
            cursor = conn.cursor()
            cursor.execute(f"PRAGMA wal_autocheckpoint={pages}")
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
