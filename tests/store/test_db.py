from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import calsync.store.db
from calsync.store.db import (
    intake_lock_path,
    is_own_backend,
    make_engine,
    make_sessionmaker,
    reading,
    statements_alone,
    transaction,
)
from calsync.store.migrate import upgrade
from calsync.store.models import Account, Calendar


def test_sqlite_is_configured_on_purpose(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_a_new_sqlite_database_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    """Whatever the umask, no other local user can read the mirrored calendars."""
    path = tmp_path / "calsync.db"
    old_umask = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        with engine.connect() as conn:  # an open connection keeps -wal and -shm in place
            conn.execute(text("SELECT count(*) FROM accounts")).scalar()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("calsync.db*")}
        engine.dispose()
    finally:
        os.umask(old_umask)
    private = ("calsync.db", "calsync.db-wal", "calsync.db-shm", "calsync.db-intake.lock")  # the lock: IntakeGate
    assert modes == dict.fromkeys(private, 0o600)


def test_disposing_a_sqlite_engine_closes_its_intake_lock_file(tmp_path: Path) -> None:
    """A process that only checked the schema (gunicorn's master) kept the lock file open for life."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    lock = intake_lock_path(engine)
    with transaction(make_sessionmaker(engine)) as session:  # a write transaction passes the gate
        session.execute(text("SELECT 1"))
    assert lock in _open_files()
    engine.dispose()
    assert lock not in _open_files()
    with transaction(make_sessionmaker(engine)) as session:  # the engine is still usable: opened again
        session.execute(text("SELECT 1"))
    assert lock in _open_files()
    engine.dispose()


def _open_files() -> list[str]:
    fds = Path("/proc/self/fd")
    return [os.path.realpath(fds / fd) for fd in os.listdir(fds)]


def test_an_existing_database_readable_by_others_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="calsync.store.db"):
        make_engine(f"sqlite:///{path}").dispose()
    assert any(str(path) in r.getMessage() and "chmod 600" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644, "the operator's file is left as it is"


def test_datetimes_come_back_aware_utc(db_url: str) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    when = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    with transaction(sessions) as s:
        s.add(Account(email="a@example.com", credentials=b"x", scopes=[], created_at=when, updated_at=when))
    with sessions() as s:
        account = s.scalars(select(Account)).one()
        assert account.created_at == when and account.created_at.tzinfo is not None


def test_a_failed_unit_of_work_changes_nothing(db_url: str) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.add(Account(email="a@example.com", credentials=b"x", scopes=[]))
        s.flush()
        s.add(Calendar(account_id=999999, google_id="nope"))  # foreign key violation
        s.flush()
    with sessions() as s:
        assert s.scalars(select(Account)).all() == []


def test_statements_alone_hold_no_transaction_between_statements(db_url: str) -> None:
    """Each read sees what was committed before it, and none holds a lock a writer waits on."""
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    sqlite = engine.dialect.name == "sqlite"
    with sessions() as reader:
        statements_alone(reader)
        assert reader.scalars(select(Account.email)).all() == []
        _add_account(engine, "w@example.com")
        assert reader.scalars(select(Account.email)).all() == ["w@example.com"]
    with sessions() as reader:  # an ordinary session, for contrast: it holds its transaction
        reader.connection(execution_options={} if sqlite else {"isolation_level": "REPEATABLE READ"})
        assert reader.scalars(select(Account.email)).all() == ["w@example.com"]
        if sqlite:
            with pytest.raises(OperationalError, match="locked"):
                _add_account(engine, "v@example.com")
        else:
            _add_account(engine, "v@example.com")
            assert reader.scalars(select(Account.email)).all() == ["w@example.com"]
    engine.dispose()


def test_a_reading_session_sees_one_state_and_holds_no_writer_up(db_url: str) -> None:
    """Its statements all read the state of its first one; on SQLite it takes no write lock, so a
    writer commits while it reads (an ordinary session holds the lock, above), and it reads while a
    writer holds the lock and while the intake's writer holds its turn."""
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    _add_account(engine, "a@example.com")
    with reading(sessions) as reader:
        assert reader.scalars(select(Account.email)).all() == ["a@example.com"]
        _add_account(engine, "b@example.com")  # committed meanwhile, without waiting
        assert reader.scalars(select(Account.email)).all() == ["a@example.com"]  # the first state still
    with reading(sessions) as reader:
        assert sorted(reader.scalars(select(Account.email))) == ["a@example.com", "b@example.com"]
    if engine.dialect.name == "sqlite":
        with engine.connect() as writer:
            writer.execute(select(Account.email)).all()  # begins IMMEDIATE: another connection holds the write lock
            with open(str(intake_lock_path(engine)), "a+b") as gate:
                fcntl.flock(gate.fileno(), fcntl.LOCK_EX)  # and an intake writer its turn
                done = threading.Event()

                def read() -> None:
                    with reading(sessions) as reader:
                        reader.scalars(select(Account.email)).all()
                    done.set()

                threading.Thread(target=read, daemon=True).start()
                assert done.wait(2), "a read waited for a writer"
                fcntl.flock(gate.fileno(), fcntl.LOCK_UN)
            writer.rollback()
    engine.dispose()


