"""Group commit for `/notifications`: one transaction records every notification that is waiting.

A notification must be committed before it is acknowledged (a 200 tells Google it need not retry),
but one transaction per notification made the database round trips and the SQLite write lock the
receiver's whole cost. Request threads therefore hand their notification to one writer thread per
process and wait; the writer takes everything queued, records it in one transaction, then wakes them.
Under light load a batch is a single notification; under a burst, the notifications that arrive while
one batch commits form the next, so the cost per notification falls as the load rises.

The writer wakes only the first request of a committed batch, and each request wakes the next as it
resumes. Woken all at once, they fought each other (and the writer) for the GIL, and those extra
sleeps and wake-ups cost more than the database work (figures in `docs/performance.md`).

A caller that must not block (the web server's event loop, `calsync.web.reading_worker`) submits
instead, and is called back once per batch with all of its items.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from calsync.metrics import NOTIFICATION_BATCH
from calsync.push.intake_sql import TRIM_LOG, Item, Push, record_batch
from calsync.push.intake_sqlite import Checkpointer, WriterTurn, begin_immediate
from calsync.runtime import Runtime
from calsync.store.db import sqlstate
from calsync.store.states import NotificationOutcome

log = logging.getLogger(__name__)

MAX_BATCH = 500
IDLE_EXIT = 2.0  # seconds without work before the writer thread ends (a new one starts on demand)
TRIM_EVERY = 100  # inserts between two trims of the notification log
_RETRYABLE_PG = {"40001", "40P01"}  # serialization failure, deadlock: the batch is simply run again
# The server ended the kept connection (killed backend, restart): the batch goes again on a new one.
_LOST_PG = {"57P01", "57P02", "57P03"}


class IntakeUnavailable(Exception):
    """The notification could not be recorded (database down, or the writer too slow)."""


class Intake:
    """The per-process queue in front of the notification tables, and its writer thread."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._writer: threading.Thread | None = None
        self._handoff = threading.Lock()  # orders a request giving up against its wake-up
        self._since_trim = 0
        self.committed_batches = 0  # transactions committed by this process's writer
        self.turn = WriterTurn(self._rt.engine)
        self.checkpointer = Checkpointer(self._rt.engine)

    def record(self, push: Push | None, headers: dict[str, str], *, timeout: float = 10.0) -> NotificationOutcome:
        """Record one notification and return its outcome once committed."""
        item = self._enqueue(Item(push, headers, self._rt.clock.now()))
        if not self._await(item, timeout) or item.failed:
            raise IntakeUnavailable(item.push.channel_id if item.push else NotificationOutcome.MALFORMED)
        assert item.outcome is not None  # decided by the committed batch
        return item.outcome

    def submit(
        self, push: Push | None, headers: dict[str, str], on_done: Callable[[list[Item]], None], tag: Any
    ) -> None:
        """Queue one notification without waiting: once its batch is done (`outcome` set, or `failed`),
        the writer calls `on_done` with the batch's items that carry it. No deadline: the caller keeps
        its own."""
        self._enqueue(Item(push, headers, self._rt.clock.now(), on_done=on_done, tag=tag))

    def _enqueue(self, item: Item) -> Item:
        if self._pid != os.getpid():  # forked: the parent's thread and lock are not ours
            self._reset()
        with self._cond:
            self._queue.append(item)
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="calsync-intake", daemon=True)
                self._writer.start()
            else:
                self._cond.notify()
        return item

    def _await(self, item: Item, timeout: float) -> bool:
        """Wait for the item's batch to be done, then pass the wake-up on; False if it timed out."""
        if not item.done.acquire(timeout=timeout):
            with self._handoff:
                if not item.done.acquire(blocking=False):  # not woken in the meantime: give up
                    item.abandoned = True
                    return False
        self._wake(item.next)
        return True

    def _wake(self, item: Item | None) -> None:
        """Wake the request waiting on `item`, or on the first item after it still waited on."""
        while item is not None:
            with self._handoff:
                if not item.abandoned:
                    item.done.release()
                    return
            item = item.next

    def _run(self) -> None:
        # One pooled driver connection for the writer's life: no checkout (nor ping) per batch.
        conn: Any = None
        try:
            while True:
                with self._cond:
                    if not self._queue:
                        self._cond.wait(IDLE_EXIT)
                    if not self._queue:
                        self._writer = None
                        return
                conn = self._write(conn)
        finally:
            if conn is not None:
                self._release(conn)

    def _take(self, batch: list[Item]) -> list[Item]:
        """Fill an empty batch with what is queued (a batch being retried keeps its items)."""
        if not batch:
            with self._cond:
                batch.extend(self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue))))
        return batch

    def _write(self, conn: Any) -> Any:
        """Record a batch of what is queued and wake its requests; the connection to keep (None after a
        failure). The batch is taken once the write lock is held (`_transaction`)."""
        engine = self._rt.engine
        batch: list[Item] = []
        try:
            for attempt in range(3):
                conn = conn or self._acquire()
                try:
                    with self.turn:
                        newly_owed = self._transaction(conn, batch)
                    break
                except engine.dialect.loaded_dbapi.Error as err:
                    self._release(conn)
                    conn = None
                    if attempt == 2 or not _worth_another_try(err, engine.dialect.name):
                        raise
        except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error):
            self._take(batch)  # failed before its lock was held: what is queued fails with it
            log.exception("could not record %d notification(s)", len(batch))
            for item in batch:
                item.failed = True
        except BaseException:  # never leave a request waiting on a dead writer
            log.exception("notification writer failed")
            for item in self._take(batch):
                item.failed = True
            if conn is not None:
                self._release(conn)
                conn = None
        else:
            self.committed_batches += 1
            self.checkpointer.written()
            NOTIFICATION_BATCH.observe(len(batch))
            if newly_owed:
                self._rt.wakeup.notify_committed()  # after the commit, so a woken worker sees the owed sync
        self._done(batch)
        return conn

    def _done(self, batch: list[Item]) -> None:
        """Wake the batch's waiting requests (the first, which wakes the next) and call back the rest."""
        waiting = [item for item in batch if item.on_done is None]
        for earlier, later in itertools.pairwise(waiting):
            earlier.next = later
        self._wake(waiting[0] if waiting else None)
        if len(waiting) == len(batch):
            return
        submitted: dict[Callable[[list[Item]], None], list[Item]] = {}
        for item in batch:
            if item.on_done is not None:
                submitted.setdefault(item.on_done, []).append(item)
        for on_done, items in submitted.items():
            try:
                on_done(items)
            except Exception:  # the writer goes on for everyone else
                log.exception("could not hand %d recorded notification(s) back", len(items))

    def _transaction(self, conn: Any, batch: list[Item]) -> bool:
        dialect = self._rt.engine.dialect
        cursor = conn.cursor()
        try:
            if dialect.name == "sqlite":
                begin_immediate(cursor)  # as db.py's transactions: the write lock up front
            # (on PostgreSQL each statement is its own transaction: see _acquire)
            # Taken only now, so what queued while the lock was busy rides in this batch: on SQLite,
            # a request waits for at most one other transaction, not for one before each of two batches.
            self._take(batch)
            newly_owed = record_batch(cursor, dialect, batch, self._rt.clock.now())
            trim = self._since_trim + len(batch) >= TRIM_EVERY
            if trim:
                for sql in TRIM_LOG:
                    cursor.execute(
                        sql.format(p="?" if dialect.name == "sqlite" else "%s"),
                        (self._rt.settings.notification_log_size,),
                    )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cursor.close()
        self._since_trim = 0 if trim else self._since_trim + len(batch)
        return newly_owed

    def _acquire(self) -> Any:
        """A pooled driver connection for the writer. On PostgreSQL it is put in autocommit: a batch is
        one statement, so it is its own transaction, and costs one round trip instead of four (BEGIN,
        statement, COMMIT, and the pool's checks). On SQLite it leaves checkpoints to the checkpointer."""
        engine = self._rt.engine
        conn = engine.raw_connection()
        if engine.dialect.name == "postgresql":
            conn.driver_connection.autocommit = True  # type: ignore[union-attr]
        self.checkpointer.take(conn)
        return conn

    def _release(self, conn: Any) -> None:
        """Back to the pool as it came out: other users expect a transaction to begin on first use,
        and their commits to checkpoint as SQLite's do by default."""
        try:
            driver = conn.driver_connection
            if getattr(driver, "autocommit", False):
                driver.autocommit = False
            self.checkpointer.give_back(conn)
            conn.close()
        except Exception:  # a connection that cannot be reset is dropped instead
            log.debug("dropping the writer's connection", exc_info=True)
            conn.invalidate()


def _worth_another_try(err: Exception, dialect: str) -> bool:
    """PostgreSQL errors after which the batch is run again at once: a conflict with another
    transaction, or a kept connection the server had ended (a killed backend, a restart). The
    writer keeps its connection between batches without a ping, so the first batch after a
    restart met the dead one, and its notifications were answered 503 while the database was up.
    Recording a batch twice is harmless: a repeated message number is absorbed."""
    if dialect != "postgresql":
        return False
    state = sqlstate(err)
    return state is None or state in _RETRYABLE_PG or state in _LOST_PG or state.startswith("08")
