"""Lifecycle rows of the change feed: an account connected, in need of consent again, disconnected; a
calendar added to or removed from its account's list, and its first full sync complete.

They are Change rows without an event, written with `append_changes` in the transaction of the step
they announce, so they take their place in seq order among the event rows and are queued as
webhooks like them. What they say beyond the account and the calendar (the calendar's name, why the
grant died) is kept in `after` as it stood when the row was written, so a message retried later
sends the same bytes; the API shows it as keys of the row of its own (`reads.lifecycle_details`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.feed.append import append_changes
from calsync.feed.rows import FeedRow
from calsync.store.models import Calendar
from calsync.store.states import ChangeType

REASON_LIMIT = 500


def account_change(change_type: ChangeType, account_id: int, *, reason: str | None = None) -> FeedRow:
    """An `account.*` row; a reauth row keeps Google's reason."""
    after = {"reason": (reason or "")[:REASON_LIMIT]} if change_type == ChangeType.ACCOUNT_REAUTH_REQUIRED else None
    return FeedRow(type=change_type, account_id=account_id, after=after)


def calendar_changes(session: Session, change_type: ChangeType, calendar_ids: Collection[int]) -> list[FeedRow]:
    """One `calendar.*` row per calendar, in id order, each with the calendar's name as it stands."""
    if not calendar_ids:
        return []
    rows = session.execute(
        select(Calendar.id, Calendar.account_id, Calendar.summary)
        .where(Calendar.id.in_(list(calendar_ids)))
        .order_by(Calendar.id)
    )
    return [
        FeedRow(type=change_type, account_id=account_id, calendar_id=cal_id, after={"summary": summary})
        for cal_id, account_id, summary in rows
    ]


def record_first_sync(session: Session, calendar_id: int, now: datetime) -> None:
    """`calendar.synced`, in the last page's transaction after its rows: every row of the calendar's
    first full sync comes before it in the feed."""
    append_changes(session, calendar_changes(session, ChangeType.CALENDAR_SYNCED, [calendar_id]), now)
