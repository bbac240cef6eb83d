"""The change feed as people read it: a calendar's snapshot rows folded into one line.

A first sync writes one `event.snapshot` row per event, thousands for a big calendar; shown one
by one they would bury every real change. A run is a calendar's snapshot rows between two of its
other event rows; it takes the place of its newest row, and it is shown once, on the page that
holds that row. Lifecycle rows are listed as they are; they neither end nor split a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, joinedload

from calsync.store.models import Calendar, Change
from calsync.store.states import EVENT_PREFIX, ChangeType

SCAN_CHUNK = 2000
MAX_SCAN = 100_000  # rows looked at for one page; past that, the page ends where the scan stopped


@dataclass(frozen=True)
class SnapshotRun:
    """Consecutive snapshot rows of one calendar, shown as one line."""

    calendar: Calendar
    first_seq: int
    last_seq: int
    count: int
    detected_at: datetime

    @property
    def seq(self) -> int:
        return self.last_seq


@dataclass(frozen=True)
class FeedWindow:
    """Entries newest first; `older` is the `below` of the next page, None when there is none."""

    entries: list[Change | SnapshotRun]
    older: int | None


def feed_window(
    session: Session, *, calendar_id: int | None = None, above: int = 0, below: int | None = None, limit: int = 50
) -> FeedWindow:
    """Up to `limit` entries with seq in (above, below), newest first, snapshot runs folded.

    A run that reaches `below` or beyond belongs to a newer page and is left out here; runs are
    clipped to seqs above `above`, so a live view's new rows form a run of their own.
    """
    entries: list[int | SnapshotRun] = []
    runs: dict[int, list[SnapshotRun]] = {}
    cursor, scanned, more = below, 0, False
    while len(entries) <= limit and scanned < MAX_SCAN:
        query = (
            select(Change.seq, Change.type, Change.calendar_id)
            .where(Change.seq > above)
            .order_by(Change.seq.desc())
            .limit(SCAN_CHUNK)
        )
        if cursor is not None:
            query = query.where(Change.seq < cursor)
        if calendar_id is not None:
            query = query.where(Change.calendar_id == calendar_id)
        chunk = session.execute(query).all()
        if not chunk:
            break
        for seq, type_, cal_id in chunk:
            if cursor is not None and seq >= cursor:
                continue  # inside a contiguous run jumped over below
            cursor, scanned = seq, scanned + 1
            if type_ != ChangeType.EVENT_SNAPSHOT:
                entries.append(seq)
            elif cal_id is not None and not any(run.first_seq <= seq <= run.last_seq for run in runs.get(cal_id, ())):
                run = _run_around(session, cal_id, seq, above)
                runs.setdefault(cal_id, []).append(run)
                if below is None or run.last_seq < below:
                    entries.append(run)
                if run.count == run.last_seq - run.first_seq + 1:
                    cursor = run.first_seq  # nothing else lies inside it: skip its rows
            if len(entries) > limit:
                break
        more = len(chunk) == SCAN_CHUNK or len(entries) > limit
    if len(entries) > limit:
        older: int | None = _position(entries[limit - 1])
    else:
        older = cursor if scanned >= MAX_SCAN and more else None
    return FeedWindow(_load(session, entries[:limit]), older)


# Helpers ---------------------------------------------------------------------------------------
def _event_rows() -> ColumnElement[bool]:
    return Change.type.startswith(EVENT_PREFIX)


def _run_around(session: Session, calendar_id: int, seq: int, above: int) -> SnapshotRun:
    """The run holding snapshot row `seq`: bounded by the calendar's nearest other event rows."""
    mine = (Change.calendar_id == calendar_id, _event_rows())
    other = Change.type != ChangeType.EVENT_SNAPSHOT
    low = session.scalar(select(func.max(Change.seq)).where(*mine, other, Change.seq < seq, Change.seq > above))
    high = session.scalar(select(func.min(Change.seq)).where(*mine, other, Change.seq > seq))
    bounds = [
        Change.calendar_id == calendar_id,
        Change.type == ChangeType.EVENT_SNAPSHOT,
        Change.seq > (low if low is not None else above),
    ]
    if high is not None:
        bounds.append(Change.seq < high)
    count, first, last = session.execute(
        select(func.count(), func.min(Change.seq), func.max(Change.seq)).where(*bounds)
    ).one()
    detected_at = session.scalar(select(Change.detected_at).where(Change.seq == last))
    calendar = session.get(Calendar, calendar_id, options=[joinedload(Calendar.account)])
    assert calendar is not None and detected_at is not None
    return SnapshotRun(calendar, int(first), int(last), int(count), detected_at)


def _position(entry: int | SnapshotRun) -> int:
    return entry if isinstance(entry, int) else entry.seq


def _load(session: Session, entries: list[int | SnapshotRun]) -> list[Change | SnapshotRun]:
    seqs = [e for e in entries if isinstance(e, int)]
    rows = (
        {
            c.seq: c
            for c in session.scalars(
                select(Change)
                .where(Change.seq.in_(seqs))
                .options(joinedload(Change.calendar).joinedload(Calendar.account), joinedload(Change.account))
            )
        }
        if seqs
        else {}
    )
    return [rows[e] if isinstance(e, int) else e for e in entries]