def _add_account(engine: Engine, email: str) -> None:
    """Commit an account from a connection of its own; on SQLite a held write lock fails it in 0.2 s."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.connection.driver_connection.execute("PRAGMA busy_timeout=200")  # type: ignore[union-attr]
        with Session(bind=conn) as writer, writer.begin():
            writer.add(Account(email=email, credentials=b"x", scopes=[]))


def _postgres_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the pool's ping and server process ids are PostgreSQL's")


def _terminate_backend_of(engine: Engine) -> None:
    """Kill, from another connection, the server process behind the pooled connection."""
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    killer = create_engine(engine.url, poolclass=NullPool)
    with killer.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    killer.dispose()


def test_a_connection_lost_while_idle_is_replaced_unnoticed(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _postgres_only(db_url)
    monkeypatch.setattr(calsync.store.db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every pooled connection counts as idle
    engine = make_engine(db_url, pool_size=1, max_overflow=0)
    _terminate_backend_of(engine)
    with engine.connect() as conn:  # the ping finds it dead; the pool hands out a new one
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _postgres_only(db_url)
    monkeypatch.setattr(calsync.store.db, "PING_AFTER_IDLE_SECONDS", 3600.0)  # never idle long enough
    engine = make_engine(db_url, pool_size=1, max_overflow=0)
    _terminate_backend_of(engine)
    # No ping before use: the loss shows in the one transaction that meets it...
    with pytest.raises(OperationalError) as failed, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert failed.value.connection_invalidated
    with engine.connect() as conn:  # ...and the pool has replaced the connection for the next one
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()


def test_the_pools_server_processes_are_known_while_open(db_url: str) -> None:
    _postgres_only(db_url)
    engine = make_engine(db_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert is_own_backend(engine, pid)
    assert not is_own_backend(make_engine(db_url), pid)  # another engine's pool
    engine.dispose()  # closed: the number may go to another process now
    assert not is_own_backend(engine, pid)


def test_engines_opening_a_new_sqlite_file_together_all_connect(tmp_path: Path) -> None:
    """Processes started together on a new file (`calsync web` beside `calsync worker`) all ask
    SQLite for WAL at once; none of them may fail with "database is locked"."""
    failures: list[str] = []
    for round_ in range(10):
        url = f"sqlite:///{tmp_path / f'round{round_}.db'}"
        barrier = threading.Barrier(6)

        def open_it(url: str = url, barrier: threading.Barrier = barrier) -> None:
            engine = make_engine(url)
            barrier.wait()
            try:
                with engine.connect() as conn:
                    assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            except OperationalError as exc:
                failures.append(str(exc.orig))
            finally:
                engine.dispose()

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
