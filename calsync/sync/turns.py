"""Writes through calsync and syncs of the same calendar take turns.

A write holds the calendar's turn from before it calls Google until its commit; a sync holds it
for each page's transaction. So a sync page that lists a write's new version is applied only after
the write committed it (it then finds the etag it holds: no echo row), and a page listed before the
write reached Google carries an older version (which the mirror does not take back). Without the
turn, a sync woken by the write's own notification could commit that version first, as a change
found in Google: the app would hear its own write.

PostgreSQL: an advisory lock (any number of processes). A write takes it in the first statement of
its first transaction (`take_turn`, beside the read of its calendar) and holds it on that same
connection across Google's call and its commit (`release` after); a sync page takes it inside the
page's own transaction, as its first statement. Neither costs a connection or a round trip more.
SQLite: an exclusive `flock` on a file beside the database (the processes of one host).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import ColumnElement, Connection, bindparam, case, false, func, make_url, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from calsync.errors import CalendarHeld
from calsync.runtime import Runtime
from calsync.store.db import sqlstate, transaction

log = logging.getLogger(__name__)

# The first key of PostgreSQL's two-key advisory locks: "cal" in ASCII, so calsync's turns never
# meet another application's locks that use the same database.
_LOCK_CLASS = 0x63616C


# How long a write waits for its calendar's turn (and, on PostgreSQL, the quota budget's rows) before
# it is refused as busy, holding a connection and a request thread meanwhile. A turn is held for one
# write's call to Google or one sync page, far less; without a limit, work stuck while holding it
# (a stopped process, a hung socket) held every later write of the calendar as long.
TURN_WAIT = 30.0
_TURN_POLL = 0.002  # seconds between two tries of a SQLite turn while it is held


@contextmanager
def turn(runtime: Runtime, calendar_id: int, wait: float | None = None) -> Iterator[None]:
    """SQLite: hold the calendar's turn for the block (not re-entrant: take it once per write or page),
    waiting at most `wait` seconds for it (CalendarHeld after), or for as long as it takes. On
    PostgreSQL the turn is taken by a statement instead (`take_turn`, `page_transaction`)."""
    path = _lock_file(runtime.settings.database_url, calendar_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if wait is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            _flock_within(fd, wait)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _flock_within(fd: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise busy() from None
            time.sleep(_TURN_POLL)


def busy() -> CalendarHeld:
    """The refusal of a write that waited `TURN_WAIT` for its calendar."""
    return CalendarHeld(
        f"another write or a sync of this calendar held it for {TURN_WAIT:g} s", wait=min(TURN_WAIT, 5.0)
    )


def lock_timeout() -> ColumnElement[object]:
    """PostgreSQL: a column that makes the rest of its statement (listed before `take_turn`), and of its
    transaction, wait at most `TURN_WAIT` for a lock (SQLSTATE 55P03 after: `is_lock_timeout`). Its
    parameter is `lock_timeout_param()`."""
    return func.set_config("lock_timeout", bindparam("lock_timeout"), True)


def lock_timeout_param() -> dict[str, str]:
    return {"lock_timeout": f"{max(1, int(TURN_WAIT * 1000))}ms"}


def is_lock_timeout(err: BaseException) -> bool:
    return sqlstate(err) == "55P03"


_UNLOCK = text("SELECT pg_advisory_unlock(:k, :c)")
_XACT_LOCK = text("SELECT pg_advisory_xact_lock(:k, :c)")  # held until its transaction ends
_UNLOCK_ALL = text("SELECT pg_advisory_unlock_all()")


def take_turn(calendar_id: ColumnElement[int] | InstrumentedAttribute[int]) -> ColumnElement[object]:
    """PostgreSQL: a column that takes the turn of the calendar of each row a statement returns,
    held by the connection until `release` (past its transaction's end)."""
    return func.pg_advisory_lock(_LOCK_CLASS, calendar_id)


def hand_over_turn(calendar_id: ColumnElement[int]) -> ColumnElement[bool]:
    """PostgreSQL: a column that turns this connection's hold on the calendar's turn (`take_turn`)
    into one held by the statement's transaction, which its commit or rollback gives back: the
    write's last transaction ends its turn with no round trip of its own. True once handed over.
    (The transaction's lock is taken before the connection's is given up: a lock held at both
    levels by one session is held until both are let go.)"""
    return case(
        (
            func.pg_try_advisory_xact_lock(_LOCK_CLASS, calendar_id),
            func.pg_advisory_unlock(_LOCK_CLASS, calendar_id),
        ),
        else_=false(),
    )


def release(connection: Connection, calendar_ids: list[int]) -> None:
    """Give back the turns `take_turn` took on `connection` (outside any transaction). A connection
    that cannot say so is closed for good: its server process ends, and with it the locks."""
    if not calendar_ids:
        return
    try:
        connection.rollback()
        auto = connection.execution_options(isolation_level="AUTOCOMMIT")
        for calendar_id in calendar_ids:
            auto.execute(_UNLOCK, {"k": _LOCK_CLASS, "c": calendar_id})
    except Exception as err:  # (also when the connection was lost mid-write: the caller's error stands)
        log.warning("could not give back the turns of calendars %s (%s): closing the connection", calendar_ids, err)
        connection.invalidate()


def release_all(connection: Connection) -> None:
    """Give back every turn held on `connection`, known or not: a write's first statement takes its
    calendar's turn and then waits for the quota budget's rows, and when that wait is cancelled (a
    lock or statement timeout, a cancelled backend, a deadlock) the statement raises having taken a
    turn it never reported. Left held, it stopped every later sync of the calendar for good."""
    try:
        connection.rollback()
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(_UNLOCK_ALL)
    except Exception as err:
        log.warning("could not give back this connection's turns (%s): closing the connection", err)
        connection.invalidate()


@contextmanager
def page_transaction(runtime: Runtime, calendar_id: int) -> Iterator[Session]:
    """A sync page's transaction, holding the calendar's turn until it commits or rolls back."""
    if runtime.engine.dialect.name == "postgresql":
        with transaction(runtime.sessions) as session:
            session.execute(_XACT_LOCK, {"k": _LOCK_CLASS, "c": calendar_id})
            yield session
        return
    with turn(runtime, calendar_id), transaction(runtime.sessions) as session:
        yield session


def _lock_file(database_url: str, calendar_id: int) -> Path:
    """`<database>.turns/<calendar id>`: beside the database, so every process using it meets it."""
    database = make_url(database_url).database or "calsync.db"
    folder = Path(database + ".turns")
    folder.mkdir(exist_ok=True)
    return folder / str(calendar_id)
