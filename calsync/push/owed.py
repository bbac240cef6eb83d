"""What a notification owes: one more sync of its calendar, or a refresh of its calendar list.

The rule is SQL because the receiver's batches apply it inside their own statements on the driver's
cursor; `request_calendar_sync` applies the same rule for everyone else (renewals, the CLI).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from calsync.store.models import Calendar

# As SQL shared by the receiver's batches and `request_calendar_sync`
# ({now} is the driver's placeholder). A sync already owed keeps its time: one owed for later (a
# backoff's retry_at, or the follow-up of a burst) is never cut short nor turned into one call per
# message, and one already due is not pushed back. Leaving due_at alone when a sync is already owed
# also lets PostgreSQL update the row in place (no index entry changes) under a burst. The sync is
# owed to a notification, so it is claimed before renewals, first syncs and reconciliations
# (a calendar already owing something more urgent keeps that).
OWE_SYNC = """sync_requested = sync_requested + 1,
       due_at = CASE WHEN retry_at > {now} THEN retry_at
                     WHEN sync_requested > sync_done AND due_at IS NOT NULL THEN due_at
                     ELSE {now} END,
       due_priority = CASE WHEN due_priority > 1 THEN 1 ELSE due_priority END"""
OWE_LIST = """list_requested = list_requested + 1,
       list_due_at = CASE WHEN list_error_count > 0 AND list_due_at > {now} THEN list_due_at ELSE {now} END"""
_OWE_SYNC_ONE = text(f"UPDATE calendars SET {OWE_SYNC.format(now=':now')} WHERE id = :id").bindparams(
    bindparam("now", type_=Calendar.__table__.c.due_at.type), bindparam("id")
)


def request_calendar_sync(session: Session, calendar_id: int, now: datetime) -> None:
    """Owe one more sync of a calendar (the CLI's renewals and the tests; the receiver does the same
    in its batches). Coalescing lives in the counters."""
    session.execute(_OWE_SYNC_ONE, {"id": calendar_id, "now": now})
