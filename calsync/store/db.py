"""Engine and session factory: one of each per process.

SQLite is configured on purpose: foreign keys on, WAL, a busy timeout, and the driver's legacy
transaction handling off so that BEGIN, savepoints and transactional DDL behave. On PostgreSQL a
pooled connection is pinged before use only when it has sat idle (see `_ping_if_idle`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    CursorResult,
    Engine,
    LargeBinary,
    Result,
    Text,
    create_engine,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy import cast as sqlcast
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Subquery

log = logging.getLogger(__name__)

# A connection back in the pool for less than this is taken as alive without a ping.
PING_AFTER_IDLE_SECONDS = 1.0

# libpq's TCP settings for every PostgreSQL connection. After a partition that sends no RST (a
# NAT or firewall forgetting the flow, a host gone), a socket waits forever by default: keepalives
# find an idle one dead in about a minute, `tcp_user_timeout` one whose sent data goes unacknowledged
# as long, and `connect_timeout` bounds a connection attempt to an address that does not answer.
KEEPALIVE_ARGS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
    "connect_timeout": 10,
}

POOL_SIZE = 10  # connections a process keeps at least
POOL_OVERFLOW = 20  # and opens past them under a burst, closed again once returned
POOL_BESIDE = 4  # a process's own threads that use the database beside its request or sync threads
# How long a SQLite writer waits for the write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000

_BACKENDS: weakref.WeakKeyDictionary[Engine, set[int]] = weakref.WeakKeyDictionary()


def make_engine(url: str, *, threads: int | None = None, **kwargs: Any) -> Engine:
    """Create the process's engine, with SQLite pragmas applied to every connection; its pool keeps a
    connection for each of the process's `threads` that use the database (`pool_size`)."""
    if url.startswith("sqlite"):
        # Connections are pooled, never opened per transaction: closing the last connection to a
        # WAL database checkpoints and fsyncs it, which would make every short transaction slow.
        if ":memory:" not in url and url.rstrip("/") != "sqlite:":
            kwargs.setdefault("pool_size", pool_size(threads))
            kwargs.setdefault("max_overflow", POOL_OVERFLOW)
            _private_database_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        gate = IntakeGate.of(engine)
        event.listen(engine, "begin", _SqliteBegin(gate))
        event.listen(engine, "engine_disposed", lambda _engine: gate.close())
        return engine
    kwargs.setdefault("pool_size", pool_size(threads))
    kwargs.setdefault("max_overflow", POOL_OVERFLOW)
    # Last in, first out: busy threads keep reusing a few warm connections, the rest go idle.
    kwargs.setdefault("pool_use_lifo", True)
    kwargs["connect_args"] = {**KEEPALIVE_ARGS, **kwargs.get("connect_args", {})}
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_if_idle(engine)
    _track_backends(engine)
    return engine


def pool_size(threads: int | None) -> int:
    """Connections kept for a process of `threads` request or sync threads, and its own threads beside
    them (the intake's writer, the checkpointer, the listener, the scheduler). A fixed 10 + 20 left a
    `calsync web --threads 40` with ten requests waiting 30 s for a connection, then answered 503."""
    return POOL_SIZE if threads is None else max(POOL_SIZE, threads + POOL_BESIDE)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work owned by the caller: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


T = TypeVar("T")
S = TypeVar("S", bound=ClauseElement)


def compiled_for_postgres(statement: S) -> S:
    """`statement`, compiled once for PostgreSQL in the importing thread before any thread shares it.

    SQLAlchemy fills in parts of an aliased ORM entity over a LATERAL the first time it compiles
    such a statement; a new worker's threads compiling it at once could leave a statement whose rows
    lacked the entity's columns (`probe.id`), and every later use in that process failed.
    """
    statement.compile(dialect=PGDialect_psycopg())  # type: ignore[no-untyped-call]
    return statement


RETRY_WHILE_AWAY_SECONDS = 0.25  # while the database is away, how often `when_back` tries again


