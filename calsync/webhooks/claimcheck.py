"""The claim check: deliveries are kept after their last attempt, listed with every attempt, replayable.

A replay queues the same message again (same `webhook-id`, so consumers that did receive it can
drop the repeat) with a fresh retry schedule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from calsync.clock import rfc3339
from calsync.errors import InvalidSubscription
from calsync.store.models import Change, Delivery, DeliveryAttempt, WebhookSubscription
from calsync.store.states import DeliveryState

STATES = tuple(state.value for state in DeliveryState)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
REPLAYABLE = (DeliveryState.FAILED, DeliveryState.DELIVERED)


def list_deliveries(
    session: Session,
    sub: WebhookSubscription,
    *,
    state: str | None = None,
    limit: int = DEFAULT_LIMIT,
    with_attempts: bool = True,
) -> list[dict[str, Any]]:
    """The subscription's deliveries, newest seq first, each with its attempt log (oldest first)."""
    if state is not None and state not in STATES:
        raise InvalidSubscription("state", f"state: use {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidSubscription("limit", f"limit: between 1 and {MAX_LIMIT}")
    query = (
        select(Delivery, Change.type)
        .join(Change, Change.seq == Delivery.change_seq)
        .where(Delivery.subscription_id == sub.id)
        .order_by(Delivery.change_seq.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(Delivery.state == state)
    rows = session.execute(query).all()
    attempts: dict[int, list[DeliveryAttempt]] = defaultdict(list)
    if with_attempts and rows:
        for attempt in session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_([d.id for d, _ in rows]))
            .order_by(DeliveryAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [delivery_to_dict(d, change_type, attempts[d.id] if with_attempts else None) for d, change_type in rows]


def replay(session: Session, sub: WebhookSubscription, delivery_ids: Sequence[int] | None, now: datetime) -> list[int]:
    """Queue deliveries again (the named ones, or every failed one); returns the ids queued."""
    query = select(Delivery).where(Delivery.subscription_id == sub.id)
    if delivery_ids is None:
        query = query.where(Delivery.state == DeliveryState.FAILED)
    else:
        wanted = set(delivery_ids)
        query = query.where(Delivery.id.in_(wanted))
    deliveries = list(session.scalars(query.order_by(Delivery.change_seq).with_for_update()))
    if delivery_ids is not None:
        missing = sorted(set(delivery_ids) - {d.id for d in deliveries})
        if missing:
            raise InvalidSubscription("delivery_ids", f"delivery_ids: not deliveries of {sub.id}: {missing}")
        pending = [d.id for d in deliveries if d.state not in REPLAYABLE]
        if pending:
            raise InvalidSubscription("delivery_ids", f"delivery_ids: still pending, nothing to replay: {pending}")
    for delivery in deliveries:
        delivery.state = DeliveryState.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = now
        delivery.last_error = None
        delivery.lease_owner = None
        delivery.lease_until = None
        delivery.delivered_at = None
    return [d.id for d in deliveries]


def recent_deliveries(
    session: Session, sub: WebhookSubscription, *, state: str | None = None, limit: int = 25
) -> list[tuple[Delivery, list[DeliveryAttempt]]]:
    """The subscription's newest deliveries (in one state), each with its attempts, newest first (the dashboard's)."""
    query = select(Delivery).where(Delivery.subscription_id == sub.id)
    if state:
        if state not in STATES:
            return []  # no delivery is in a state that does not exist
        query = query.where(Delivery.state == state)
    items = list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit)))
    attempts: dict[int, list[DeliveryAttempt]] = defaultdict(list)
    if items:
        for attempt in session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_([d.id for d in items]))
            .order_by(DeliveryAttempt.id.desc())
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [(d, attempts[d.id]) for d in items]


def failed_counts(session: Session) -> dict[str, int]:
    """Deliveries failed for good, by subscription id (subscriptions without any are absent)."""
    rows = session.execute(
        select(Delivery.subscription_id, func.count())
        .where(Delivery.state == DeliveryState.FAILED)
        .group_by(Delivery.subscription_id)
    ).all()
    return {sub_id: int(count) for sub_id, count in rows}


def delivery_to_dict(delivery: Delivery, change_type: str, attempts: list[DeliveryAttempt] | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": delivery.id,
        "message_id": delivery.message_id,
        "seq": delivery.change_seq,
        "type": change_type,
        "state": delivery.state,
        "attempt_count": delivery.attempts,
        "next_attempt_at": rfc3339(delivery.next_attempt_at),
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": rfc3339(delivery.created_at),
        "delivered_at": rfc3339(delivery.delivered_at),
    }
    if attempts is not None:
        item["attempts"] = [
            {
                "attempted_at": rfc3339(a.attempted_at),
                "status": a.status_code,
                "latency_ms": a.latency_ms,
                "response_excerpt": a.response_excerpt,
                "error": a.error,
            }
            for a in attempts
        ]
    return item
