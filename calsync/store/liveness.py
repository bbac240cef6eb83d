"""When a worker process counts as alive, and so when the work it holds is free to take.

Every worker process writes its heartbeat row every `HEARTBEAT_SECONDS` from a thread that does
nothing else, so a slow job never delays it; three missed beats (`WORKER_ALIVE`) mean the process
is gone. A lease names its holder as `<worker name>/<thread>`: the holder's heartbeat row decides
whether the lease still counts, so the work of a killed process is free seconds after it died,
not when its lease runs out. An owner with no heartbeat row (the CLI's one-off sync) keeps the
plain `lease_until` rule. Claims of calendars, calendar lists and webhook deliveries, `/healthz`,
the dashboard and `calsync status` all read this one rule.
"""

from __future__ import annotations

import threading
import weakref
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, bindparam, event, func, or_, select, update
from sqlalchemy.orm import Session

from calsync.store.models import WorkerHeartbeat

HEARTBEAT_SECONDS = 2.0
WORKER_ALIVE = timedelta(seconds=3 * HEARTBEAT_SECONDS)
RECENT_BEAT = timedelta(seconds=HEARTBEAT_SECONDS / 2)  # a beat this fresh need not be written before a claim

# Per database: worker name -> the newest beat this process committed for it.
_committed: weakref.WeakKeyDictionary[Engine, dict[str, datetime]] = weakref.WeakKeyDictionary()
_committed_lock = threading.Lock()

_BEATING = "calsync_beating"  # session.info: workers whose beat the session's transaction has written
_BEATS = WorkerHeartbeat.__table__
# For statements built once: pass `stale_before(now)` under this name.
STALE_BEFORE = bindparam("stale_before", type_=_BEATS.c.seen_at.type)


def stale_before(now: datetime) -> datetime:
    """Heartbeats older than this belong to dead workers."""
    return now - WORKER_ALIVE


def heartbeat_is_fresh(seen_at: datetime | None, now: datetime) -> bool:
    """The Python side of the rule: a worker not seen for three heartbeats is presumed dead."""
    return seen_at is not None and now - seen_at <= WORKER_ALIVE


def claiming_as(session: Session, owner: str, now: datetime) -> None:
    """Before a claim: the claimer's own worker is alive, so its heartbeat says so now.

    Without it a worker could take the work of its own other threads whenever its beats looked old:
    when the clock stepped forward, or while its heartbeat thread waited for the database. Only an
    existing row is touched: an owner without one (the CLI's one-off sync) has none to keep.

    A beat this process committed less than `RECENT_BEAT` ago (by this clock) already says so, and
    is not written again: every wake-up of every worker thread claims, and on SQLite each of those
    writes held the one write lock that the notification intake waits for.
    """
    worker = owner.rpartition("/")[0] or owner
    beating = session.info.setdefault(_BEATING, set())
    if worker in beating:  # this transaction wrote the beat already (a list claim, then a calendar claim)
        return
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    last = _committed.get(engine, {}).get(worker)
    if last is not None and timedelta(0) <= now - last <= RECENT_BEAT:
        return
    beating.add(worker)
    event.listen(session, "after_rollback", lambda _session: beating.discard(worker), once=True)
    session.execute(
        update(WorkerHeartbeat)
        .where(WorkerHeartbeat.name == worker)
        .values(seen_at=now)
        .execution_options(synchronize_session=False)
    )
    event.listen(session, "after_commit", lambda _session: _committed_beat(beating, engine, worker, now), once=True)


def _committed_beat(beating: set[str], engine: Engine, worker: str, at: datetime) -> None:
    beating.discard(worker)
    beat_committed(engine, worker, at)


def beat_committed(engine: Engine, worker: str, at: datetime) -> None:
    """The heartbeat row of `worker` in `engine`'s database says `at`, committed by this process."""
    with _committed_lock:
        beats = _committed.setdefault(engine, {})
        last = beats.get(worker)
        if last is None or at > last:
            beats[worker] = at


def lease_is_free(owner: Any, until: Any, now: Any, stale: Any = STALE_BEFORE) -> ColumnElement[bool]:
    """SQL: a lease (`owner`, `until` columns) may be taken at `now`.

    Free when nobody holds it, when it ran out, or when its holder's worker has stopped beating.
    `stale` is `stale_before(now)`, a value or a bind parameter (SQLite cannot subtract from its
    text timestamps in SQL).
    """
    return or_(until.is_(None), until < now, held_by_dead_worker(owner, stale))


def held_by_dead_worker(owner: Any, stale: Any = STALE_BEFORE) -> ColumnElement[bool]:
    """SQL: `owner` is a worker (or one of its threads) whose heartbeat is older than `stale`.

    The match is exact: `host:1:ab/0` belongs to the worker `host:1:ab`, never to `host:1:a`.
    """
    name = _BEATS.c.name
    return (
        select(name)
        .where(_BEATS.c.seen_at < stale, or_(owner == name, func.substr(owner, 1, func.length(name) + 1) == name + "/"))
        .correlate_except(_BEATS)
        .exists()
    )
