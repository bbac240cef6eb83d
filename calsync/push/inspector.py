"""The notification log as the dashboard's inspector reads it: newest first, with the calendar watched.

The receiver writes the log (`calsync.push.intake_sql`) and trims it to the last
`CALSYNC_NOTIFICATION_LOG_SIZE` rows; this is its one reader.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.store.models import Calendar, Channel, Notification
from calsync.store.states import NOT_ACCEPTED_NOTIFICATION


def logged_notifications(
    session: Session, limit: int, *, channel: str | None = None, after: int | None = None, show: str = "accepted"
) -> list[tuple[Notification, str | None]]:
    """The newest `limit` notifications (of one channel, newer than `after`), each with its calendar's title.

    One history at a time: our channels' (`accepted`), or the refused and malformed (`refused`).
    """
    query = (
        select(Notification, Calendar.summary)
        .outerjoin(Channel, Channel.id == Notification.channel_id)
        .outerjoin(Calendar, Calendar.id == Channel.calendar_id)
        .order_by(Notification.id.desc())
        .limit(limit)
    )
    if channel:
        query = query.where(Notification.channel_id == channel)
    refused = Notification.outcome.in_(sorted(NOT_ACCEPTED_NOTIFICATION))
    query = query.where(refused if show == "refused" else ~refused)
    if after is not None:
        query = query.where(Notification.id > after)
    return [(n, summary) for n, summary in session.execute(query)]
