"""Applying one page of Google's events to the local mirror, and naming the real differences.

The mirror holds what Google holds: series and exceptions unexpanded, cancelled exceptions of live
series included, deleted events excluded. Every decision compares Google's JSON with the mirrored
JSON, so a replayed page (after a crash, or a 410 resync) finds nothing new and writes no Change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import String, Select, bindparam, func, insert, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased

from calsync.db import is_postgres
from calsync.diff import changed_fields, event_time_text, implied_occurrence
from calsync.models import Change, Event

CANCELLED = "cancelled"
_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit
_PG_CHUNK = 5000  # ids per array parameter on PostgreSQL (one query per page of 2,500)


class PageMirror:
    """The mirrored events of one calendar, as seen inside one page's transaction."""

    def __init__(self, session: Session, calendar_id: int, *, gen: int | None, record: bool) -> None:
        self.session = session
        self.calendar_id = calendar_id
        self.gen = gen  # set during a full sync: every event seen is stamped with it
        self.record = record  # False during the baseline: events are written, no Change rows
        self.changes: list[Change] = []
        self._rows: dict[str, Event | None] = {}
        self._exceptions: dict[str, list[Event]] = {}
        # New rows of this page, not in the session: inserted with one executemany at the end of
        # `apply` (an ORM flush of thousands of new objects costs more than the database's work).
        self._new: dict[str, Event] = {}
        self._postgres = is_postgres(session)

    def apply(self, items: list[dict[str, Any]], deferred: list[dict[str, Any]]) -> None:
        """Apply a page; cancelled occurrences whose series is not mirrored yet wait in `deferred`.

        A series may come on a later page than the cancellation of one of its occurrences; the sync
        token advances only with the last page, so holding such items in memory loses nothing.
        """
        self._load(i["id"] for i in items + deferred)
        self._load(i["recurringEventId"] for i in items + deferred if i.get("recurringEventId"))
        live = [i for i in items if i.get("status") != CANCELLED]
        gone = [i for i in items if i.get("status") == CANCELLED and not i.get("recurringEventId")]
        occurrences = [i for i in items if i.get("status") == CANCELLED and i.get("recurringEventId")]
        for item in live:
            self._put_live(item)
        self._load_exceptions(i["id"] for i in gone)
        for item in gone:
            self._put_gone(item)
        retry = deferred + occurrences
        deferred.clear()
        for item in retry:
            if not self._put_cancelled_occurrence(item):
                deferred.append(item)
        self._insert_new()

    def finish(self, deferred: list[dict[str, Any]]) -> None:
        """Last page: cancelled occurrences of series we never saw stay unmirrored (nothing to hide)."""
        deferred.clear()

    def sweep(self) -> None:
        """Last page of a full sync: whatever the listing did not show any more is gone from Google."""
        assert self.gen is not None
        stale = self.session.scalars(select(Event).where(
            Event.calendar_id == self.calendar_id, Event.seen_gen < self.gen)).all()
        for row in sorted(stale, key=lambda r: r.recurring_event_id is not None):
            if self._rows.get(row.google_id, row) is not None:
                self._rows[row.google_id] = row
                self._remove(row)

    # Live events -------------------------------------------------------------------------------
    def _put_live(self, item: dict[str, Any]) -> None:
        row = self._rows.get(item["id"])
        if row is not None and row.status != CANCELLED:
            fields = changed_fields(row.data, item)
            if fields:
                self._change(item["id"], "updated", fields, row.data, item)
            self._write(row, item)
            return
        parent = self._live_parent(item)
        original = item.get("originalStartTime")
        if row is None and parent is not None and isinstance(original, dict):
            # A modified occurrence: it existed before as the series implied it.
            before = implied_occurrence(parent.data, item["id"], original)
            fields = changed_fields(before, item)
            if fields:
                self._change(item["id"], "updated", fields, before, item)
        else:
            # New, or back after a cancellation we mirrored.
            self._change(item["id"], "created", [], None, item)
        self._write(row, item)

    # Cancelled events --------------------------------------------------------------------------
    def _put_gone(self, item: dict[str, Any]) -> None:
        """A cancelled single event or series: remove it (a series takes its exceptions along)."""
        row = self._rows.get(item["id"])
        if row is not None:
            self._remove(row)
        else:
            self._remove_exceptions(item["id"])

    def _put_cancelled_occurrence(self, item: dict[str, Any]) -> bool:
        """Keep a cancelled occurrence of a live series (it hides one instance); False to defer."""
        row = self._rows.get(item["id"])
        series_id = item["recurringEventId"]
        self._load([series_id])
        parent = self._rows.get(series_id)
        if parent is None:
            if row is not None:
                self._remove(row)
                return True
            return False
        if parent.status == CANCELLED or parent.data.get("recurrence") is None:
            if row is not None:
                self._remove(row)
            return True
        if row is None or row.status != CANCELLED:
            original = item.get("originalStartTime")
            before = row.data if row is not None else (
                implied_occurrence(parent.data, item["id"], original) if isinstance(original, dict)
                else {"id": item["id"], "recurringEventId": series_id})
            self._change(item["id"], "deleted", [], before, None)
        self._write(row, item)
        return True

    def _remove(self, row: Event) -> None:
        if row.status != CANCELLED:
            self._change(row.google_id, "deleted", [], row.data, None)
        if self._new.get(row.google_id) is row:
            del self._new[row.google_id]  # written earlier in this page, never stored
        else:
            self.session.delete(row)
        self._rows[row.google_id] = None
        if row.recurring_event_id is None:
            self._remove_exceptions(row.google_id)

    def _remove_exceptions(self, series_id: str) -> None:
        self._load_exceptions([series_id])
        for row in self._exceptions.pop(series_id):
            if self._rows.get(row.google_id) is row:
                self._remove(row)

    # Rows --------------------------------------------------------------------------------------
    def _live_parent(self, item: dict[str, Any]) -> Event | None:
        series_id = item.get("recurringEventId")
        if not series_id:
            return None
        parent = self._rows.get(series_id)
        if parent is None or parent.status == CANCELLED or not parent.data.get("recurrence"):
            return None
        return parent

    def _write(self, row: Event | None, item: dict[str, Any]) -> Event:
        """Store Google's JSON as it is (also when only etag/updated/sequence moved)."""
        if row is None:
            row = Event(calendar_id=self.calendar_id, google_id=item["id"])
            self._new[item["id"]] = row
            self._rows[item["id"]] = row
        row.status = str(item.get("status") or "confirmed")
        row.etag = item.get("etag")
        row.updated = item.get("updated")
        row.recurring_event_id = item.get("recurringEventId")
        row.start = event_time_text(item.get("start"))
        row.end = event_time_text(item.get("end"))
        row.data = item
        row.seen_gen = self.gen if self.gen is not None else (row.seen_gen or 0)
        return row

    def _change(self, event_id: str, kind: str, fields: list[str], before: dict[str, Any] | None,
                after: dict[str, Any] | None) -> None:
        if self.record:
            self.changes.append(Change(calendar_id=self.calendar_id, event_id=event_id, kind=kind,
                                       fields=fields, before=before, after=after))

    def _load_exceptions(self, series_ids: Iterable[str]) -> None:
        """Mirrored exceptions of these series, in one query per chunk (pending writes flushed first)."""
        wanted = [i for i in dict.fromkeys(series_ids) if i not in self._exceptions]
        if wanted:
            self._attach_new()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            for series_id in chunk:
                self._exceptions[series_id] = []
            for row in self.session.scalars(select(Event).where(
                    Event.calendar_id == self.calendar_id, Event.recurring_event_id.in_(chunk))):
                self._exceptions[row.recurring_event_id or ""].append(row)
                self._rows.setdefault(row.google_id, row)

    def _load(self, ids: Iterable[str]) -> None:
        wanted = [i for i in dict.fromkeys(ids) if i not in self._rows]
        size = _PG_CHUNK if self._postgres else _CHUNK
        for start in range(0, len(wanted), size):
            chunk = wanted[start:start + size]
            query = self._by_ids_pg(chunk) if self._postgres else select(Event).where(
                Event.calendar_id == self.calendar_id, Event.google_id.in_(chunk))
            found = {row.google_id: row for row in self.session.scalars(query)}
            for google_id in chunk:
                self._rows[google_id] = found.get(google_id)

    def _by_ids_pg(self, ids: list[str]) -> Select[tuple[Event]]:
        """One unique-index probe per id, whatever the table's statistics say.

        `google_id IN (...)` (or `= ANY`) on a freshly filled `events` table, whose statistics still
        say it is nearly empty, is planned as a scan of all the calendar's rows filtered by the list:
        seconds per page at 100,000 events. A LATERAL subquery with LIMIT is not flattened into a
        join, so each id becomes an equality on the whole unique key (calendar_id, google_id), which
        the planner always answers from the index.
        """
        wanted = func.unnest(bindparam("ids", ids, type_=ARRAY(String))).table_valued("gid").render_derived()
        probe = (select(Event).where(Event.calendar_id == self.calendar_id, Event.google_id == wanted.c.gid)
                 .limit(1).lateral("probe"))
        row = aliased(Event, probe)
        return select(row).select_from(wanted).join(probe, true())

    def _insert_new(self) -> None:
        """Store this page's new rows in one executemany, after the session's own pending writes.

        The session is flushed first so a row deleted and written again in this page is deleted
        before it is inserted. The inserted rows leave `_rows`: a later lookup loads them as the
        session's own objects, as it would any stored row.
        """
        if not self._new:
            return
        self.session.flush()
        self.session.execute(insert(Event.__table__), [_values(row) for row in self._new.values()])
        for google_id in self._new:
            del self._rows[google_id]
        self._new.clear()

    def _attach_new(self) -> None:
        """Before a query that must see this page's new rows (exceptions by series): hand them to the session."""
        self.session.add_all(self._new.values())
        self._new.clear()


def _values(row: Event) -> dict[str, object]:
    return {"calendar_id": row.calendar_id, "google_id": row.google_id, "status": row.status, "etag": row.etag,
            "updated": row.updated, "recurring_event_id": row.recurring_event_id, "start": row.start,
            "end": row.end, "data": row.data, "seen_gen": row.seen_gen}