def when_back(factory: sessionmaker[Session], work: Callable[[Session], T], *, give_up_after: timedelta) -> T:
    """`work` in a transaction of its own, tried again while the database is away (stopped,
    restarting, unreachable, locked, out of space) for up to `give_up_after`.

    For what must be written once the database returns: the outcome of a job or of a webhook
    attempt, which releases a lease. Left unwritten, the lease would hold its calendar or message
    for the whole lease period after the return.
    """
    deadline = time.monotonic() + give_up_after.total_seconds()
    while True:
        try:
            with transaction(factory) as session:
                return work(session)
        except (OperationalError, InterfaceError) as err:
            if time.monotonic() >= deadline:
                raise
            log.warning("the database is away (%s); writing again in %.2fs", err.orig, RETRY_WHILE_AWAY_SECONDS)
            time.sleep(RETRY_WHILE_AWAY_SECONDS)


def statements_alone(session: Session) -> None:
    """Run this fresh session's statements outside any transaction, each its own snapshot.

    For a read that is one statement: it is consistent by itself, and it costs a single round
    trip on PostgreSQL (no BEGIN, no ROLLBACK) and no write lock on SQLite. Never for writes.
    """
    if is_postgres(session):
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    else:
        # Not SQLAlchemy's AUTOCOMMIT: undoing it would give the connection back pysqlite's own BEGIN.
        session.connection(execution_options={_NO_TRANSACTION: True})


_NO_TRANSACTION = "calsync_no_transaction"
_READ_ONLY = "calsync_read_only"


