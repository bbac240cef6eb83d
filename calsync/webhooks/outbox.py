"""The outbox, filled from the feed: each subscription follows the feed with a cursor of its own.

The feed's writer knows nothing of webhooks. A worker moves every subscription's cursor over the
rows committed since it last looked and queues one delivery per matching row, in the same
transaction as the cursor's move, so a row is queued once or not at all. Seq order is commit order,
so a cursor that has passed a seq has seen every row below it. Paused subscriptions collect their
deliveries (sent on resume); disabled ones move on without queuing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from calsync.feed.cursor import newest_seq, newest_seq_value
from calsync.store.bulk import bound, insert_rows
from calsync.store.db import is_postgres
from calsync.store.models import Calendar, Change, Delivery, WebhookSubscription
from calsync.store.states import ChangeType, DeliveryState, Origin, SubscriptionStatus, event_kind

QUEUED_STATUSES = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED)
_DELIVERIES = Delivery.__table__
_COLUMNS = ("subscription_id", "change_seq", "message_id", "state", "attempts", "next_attempt_at", "created_at")
FILL_BATCH = 1000  # feed rows looked at per pass; a long backlog is worked through over passes
# Deliveries one pass queues at most: with 300 subscriptions, a pass of 1,000 rows queued 300,000 in
# one transaction, holding SQLite's write lock for seconds. The pass ends at the row that would pass
# it instead (never before its first).
FILL_DELIVERIES = 20_000


def message_id(sub_id: str, seq: int) -> str:
    """The `webhook-id` of a message: stable across retries and replays, unique per subscription and change."""
    return f"msg_{sub_id}_{seq}"


def matches(
    sub: WebhookSubscription, change_type: str, calendar_google_id: str | None, origin: str | None = Origin.GOOGLE
) -> bool:
    """Whether `sub` wants a row. Snapshot rows go only to those that name `event.snapshot`: a
    first sync writes one per event, which `*` must not turn into a flood. A subscription with an
    `origin` gets only the event rows of it (`google`: not the app's own writes through calsync);
    lifecycle rows have no origin of their own and always pass."""
    if change_type not in sub.events and ("*" not in sub.events or change_type == ChangeType.EVENT_SNAPSHOT):
        return False
    if sub.origin is not None and event_kind(change_type) is not None and (origin or Origin.GOOGLE) != sub.origin:
        return False
    return not sub.calendars or calendar_google_id in sub.calendars


def behind_the_feed() -> ColumnElement[bool]:
    """True while some subscription's cursor is below the newest seq: there may be messages to queue."""
    return (
        select(WebhookSubscription.id)
        .where(WebhookSubscription.cursor_seq < func.coalesce(newest_seq_value(), 0))
        .exists()
    )


def still_behind(session: Session) -> bool:
    """After a fill that queued nothing: whether a subscription is behind the feed all the same (read
    without a lock, so it sees the rows that the fill's SKIP LOCKED passed by)."""
    return bool(session.scalar(select(behind_the_feed())))


def fill(session: Session, now: datetime, limit: int = FILL_BATCH) -> int:
    """Move the cursors of the subscriptions behind the feed over up to `limit` rows (fewer once they
    make `FILL_DELIVERIES`); returns the number of deliveries queued. Call inside a
    transaction; another worker filling at the same moment takes other subscriptions (PostgreSQL) or
    waits its turn (SQLite)."""
    head = newest_seq(session)
    query = select(WebhookSubscription).where(WebhookSubscription.cursor_seq < head).order_by(WebhookSubscription.id)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    subs = list(session.scalars(query))
    if not subs:
        return 0
    low = min(sub.cursor_seq for sub in subs)
    rows = session.execute(
        select(Change.seq, Change.type, Calendar.google_id, Change.origin)
        .outerjoin(Calendar, Change.calendar_id == Calendar.id)
        .where(Change.seq > low, Change.seq <= head)
        .order_by(Change.seq)
        .limit(limit)
    ).all()
    # A full batch ends at its last row; a short one saw everything up to the head read above.
    reached = rows[-1].seq if len(rows) == limit else head
    queued, reached = _queue(subs, rows, reached)
    # Straight to the driver, as the feed's own rows: thousands of ORM objects cost more than the insert.
    connection = session.connection()
    at = bound(connection, _DELIVERIES.c.created_at, now)
    insert_rows(
        connection,
        _DELIVERIES,
        _COLUMNS,
        [(sub_id, seq, message_id(sub_id, seq), DeliveryState.PENDING.value, 0, at, at) for sub_id, seq in queued],
    )
    return len(queued)


def start_at_head(session: Session, sub: WebhookSubscription) -> None:
    """A new subscription hears of the changes committed after it, not of the feed's past."""
    sub.cursor_seq = newest_seq(session)


# Helpers ---------------------------------------------------------------------------------------
_FeedRow = tuple[int, str, str | None, str | None]  # seq, type, the calendar's Google id, origin


def _queue(
    subs: Sequence[WebhookSubscription], rows: Sequence[_FeedRow], reached: int
) -> tuple[list[tuple[str, int]], int]:
    """(subscription, seq) of the rows each subscription wants between its cursor and `reached`, row by
    row, up to the row whose deliveries would pass `FILL_DELIVERIES` (never none); moves the cursors
    to the last row taken, and returns them with it. Counted as they match, so that subscriptions
    that queue nothing (disabled) and rows that nobody wants do not shorten the pass."""
    queuing = [sub for sub in subs if sub.status in QUEUED_STATUSES]
    wanted: list[tuple[str, int]] = []
    for n, (seq, change_type, google_id, origin) in enumerate(rows):  # each at or below `reached`
        these = [
            (sub.id, seq) for sub in queuing if sub.cursor_seq < seq and matches(sub, change_type, google_id, origin)
        ]
        if wanted and len(wanted) + len(these) > FILL_DELIVERIES:
            reached = rows[n - 1][0]
            break
        wanted.extend(these)
    for sub in subs:
        sub.cursor_seq = max(sub.cursor_seq, reached)
    return wanted, reached
