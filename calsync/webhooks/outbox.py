"""The outbox: Delivery rows written in the same transaction as the changes they announce.

A change can then never be mirrored but not queued, nor queued but rolled back. Paused
subscriptions collect their deliveries (sent on resume); disabled ones get none.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.feed.rows import NewChange
from calsync.store.models import Calendar, Delivery, WebhookSubscription
from calsync.store.states import ChangeType, DeliveryState, Origin, SubscriptionStatus

QUEUED_STATUSES = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED)


def message_id(sub_id: str, seq: int) -> str:
    """The `webhook-id` of a message: stable across retries and replays, unique per subscription and change."""
    return f"msg_{sub_id}_{seq}"


def matches(sub: WebhookSubscription, change: NewChange, calendar_google_id: str | None) -> bool:
    """Whether `sub` wants `change`. Snapshot rows go only to those that name `event.snapshot`: a
    first sync writes one per event, which `*` must not turn into a flood. A subscription with an
    `origin` gets only the event rows of it (`google`: not the app's own writes through calsync)."""
    if change.type not in sub.events and ("*" not in sub.events or change.type == ChangeType.EVENT_SNAPSHOT):
        return False
    if sub.origin is not None and change.kind is not None and (change.origin or Origin.GOOGLE) != sub.origin:
        return False
    return not sub.calendars or calendar_google_id in sub.calendars


def enqueue(session: Session, changes: Sequence[NewChange], now: datetime) -> int:
    """Queue one delivery per (matching subscription, change); call before the commit."""
    if not changes:
        return 0
    subs = session.scalars(
        select(WebhookSubscription)
        .where(WebhookSubscription.status.in_(QUEUED_STATUSES))
        .order_by(WebhookSubscription.id)
    ).all()
    if not subs:
        return 0
    cal_ids = {c.calendar_id for c in changes if c.calendar_id is not None}
    google_ids: dict[int, str] = {
        row.id: row.google_id
        for row in session.execute(select(Calendar.id, Calendar.google_id).where(Calendar.id.in_(cal_ids)))
    }
    count = 0
    for change in changes:
        google_id = google_ids[change.calendar_id] if change.calendar_id is not None else None
        for sub in subs:
            if matches(sub, change, google_id):
                session.add(
                    Delivery(
                        subscription_id=sub.id,
                        change_seq=change.seq,
                        message_id=message_id(sub.id, change.seq),
                        state=DeliveryState.PENDING,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
                count += 1
    return count
