"""Retention of the change feed: old rows go in small batches, and a cursor behind them is refused.

The counter row `changes_trimmed_through`, written in the same transaction as each batch, is the
highest seq retention has passed: every row at or below it is gone, except a row whose webhook
delivery is still pending, which stays for the outbox until it is delivered or fails. A row that
some webhook subscription's cursor has not passed yet is not trimmed either, so every message goes
out whole. Reading the feed after a cursor below that mark would skip rows without a sign, so it
is refused instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from calsync.feed.cursor import TRIMMED_COUNTER
from calsync.metrics import CHANGES_TRIMMED
from calsync.store.db import is_postgres, rows_affected
from calsync.store.models import Change, Counter, Delivery, WebhookSubscription
from calsync.store.states import DeliveryState

BATCH = 1000


def trim_changes(session: Session, cutoff: datetime, limit: int = BATCH) -> int:
    """One batch: delete up to `limit` of the oldest rows detected before `cutoff`; how many went.

    Rows go as a prefix of seq order (a row detected later stops the batch), so what is kept is
    every seq above the mark. Rows held back earlier for a pending delivery are looked at again.
    Another worker trimming at the same moment makes this batch a no-op rather than a wait.
    """
    through = _lock_mark(session)
    if through is None:
        return 0
    ahead_query = select(Change.seq, Change.detected_at).where(Change.seq > through)
    slowest = session.scalar(select(func.min(WebhookSubscription.cursor_seq)))
    if slowest is not None:
        ahead_query = ahead_query.where(Change.seq <= slowest)
    ahead = session.execute(ahead_query.order_by(Change.seq).limit(limit)).all()
    old = [seq for seq, _ in _prefix_before(ahead, cutoff)]
    held = list(session.scalars(select(Change.seq).where(Change.seq <= through).order_by(Change.seq).limit(limit)))
    candidates = held + old
    if not candidates:
        return 0
    pending = exists().where(Delivery.change_seq == Change.seq, Delivery.state == DeliveryState.PENDING)
    deleted = rows_affected(
        session.execute(
            delete(Change).where(Change.seq.in_(candidates), ~pending).execution_options(synchronize_session=False)
        )
    )
    if old:
        session.execute(update(Counter).where(Counter.name == TRIMMED_COUNTER).values(value=old[-1]))
    CHANGES_TRIMMED.inc(deleted)
    return deleted


# Helpers ---------------------------------------------------------------------------------------
def _prefix_before(rows: Sequence[tuple[int, datetime]], cutoff: datetime) -> list[tuple[int, datetime]]:
    out = []
    for row in rows:
        if row[1] >= cutoff:
            break
        out.append(row)
    return out


def _lock_mark(session: Session) -> int | None:
    """The mark, locked for this transaction; None when another transaction holds it (PostgreSQL)."""
    locked = select(Counter.value).where(Counter.name == TRIMMED_COUNTER)
    value = session.scalar(locked.with_for_update(skip_locked=True))
    if value is not None:
        return int(value)
    if session.scalar(select(Counter.name).where(Counter.name == TRIMMED_COUNTER)) is not None:
        return None  # it exists, so another worker is trimming right now
    insert = pg_insert if is_postgres(session) else sqlite_insert
    session.execute(insert(Counter).values(name=TRIMMED_COUNTER, value=0).on_conflict_do_nothing())
    return int(session.scalar(locked.with_for_update()) or 0)
