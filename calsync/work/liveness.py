"""A worker's heartbeat, written on a thread of its own, and whether any worker is alive.

The rule itself (how often, how long a silence means death, what that does to leases) is in
`calsync.store.liveness`, one definition for the claims below `work` and the views above it.
The beat has a thread to itself because the leases of a process hang on it: a slow Google call
or a slow scheduler pass must never make a live worker look dead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from calsync.clock import utc
from calsync.runtime import Runtime
from calsync.store.db import rows_affected, transaction
from calsync.store.liveness import HEARTBEAT_SECONDS, beat_committed, heartbeat_is_fresh
from calsync.store.models import WorkerHeartbeat

__all__ = ["Heartbeat", "heartbeat_is_fresh", "last_heartbeat"]

log = logging.getLogger(__name__)


def last_heartbeat(session: Session) -> datetime | None:
    """When any worker last reported, or None if none ever has."""
    return utc(session.scalar(select(func.max(WorkerHeartbeat.seen_at))))


class Heartbeat:
    """One worker process's heartbeat row: `beat()` once, then `start()` beats until `stop()`."""

    def __init__(self, runtime: Runtime, name: str, every: float = HEARTBEAT_SECONDS) -> None:
        self.runtime = runtime
        self.name = name
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Say this worker is alive now; a database error is logged and the next beat tries again.

        The time is read once the transaction holds SQLite's write lock: read before, a beat that
        waited for the lock wrote a time already that old, and a wait near `WORKER_ALIVE` made a
        live worker look dead the moment its beat committed (its leases then free to take).
        """
        try:
            with transaction(self.runtime.sessions) as session:
                session.connection()  # begins the transaction: on SQLite, waits for the write lock
                now = self.runtime.clock.now()
                self._write(session, now)
        except SQLAlchemyError:
            log.exception("heartbeat of %s failed; will retry", self.name)
        else:
            beat_committed(self.runtime.engine, self.name, now)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="calsync-heartbeat", daemon=True)
            self._thread.start()

    def stop(self, *, forget: bool = False) -> None:
        """Stop beating; `forget` removes the row (a clean exit: the process holds nothing any more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if forget:
            try:
                with transaction(self.runtime.sessions) as session:
                    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == self.name))
            except SQLAlchemyError:
                log.warning("could not remove the heartbeat of %s", self.name)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.beat()

    def _write(self, session: Session, now: datetime) -> None:
        seen = session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.name == self.name).values(seen_at=now))
        if not rows_affected(seen):
            session.add(
                WorkerHeartbeat(
                    name=self.name, host=socket.gethostname()[:255], pid=os.getpid(), started_at=now, seen_at=now
                )
            )
