from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from calsync.db import make_engine, make_sessionmaker, transaction
from calsync.models import Account, Calendar


def test_sqlite_is_configured_on_purpose(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


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
