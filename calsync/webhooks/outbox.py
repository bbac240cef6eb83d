"""The outbox: Delivery rows written in the same transaction as the changes they announce."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.models import Calendar, Change, Delivery, WebhookSubscription


def event_type(change: Change) -> str:
    return f"event.{change.kind}"


def matches(sub: WebhookSubscription, change: Change, calendar_google_id: str) -> bool:
    if "*" not in sub.events and event_type(change) not in sub.events:
        return False
    return not sub.calendars or calendar_google_id in sub.calendars


def enqueue(session: Session, changes: Sequence[Change], now: datetime) -> int:
    """Queue one delivery per (matching active subscription, change); call before the commit."""
    if not changes:
        return 0
    subs = session.scalars(select(WebhookSubscription).where(WebhookSubscription.status == "active")).all()
    if not subs:
        return 0
    cal_ids = {c.calendar_id for c in changes}
    google_ids = dict(session.execute(select(Calendar.id, Calendar.google_id).where(Calendar.id.in_(cal_ids))).tuples())
    count = 0
    for change in changes:
        for sub in subs:
            if matches(sub, change, google_ids[change.calendar_id]):
                session.add(Delivery(subscription_id=sub.id, change_seq=change.seq,
                                     message_id=f"msg_{sub.id}_{change.seq}", state="pending",
                                     next_attempt_at=now, created_at=now))
                count += 1
    return count
