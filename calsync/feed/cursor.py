"""The change feed's two counter rows: the newest seq given out, and how far retention has trimmed.

Both live in `counters` and move in the same transactions as the rows they count, so a reader's
snapshot sees them agree with the feed. Reading them needs no writer, so the read side (the API,
`calsync changes`, the dashboard) imports only this.
"""

from __future__ import annotations

from sqlalchemy import ScalarSelect, select
from sqlalchemy.orm import Session

from calsync.errors import CursorExpired
from calsync.store.models import Counter

SEQ_COUNTER = "change_seq"  # the newest seq given out; locked by each writer, so seq order is commit order
TRIMMED_COUNTER = "changes_trimmed_through"  # the highest seq retention has deleted or passed over


def newest_seq(session: Session) -> int:
    """The newest seq committed in this session's snapshot: every change up to it is visible in it.

    Read from the counter, which moves in the same transaction as the rows, so it stays right when
    retention has deleted every row.
    """
    return int(session.scalar(select(newest_seq_value())) or 0)


def newest_seq_value() -> ScalarSelect[int]:
    """`newest_seq` as a column, for a read that must see it in the same statement as other rows."""
    return select(Counter.value).where(Counter.name == SEQ_COUNTER).scalar_subquery()


def trimmed_through(session: Session) -> int:
    """The highest seq retention has deleted or passed over (0 while nothing was ever deleted)."""
    return int(session.scalar(select(Counter.value).where(Counter.name == TRIMMED_COUNTER)) or 0)


def check_cursor(session: Session, after: int) -> None:
    """Raise CursorExpired when rows right after `after` were deleted; `after` at the mark is fine."""
    through = trimmed_through(session)
    if after < through:
        raise CursorExpired(after, through + 1)
