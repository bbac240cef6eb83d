"""Owed work: one more sync of a calendar, one more refresh of an account's calendar list.

Work is owed in counters: `requested > done` means a run is owed, and a finished run settles only
the requests it was claimed for, so requests that arrive while it runs leave exactly one more owed.
Each rule below is written once, as SQLAlchemy values for an UPDATE. The receiver applies the same
rules inside statements of its own on the driver's cursor: `owe_sync_sql` and `owe_list_sql` are
the same values compiled to text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import ColumnElement, and_, case, literal_column, update
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.orm import Session

from calsync.store.models import Account, Calendar
from calsync.store.states import Priority

When: TypeAlias = datetime | ColumnElement[Any]


def due_unless_backing_off(now: When) -> ColumnElement[Any]:
    """A calendar's due time when made due now: a backoff's retry time is never cut short."""
    return case((Calendar.retry_at > now, Calendar.retry_at), else_=now)


def at_most(priority: Priority) -> ColumnElement[Any]:
    """A calendar's `due_priority` raised to `priority`: one already owing something more urgent keeps that."""
    return case((Calendar.due_priority > int(priority), int(priority)), else_=Calendar.due_priority)


def owe_sync(now: When, *, at_once: bool = False) -> dict[str, Any]:
    """One more sync of the calendars an UPDATE names.

    By default (a notification, or the seam of a new channel) a sync already owed keeps its time:
    one owed for later (a backoff's retry, or the follow-up of a burst) is never cut short nor
    turned into one call per message, and one already due is not pushed back. Leaving `due_at`
    alone when a sync is already owed also lets PostgreSQL update the row in place (no index entry
    changes) under a burst. The sync is owed to a notification, so it is claimed before renewals,
    first syncs and reconciliations.

    `at_once` (a re-connected account, a calendar back in the list) makes it due now, backoff over,
    at the priority it had.
    """
    more = Calendar.sync_requested + 1
    if at_once:
        return {"sync_requested": more, "due_at": now, "retry_at": None}
    already_owed = and_(Calendar.sync_requested > Calendar.sync_done, Calendar.due_at.is_not(None))
    return {
        "sync_requested": more,
        "due_at": case((Calendar.retry_at > now, Calendar.retry_at), (already_owed, Calendar.due_at), else_=now),
        "due_priority": at_most(Priority.NOTIFICATION),
    }


def list_due_unless_backing_off(now: When) -> ColumnElement[Any]:
    """An account's list due time when made due now: a failed refresh's retry is never cut short."""
    backing_off = and_(Account.list_error_count > 0, Account.list_due_at > now)
    return case((backing_off, Account.list_due_at), else_=now)


def owe_list_refresh(now: When, *, at_once: bool = False) -> dict[str, Any]:
    """One more refresh of the calendar lists an UPDATE names: due now, unless a failed one is
    backing off; `at_once` (a new consent, a calendar Google no longer knows) cuts the backoff short."""
    return {
        "list_requested": Account.list_requested + 1,
        "list_due_at": now if at_once else list_due_unless_backing_off(now),
    }


def _set_clause(values: dict[str, Any]) -> str:
    dialect = DefaultDialect()
    return ",\n       ".join(
        f"{column} = {value.compile(dialect=dialect, compile_kwargs={'literal_binds': True})}"
        for column, value in values.items()
    )


def owe_sync_sql(now: str) -> str:
    """`owe_sync` as the SET list of a hand-written UPDATE of calendars (`now` is the driver's placeholder)."""
    return _set_clause(owe_sync(literal_column(now)))


def owe_list_sql(now: str) -> str:
    """`owe_list_refresh` as the SET list of a hand-written UPDATE of accounts."""
    return _set_clause(owe_list_refresh(literal_column(now)))


def request_calendar_sync(session: Session, calendar_id: int, now: datetime) -> None:
    """Owe one more sync of a calendar, as a notification does (an operator's renewals, the tests)."""
    session.execute(update(Calendar).where(Calendar.id == calendar_id).values(**owe_sync(now)))
