"""The owed-work rules on both engines, and the receiver's text of them doing exactly the same."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, select, text, update

from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, UTCDateTime
from calsync.store.owed import owe_list_refresh, owe_list_sql, owe_sync, owe_sync_sql, request_calendar_sync
from calsync.store.states import Priority

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)
EARLIER = NOW - timedelta(seconds=30)
_EMAILS = (f"person{n}" for n in itertools.count())


def _calendar(runtime: Runtime, **queue: Any) -> int:
    with transaction(runtime.sessions) as session:
        account = Account(email=f"{next(_EMAILS)}@example.com", credentials=b"", scopes=[])
        session.add(account)
        session.flush()
        fields: dict[str, Any] = {"sync_requested": 3, "sync_done": 3, "due_at": None} | queue
        calendar = Calendar(account_id=account.id, google_id="primary", created_at=NOW, **fields)
        session.add(calendar)
        session.flush()
        return calendar.id


def _queue(runtime: Runtime, calendar_id: int) -> tuple[int, int, datetime | None, int, datetime | None]:
    with runtime.sessions() as session:
        c = session.get_one(Calendar, calendar_id)
        return c.sync_requested, c.sync_done, c.due_at, c.due_priority, c.retry_at


def _owe(runtime: Runtime, calendar_id: int, **options: Any) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).where(Calendar.id == calendar_id).values(**owe_sync(NOW, **options)))


def test_a_calendar_owing_nothing_owes_a_sync_due_now_for_a_notification(runtime: Runtime) -> None:
    cal = _calendar(runtime, due_at=LATER, due_priority=Priority.RECONCILE)
    _owe(runtime, cal)
    assert _queue(runtime, cal) == (4, 3, NOW, Priority.NOTIFICATION, None)


def test_a_sync_already_owed_keeps_its_time_later_or_earlier(runtime: Runtime) -> None:
    later = _calendar(runtime, sync_requested=4, due_at=LATER, due_priority=Priority.NOTIFICATION)
    earlier = _calendar(runtime, sync_requested=4, due_at=EARLIER, due_priority=Priority.NOTIFICATION)
    for _ in range(3):
        _owe(runtime, later)
        _owe(runtime, earlier)
    # The counter tells how many were asked; one sync settles them all, at the time first owed.
    assert _queue(runtime, later) == (7, 3, LATER, Priority.NOTIFICATION, None)
    assert _queue(runtime, earlier) == (7, 3, EARLIER, Priority.NOTIFICATION, None)


def test_a_backoff_is_never_cut_short_and_a_more_urgent_priority_stays(runtime: Runtime) -> None:
    cal = _calendar(runtime, due_at=None, retry_at=LATER, due_priority=Priority.WRITE)
    _owe(runtime, cal)
    assert _queue(runtime, cal) == (4, 3, LATER, Priority.WRITE, LATER)


def test_at_once_makes_it_due_now_ends_the_backoff_and_keeps_the_priority(runtime: Runtime) -> None:
    cal = _calendar(runtime, sync_requested=4, due_at=LATER, retry_at=LATER, due_priority=Priority.FIRST_SYNC)
    _owe(runtime, cal, at_once=True)
    assert _queue(runtime, cal) == (5, 3, NOW, Priority.FIRST_SYNC, None)


def test_a_request_during_a_running_sync_leaves_one_more_owed(runtime: Runtime) -> None:
    cal = _calendar(runtime, sync_requested=4, due_at=EARLIER)
    claimed = _queue(runtime, cal)[0]  # a sync is claimed for the requests so far
    with transaction(runtime.sessions) as session:
        request_calendar_sync(session, cal, NOW)
        request_calendar_sync(session, cal, NOW)
        session.execute(update(Calendar).where(Calendar.id == cal).values(sync_done=claimed))  # it finishes
    requested, done, *_ = _queue(runtime, cal)
    assert requested > done == claimed


@pytest.mark.parametrize(
    "queue",
    [
        {},
        {"due_at": LATER, "due_priority": Priority.RECONCILE},
        {"sync_requested": 4, "due_at": LATER},
        {"sync_requested": 4, "due_at": None},
        {"sync_requested": 4, "due_at": EARLIER, "retry_at": EARLIER},
        {"due_at": EARLIER, "retry_at": LATER, "due_priority": Priority.WRITE},
    ],
)
def test_the_receivers_text_of_the_sync_rule_is_the_rule(runtime: Runtime, queue: dict[str, Any]) -> None:
    by_rule, by_text = _calendar(runtime, **queue), _calendar(runtime, **queue)
    _owe(runtime, by_rule)
    with transaction(runtime.sessions) as session:
        session.execute(
            text(f"UPDATE calendars SET {owe_sync_sql(':now')} WHERE id = :id").bindparams(
                bindparam("now", NOW, type_=UTCDateTime()), id=by_text
            )
        )
    assert _queue(runtime, by_text) == _queue(runtime, by_rule)


def _list(runtime: Runtime, **queue: Any) -> int:
    with transaction(runtime.sessions) as session:
        account = Account(email=f"{next(_EMAILS)}@example.com", credentials=b"", scopes=[], **queue)
        session.add(account)
        session.flush()
        return account.id


def _list_queue(runtime: Runtime, account_id: int) -> tuple[int, datetime | None]:
    with runtime.sessions() as session:
        row = session.execute(select(Account.list_requested, Account.list_due_at).where(Account.id == account_id)).one()
        return row.list_requested, row.list_due_at


@pytest.mark.parametrize(
    ("queue", "due", "due_at_once"),
    [
        ({"list_due_at": LATER}, NOW, NOW),  # a periodic refresh ahead: now
        ({"list_due_at": LATER, "list_error_count": 2}, LATER, NOW),  # backing off: kept, unless at once
        ({"list_due_at": EARLIER, "list_error_count": 2}, NOW, NOW),  # a backoff that ran out
    ],
)
def test_a_list_refresh_is_owed_now_unless_a_failed_one_backs_off(
    runtime: Runtime, queue: dict[str, Any], due: datetime, due_at_once: datetime
) -> None:
    normal, at_once, by_text = (_list(runtime, list_requested=2, list_done=2, **queue) for _ in range(3))
    with transaction(runtime.sessions) as session:
        session.execute(update(Account).where(Account.id == normal).values(**owe_list_refresh(NOW)))
        session.execute(update(Account).where(Account.id == at_once).values(**owe_list_refresh(NOW, at_once=True)))
        session.execute(
            text(f"UPDATE accounts SET {owe_list_sql(':now')} WHERE id = :id").bindparams(
                bindparam("now", NOW, type_=UTCDateTime()), id=by_text
            )
        )
    assert _list_queue(runtime, normal) == _list_queue(runtime, by_text) == (3, due)
    assert _list_queue(runtime, at_once) == (3, due_at_once)
