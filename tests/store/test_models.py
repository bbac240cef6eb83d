from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import String, select, text, update
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from calsync.store.db import make_engine, make_sessionmaker, transaction
from calsync.store.models import Account, Calendar, Channel, EnumColumn, UnknownStateError
from calsync.store.states import AccountStatus, ChannelKind, ChannelStatus, Priority, SyncState

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _calendar(db_url: str) -> tuple[sessionmaker[Session], int]:
    sessions = make_sessionmaker(make_engine(db_url))
    with transaction(sessions) as session:
        account = Account(email="ann@example.com", credentials=b"x")
        session.add(account)
        session.flush()
        calendar = Calendar(account_id=account.id, google_id="ann@example.com")
        session.add(calendar)
        session.flush()
        return sessions, calendar.id


def test_state_columns_store_the_plain_value_and_read_back_members(db_url: str) -> None:
    sessions, cal_id = _calendar(db_url)
    with transaction(sessions) as session:
        cal = session.get_one(Calendar, cal_id)
        cal.sync_state, cal.due_priority = SyncState.BACKOFF, Priority.RECONCILE
        session.add(Channel(id="ch", account_id=cal.account_id, kind=ChannelKind.EVENTS, token_hash="h"))
    with transaction(sessions) as session:
        stored = session.execute(text("SELECT sync_state, due_priority FROM calendars WHERE id = :id"), {"id": cal_id})
        assert tuple(stored.one()) == ("backoff", 4)  # the schema's own values: hand-written SQL reads them
        cal = session.get_one(Calendar, cal_id)
        assert type(cal.sync_state) is SyncState and cal.sync_state is SyncState.BACKOFF
        assert cal.due_priority is Priority.RECONCILE
        assert session.scalar(select(Account.status)) is AccountStatus.ACTIVE  # the default, read back
        channel = session.get_one(Channel, "ch")
        assert (channel.kind, channel.status) == (ChannelKind.EVENTS, ChannelStatus.PENDING)
        assert type(channel.status) is ChannelStatus
        # Core statements compare and write through the same type.
        assert session.scalar(select(Calendar.id).where(Calendar.sync_state == SyncState.BACKOFF)) == cal_id
        session.execute(update(Calendar).values(sync_state=SyncState.SYNCED))
        assert session.scalar(select(Calendar.sync_state)) is SyncState.SYNCED


def test_an_unknown_stored_state_fails_loudly(db_url: str) -> None:
    sessions, cal_id = _calendar(db_url)
    with transaction(sessions) as session:
        session.execute(text("UPDATE calendars SET sync_state = 'sinking' WHERE id = :id"), {"id": cal_id})
    with (
        transaction(sessions) as session,
        pytest.raises(UnknownStateError, match="'sinking', which is not a SyncState"),
    ):
        session.get_one(Calendar, cal_id)


def test_a_value_of_another_enum_or_no_member_is_refused() -> None:
    column = EnumColumn(ChannelStatus, String(20))
    dialect = make_engine("sqlite://").dialect
    assert column.process_bind_param(ChannelStatus.ACTIVE, dialect) == "active"
    assert type(column.process_bind_param(ChannelStatus.ACTIVE, dialect)) is str
    with pytest.raises(UnknownStateError, match="not a ChannelStatus"):
        column.process_bind_param(AccountStatus.ACTIVE, dialect)
    with pytest.raises(UnknownStateError, match="not a ChannelStatus"):
        column.process_bind_param("activ", dialect)


def test_a_pattern_compares_as_text_and_a_word_that_is_no_member_not_at_all(db_url: str) -> None:
    sessions, cal_id = _calendar(db_url)
    with transaction(sessions) as session:
        session.add(Channel(id="ch", account_id=1, calendar_id=cal_id, kind=ChannelKind.CALENDAR_LIST, token_hash="h"))
    with transaction(sessions) as session:
        assert session.scalar(select(Channel.id).where(Channel.kind.startswith("calendar_"))) == "ch"
        assert session.scalar(select(Channel.id).where(Channel.kind.in_(["calendar_list"]))) == "ch"
        for misspelt in (Channel.kind == "calendar-list", Channel.kind.in_(["events", "calendar-list"])):
            with pytest.raises(StatementError, match="'calendar-list' is not a ChannelKind"):
                session.scalar(select(Channel.id).where(misspelt))
