"""When a worker counts as alive: one rule for `/healthz`, the dashboard and `calsync status`.

Every worker process writes its heartbeat row on each scheduler pass, from its main thread, which
makes no Google calls and so is never held up by a slow job: at least every `HEARTBEAT_SECONDS`.
Three missed beats mean the process is gone (or its database is), and a load balancer and an
operator must see the same answer.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from calsync.clock import utc
from calsync.store.models import WorkerHeartbeat

HEARTBEAT_SECONDS = 5.0
WORKER_ALIVE = timedelta(seconds=3 * HEARTBEAT_SECONDS)


def last_heartbeat(session: Session) -> datetime | None:
    """When any worker last reported, or None if none ever has."""
    return utc(session.scalar(select(func.max(WorkerHeartbeat.seen_at))))


def heartbeat_is_fresh(seen_at: datetime | None, now: datetime) -> bool:
    """A worker that has not been seen for three heartbeats is presumed dead."""
    return seen_at is not None and now - seen_at <= WORKER_ALIVE