@contextmanager
def reading(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that only reads, all its statements from one state of the database.

    On PostgreSQL a REPEATABLE READ transaction (READ COMMITTED reads each statement afresh). On
    SQLite a deferred BEGIN, past the intake's gate: a reader of the write-ahead log takes no lock a
    writer waits for, where every other transaction begins IMMEDIATE and holds the file's one write
    lock, so an app polling the feed or an operator on the dashboard neither waits for the
    notification intake and the worker nor holds them up. Nothing is committed; a write inside
    fails on SQLite whenever another connection holds the write lock.
    """
    with factory() as session:
        if is_postgres(session):
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        else:
            session.connection(execution_options={_READ_ONLY: True})
        yield session


def rows_affected(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE touched (a DML statement's result is a CursorResult)."""
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def stored_json_size(column: Any, postgres: bool) -> ColumnElement[int]:
    """A JSON column's value in bytes of text, as an answer will carry it; 0 for NULL. What API pages
    count against their byte budgets. Not PostgreSQL's `pg_column_size`, which reads no value but
    measures it compressed: a meeting's thousand guests stored in 9 KB are 96 KB of JSON, and a page
    of 250 of them was one 22 MB answer under an 8 MB budget."""
    if postgres:
        return func.coalesce(func.octet_length(sqlcast(column, Text)), 0)
    return func.coalesce(func.length(sqlcast(sqlcast(column, Text), LargeBinary)), 0)  # bytes, not characters


def bytes_before(first: Subquery, key: str) -> Subquery:
    """A page's rows (`first`: its `key` column and a `size`, in page order) with the bytes of the rows
    before each on the page (`before_it`) and how many the page wanted (`wanted`): what a page's byte
    budget cuts by, in the statement that reads the page, so that rows past the cut are never read."""
    column = first.c[key]
    return select(
        column,
        (func.sum(first.c.size).over(order_by=column) - first.c.size).label("before_it"),
        func.count().over().label("wanted"),
    ).subquery()


def sqlstate(err: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of a failed statement, from SQLAlchemy's error or the driver's own
    (None for anything else, SQLite's errors included)."""
    state = getattr(getattr(err, "orig", err), "sqlstate", None)
    return state if isinstance(state, str) else None


def is_postgres(session_or_engine: Session | Engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


def sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine; None for PostgreSQL and in-memory databases."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def intake_lock_path(engine: Engine) -> str | None:
    """`<database>-intake.lock`: the file the receiver's writers queue on (see `IntakeGate`)."""
    database = sqlite_file(engine)
    return f"{database}-intake.lock" if database else None


class IntakeGate:
    """Lets the receiver's writers go ahead of every other writer on a SQLite file.

    SQLite's write lock is not a queue: whoever asks the moment it is free gets it. In `calsync serve`
    the worker's threads, each starting a transaction as its Google call returns, kept taking it
    between a batch of notifications and its turn, and a batch (with every request in it) waited
    behind several of their transactions in a row. The intake holds an exclusive flock on the lock
    file from before it asks for the write lock until it commits (`WriterTurn`); every other
    transaction first takes and drops a shared one (`wait`), so none starts while a batch waits or
    writes, and a batch waits at most for the transaction already running.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, engine: Engine) -> IntakeGate:
        return cls(intake_lock_path(engine))

    def wait(self) -> None:
        """Return once no intake writer of any process on this file waits for the lock or holds it."""
        if self.path is None:
            return
        fd = self._fd
        if fd is None or self._pid != os.getpid():  # a forked child opens its own (flocks follow the open file)
            with self._lock:
                if self._fd is None or self._pid != os.getpid():
                    self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
                fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_SH)
        fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """With its engine: a process that only checked the schema (gunicorn's master, before it forks its
        web processes) would otherwise keep the file open for its whole life, and pass it to each child."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None and self._pid == os.getpid():
                os.close(fd)


def is_own_backend(engine: Engine, pid: int) -> bool:
    """Whether a PostgreSQL server process serves one of `engine`'s open connections.

    A NOTIFY sent from one of them was sent by this process, which woke its own threads already.
    """
    return pid in _BACKENDS.get(engine, ())


def _track_backends(engine: Engine) -> None:
    pids = _BACKENDS.setdefault(engine, set())

    def connect(dbapi_conn: Any, record: Any) -> None:
        pid = getattr(getattr(dbapi_conn, "info", None), "backend_pid", None)
        if pid:
            record.info["calsync_backend_pid"] = pid
            pids.add(pid)

    def close(_dbapi_conn: Any, record: Any) -> None:
        pids.discard(record.info.get("calsync_backend_pid", 0))

    def detach(_dbapi_conn: Any, record: Any) -> None:
        # A detached connection leaves the record (and its info); it is ours until closed, but
        # nothing tells when, so it is forgotten now: its NOTIFYs would merely wake us twice.
        pids.discard(record.info.get("calsync_backend_pid", 0))

    event.listen(engine, "connect", connect)
    event.listen(engine, "close", close)
    event.listen(engine, "detach", detach)


def _ping_if_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only if it sat idle; one in steady use is known alive.

    pool_pre_ping pinged on every checkout: one more round trip for each of a sync job's few
    transactions. A connection lost while idle (server restart, idle timeout) is the case a ping is
    for; one lost within the last second fails its transaction, as a loss mid-transaction would,
    and the pool then replaces every connection older than the failure.
    """
    dialect = engine.dialect

    def checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["calsync_idle_since"] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("calsync_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return  # just connected, or back in the pool a moment ago
        try:
            alive = dialect.do_ping(dbapi_conn)
        except Exception as err:
            raise DisconnectionError(f"pooled connection failed its ping: {err}") from err
        if not alive:
            raise DisconnectionError("pooled connection failed its ping")

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


def _private_database_file(url: str) -> None:
    """Create a new SQLite file 0600 before SQLite does (it would follow the umask, often 0644):
    it holds every mirrored calendar. SQLite gives its -wal and -shm files the database's mode."""
    database = make_url(url).database
    if not database or database.startswith("file:"):
        return  # a URI filename (uri=true) names its own mode and place
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite's own error names the missing folder
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "the database %s is readable by other users (mode %o); `chmod 600` it and its -wal and -shm files",
                path,
                mode,
            )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own implicit BEGIN is turned off; SQLAlchemy's "begin" event emits ours.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    _enter_wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _enter_wal(cur: Any) -> None:
    """Switch the file to WAL, asking again while another connection is switching it.

    Processes that start together on a new file all ask at once. SQLite then refuses all but one
    at once, without its busy handler (waiting could deadlock two lock upgrades), so the busy
    timeout alone does not cover this.
    """
    execute_when_free(cur, "PRAGMA journal_mode=WAL", poll=0.005)


def execute_when_free(cursor: Any, sql: str, *, poll: float, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
    """Run `sql` on a SQLite cursor, trying again every `poll` seconds for up to `timeout` while another
    connection holds the lock it needs (SQLITE_BUSY), instead of in SQLite's own busy handler."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute(sql)
            return
        except sqlite3.OperationalError as err:
            busy = err.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # primary code
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(poll)


class _SqliteBegin:
    """The "begin" event of a SQLite engine: after the receiver's writers, take the write lock."""

    def __init__(self, gate: IntakeGate) -> None:
        self.gate = gate

    def __call__(self, conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(_NO_TRANSACTION):
            return
        if options.get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN")  # deferred: a snapshot at its first read, and no write lock
            return
        self.gate.wait()
        # IMMEDIATE takes the write lock up front, so two writers never deadlock on lock upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
