"""Writing the diff log: seq numbers are taken from a locked counter so seq order is commit order.

A reader paging with `after=SEQ` must never see seq 7 committed after it has read seq 8; taking the
counter row's lock as the last step of a transaction serialises the commits that write changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from calsync.metrics import CHANGES
from calsync.store.models import Change, Counter
from calsync.webhooks.outbox import enqueue

SEQ_COUNTER = "change_seq"


def append_changes(session: Session, changes: Sequence[Change], now: Any) -> Sequence[Change]:
    """Give `changes` their seq numbers, add them, and queue their webhook deliveries."""
    if not changes:
        return changes
    last = session.execute(
        update(Counter).where(Counter.name == SEQ_COUNTER)
        .values(value=Counter.value + len(changes)).returning(Counter.value)
    ).scalar_one()
    first = last - len(changes) + 1
    for offset, change in enumerate(changes):
        change.seq = first + offset
        change.detected_at = now
        session.add(change)
        CHANGES.labels(change.kind).inc()
    session.flush()
    enqueue(session, changes, now)
    return changes
