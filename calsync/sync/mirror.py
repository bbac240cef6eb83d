"""Applying one page of Google's events to the local mirror, and naming the real differences.

The mirror holds what Google holds: series and exceptions unexpanded, cancelled exceptions of live
series included, deleted events excluded. Every decision compares Google's JSON with the mirrored
JSON, so a replayed page (after a crash, or a 410 resync) finds nothing new and writes no Change.

Every version a row takes is one Change, so the feed folded from its start is the mirror: a row
written sets the event (`snapshot` in the calendar's first full sync, else `created` or
`updated`), a row removed is `deleted`. An occurrence cancelled in a live series is kept as Google
lists it, so it is an `updated` whose `after` says `"status": "cancelled"`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import (
    Select,
    String,
    Text,
    bindparam,
    cast,
    func,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from calsync.clock import event_datetime
from calsync.feed.rows import FeedRow
from calsync.store.bulk import insert_rows, json_text
from calsync.store.db import compiled_for_postgres, is_postgres
from calsync.store.jsontext import printable
from calsync.store.models import Event
from calsync.store.states import ChangeKind, ChangeType
from calsync.sync.diff import CANCELLED, changed_fields, event_time_text, implied_occurrence

_CHUNK = 500  # series ids per IN (...) list, well under SQLite's bound-parameter limit


class PageMirror:
    """The mirrored events of one calendar, as seen inside one page's transaction."""

    def __init__(
        self,
        session: Session,
        calendar_id: int,
        *,
        gen: int | None,
        first: bool = False,
        fresh: bool = False,
        skipped: dict[str, str] | None = None,
        written: dict[str, str | None] | None = None,
    ) -> None:
        self.session = session
        self.calendar_id = calendar_id
        self.gen = gen  # set during a full sync: every event seen is stamped with it
        # The calendar's first full sync, begun now or resumed after a crash: a row not yet
        # mirrored is a snapshot; one an interrupted attempt stored is compared like any other.
        self.first = first
        # True when the mirror held no row of this calendar as this full listing began: a live
        # event's id is then taken as new without a lookup (see `apply`).
        self.fresh = fresh
        self.changes: list[FeedRow] = []
        # Events this listing could not apply, by id, with the reason: left as they were (never
        # swept away), reported on the calendar, and listed again by the next sync.
        self.skipped: dict[str, str] = skipped if skipped is not None else {}
        # Events written through calsync since this listing began, with the `updated` of the version
        # written (or deleted): the listing may show them as they were before (see `_superseded`).
        self.written: dict[str, str | None] = written or {}
        self._rows: dict[str, _Row | None] = {}
        self._exceptions: dict[str, list[Event]] = {}
        # New rows of this page, plain objects outside the session: inserted in bulk at the end of
        # `apply` (ORM objects and their flush cost more than the database's own work).
        self._new: dict[str, _NewRow] = {}
        self._postgres = is_postgres(session)

    def apply(self, items: list[dict[str, Any]], deferred: list[dict[str, Any]]) -> None:
        """Apply a page; cancelled occurrences whose series is not mirrored yet wait in `deferred`.

        A series may come on a later page than the cancellation of one of its occurrences; the sync
        token advances only with the last page, so holding such items in memory loses nothing.

        In a fresh listing the only stored rows are those of its earlier pages, so a live event is
        nearly always new: its id is not looked up, and the rare one listed again on a later page
        fails its insert on the unique key; the page is then rolled back to a savepoint and applied
        again with every id looked up. Ids of cancelled events are always looked up: a cancellation
        deletes, and a wrong guess there would not fail, it would leave the row.

        An event calsync cannot store or read (see `unusable`) is left out and named in `skipped`:
        one such event must not stop the rest of its page, nor its calendar.
        """
        items = self._admit(items)
        if self.fresh:
            kept = list(deferred)
            try:
                with self.session.begin_nested():
                    self._apply(items, deferred, look_up_live=False)
                return
            except (IntegrityError, self.session.get_bind().dialect.loaded_dbapi.IntegrityError):
                self.changes.clear()
                self._rows.clear()
                self._exceptions.clear()
                self._new.clear()
                deferred[:] = kept
        self._apply(items, deferred, look_up_live=True)

    def _apply(self, items: list[dict[str, Any]], deferred: list[dict[str, Any]], *, look_up_live: bool) -> None:
        """Live events first, then cancelled ones, then occurrences waiting for their series; one insert."""
        pending = items + deferred
        self._load(i["id"] for i in pending if look_up_live or i.get("status") == CANCELLED)
        self._load(i["recurringEventId"] for i in pending if i.get("recurringEventId"))
        live: list[dict[str, Any]] = []
        gone: list[dict[str, Any]] = []
        occurrences: list[dict[str, Any]] = []
        for item in items:
            if item.get("status") != CANCELLED:
                live.append(item)
                self._rows.setdefault(item["id"], None)  # looked up above, or taken as new
            else:
                (occurrences if item.get("recurringEventId") else gone).append(item)
        for item in live:
            self._guarded(self._put_live, item)
        self._load_exceptions(i["id"] for i in gone)
        for item in gone:
            self._guarded(self._put_gone, item)
        retry = deferred + occurrences
        deferred.clear()
        for item in retry:
            if self._guarded(self._put_cancelled_occurrence, item) is False:
                deferred.append(item)
        self._insert_new()

    def _admit(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items that can be stored; the others are named in `skipped`."""
        kept = []
        for item in items:
            problem = unusable(item)
            if problem is None:
                kept.append(item)
            else:
                self._skip(item, problem)
        return kept

    def _guarded(self, put: Callable[[dict[str, Any]], Any], item: dict[str, Any]) -> Any:
        """Apply one item; a shape the code cannot follow skips that item, not its page."""
        mark = len(self.changes)
        try:
            return put(item)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            del self.changes[mark:]
            self._skip(item, f"{type(err).__name__}: {err}")
            return None

    def _skip(self, item: Any, problem: str) -> None:
        event_id = item.get("id") if isinstance(item, dict) else None
        key = event_id if isinstance(event_id, str) and unusable_text(event_id, 1024) is None else ascii(event_id)
        self.skipped[key] = printable(problem)[:300]

    def finish(self, deferred: list[dict[str, Any]]) -> None:
        """Last page: cancelled occurrences of series we never saw stay unmirrored (nothing to hide)."""
        deferred.clear()

    def sweep(self) -> None:
        """Last page of a full sync: whatever the listing did not show any more is gone from Google."""
        assert self.gen is not None
        stale = self.session.scalars(
            select(Event).where(Event.calendar_id == self.calendar_id, Event.seen_gen < self.gen)
        ).all()
        for row in sorted(stale, key=lambda r: r.recurring_event_id is not None):
            if row.google_id in self.skipped:
                continue  # listed, but not applied: it is still in Google
            if self._rows.get(row.google_id, row) is not None:
                self._rows[row.google_id] = row
                self._remove(row)

    # Live events -------------------------------------------------------------------------------
    def _put_live(self, item: dict[str, Any]) -> None:
        row = self._rows.get(item["id"])
        if self._holds(row, item) or (row is None and self._superseded(item)):
            return
        if row is None and self.first:
            self._change(item["id"], ChangeKind.SNAPSHOT, [], None, item)
            self._write(row, item)
            return
        if row is not None and row.status != CANCELLED:
            if row.data != item:  # also when only etag/updated/sequence moved: the feed has every version
                self._change(item["id"], ChangeKind.UPDATED, changed_fields(row.data, item), row.data, item)
            self._write(row, item)
            return
        parent = self._live_parent(item)
        original = item.get("originalStartTime")
        if row is None and parent is not None and isinstance(original, dict):
            # A modified occurrence: it existed before as the series implied it.
            before = implied_occurrence(parent.data, item["id"], original)
            self._change(item["id"], ChangeKind.UPDATED, changed_fields(before, item), before, item)
        else:
            # New, or back after a cancellation we mirrored.
            self._change(item["id"], ChangeKind.CREATED, [], None, item)
        self._write(row, item)

    # Cancelled events --------------------------------------------------------------------------
    def _put_gone(self, item: dict[str, Any]) -> None:
        """A cancelled single event or series: remove it (a series takes its exceptions along)."""
        row = self._rows.get(item["id"])
        if self._holds(row, item):
            return
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
        if self._holds(row, item):
            return True
        if row is None and self.first:
            self._change(item["id"], ChangeKind.SNAPSHOT, [], None, item)
        elif row is None or row.data != item:
            original = item.get("originalStartTime")
            before = (
                row.data
                if row is not None
                else (
                    implied_occurrence(parent.data, item["id"], original)
                    if isinstance(original, dict)
                    else {"id": item["id"], "recurringEventId": series_id}
                )
            )
            self._change(item["id"], ChangeKind.UPDATED, changed_fields(before, item), before, item)
        self._write(row, item)
        return True

    def _remove(self, row: _Row) -> None:
        self._change(row.google_id, ChangeKind.DELETED, [], row.data, None)
        if isinstance(row, _NewRow):
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
    def _holds(self, row: _Row | None, item: dict[str, Any]) -> bool:
        """Whether the mirror already holds this version of the event, or a newer one.

        A write through calsync stores Google's answer at once (calsync.sync.writes); the sync that
        the write's notification then causes lists the same version (the same etag): it is neither
        stored again nor written to the feed a second time. A listing made before such a write but
        applied after it carries an older `updated`: it must not take the mirror back. In a full
        sync the row still counts as seen.
        """
        if row is None:
            return False
        held = row.data
        etag = item.get("etag")
        same = etag is not None and held.get("etag") == etag
        if not same and not _older(item.get("updated"), held.get("updated")) and not self._superseded(item):
            return False
        if isinstance(row, Event) and self.gen is not None:
            row.seen_gen = max(row.seen_gen or 0, self.gen)
        return True

    def _superseded(self, item: dict[str, Any]) -> bool:
        """Whether a listed version predates a write through calsync made since the listing began.

        `_holds` tells an older listed version by its `updated`, but Google keeps `updated` when only
        the reminders change (a tie), and an event calsync deleted has no row left to compare with:
        a listing fetched before such a write and applied after it took the mirror back, and wrote
        the app's own write to the feed again as a change of Google's (an echo). A version no newer
        than the one written is not applied; a newer one (edited in Google since) is.
        """
        if item.get("id") not in self.written:
            return False
        written = self.written[item["id"]]
        return written is not None and not _older(written, item.get("updated"))

    def _live_parent(self, item: dict[str, Any]) -> _Row | None:
        series_id = item.get("recurringEventId")
        if not series_id:
            return None
        parent = self._rows.get(series_id)
        if parent is None or parent.status == CANCELLED or not parent.data.get("recurrence"):
            return None
        return parent

    def _write(self, row: _Row | None, item: dict[str, Any]) -> None:
        """Store Google's JSON as it is (also when only etag/updated/sequence moved)."""
        if row is None:
            self._new[item["id"]] = self._rows[item["id"]] = _NewRow(item, self.gen or 0)
        elif isinstance(row, _NewRow):  # listed twice in this page: the later version is the one
            row.data = item
        else:
            _set_columns(row, item)
            row.seen_gen = self.gen if self.gen is not None else (row.seen_gen or 0)

    def _change(
        self,
        event_id: str,
        kind: ChangeKind,
        fields: list[str],
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        self.changes.append(FeedRow(ChangeType.of_event(kind), self.calendar_id, event_id, fields, before, after))

    def _load_exceptions(self, series_ids: Iterable[str]) -> None:
        """Mirrored exceptions of these series, in one query per chunk (pending writes flushed first)."""
        wanted = [i for i in dict.fromkeys(series_ids) if i not in self._exceptions]
        if wanted:
            self._attach_new()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            for series_id in chunk:
                self._exceptions[series_id] = []
            for row in self.session.scalars(
                select(Event).where(Event.calendar_id == self.calendar_id, Event.recurring_event_id.in_(chunk))
            ):
                self._exceptions[row.recurring_event_id or ""].append(row)
                self._rows.setdefault(row.google_id, row)

    def known(self, google_id: str, row: Event | None) -> None:
        """The mirrored row of this id (None: not mirrored), read by the caller in this transaction
        (a write reads it with its calendar's generation, in one statement): not looked up again."""
        self._rows[google_id] = row

    def _load(self, ids: Iterable[str]) -> None:
        """Mirrored rows of these ids (None where there is none), in one query however many."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self._rows]
        if not wanted:
            return
        query = _BY_IDS_PG if self._postgres else _BY_IDS_SQLITE
        params = {"cal": self.calendar_id, "ids": json.dumps(wanted)}
        found = {row.google_id: row for row in self.session.scalars(query, params)}
        for google_id in wanted:
            self._rows[google_id] = found.get(google_id)

    def _insert_new(self) -> None:
        """Store this page's new rows in bulk, after the session's own pending writes.

        The session is flushed first so a row deleted and written again in this page is deleted
        before it is inserted. The inserted rows leave `_rows`: a later lookup loads them as the
        session's own objects, as it would any stored row.
        """
        if not self._new:
            return
        self.session.flush()
        insert_rows(
            self.session.connection(),
            Event.__table__,
            _INSERT_COLUMNS,
            [row.values(self.calendar_id) for row in self._new.values()],
        )
        for google_id in self._new:
            del self._rows[google_id]
        self._new.clear()

    def _attach_new(self) -> None:
        """Before a query that must see this page's new rows (exceptions by series): hand them to the session."""
        for google_id, new in self._new.items():
            row = new.to_event(self.calendar_id)
            self.session.add(row)
            self._rows[google_id] = row
        self._new.clear()


class _NewRow:
    """A row first seen in this page: Google's JSON and its generation; the columns follow at insert.

    A plain object, not an ORM one: for the thousands of new rows of a full sync, the ORM's
    bookkeeping cost more than the database's own work.
    """

    __slots__ = ("data", "seen_gen")

    def __init__(self, data: dict[str, Any], seen_gen: int) -> None:
        self.data = data
        self.seen_gen = seen_gen

    @property
    def google_id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data.get("status") or "confirmed")

    @property
    def recurring_event_id(self) -> str | None:
        return self.data.get("recurringEventId")

    def values(self, calendar_id: int) -> tuple[Any, ...]:
        """The row in `_INSERT_COLUMNS` order, `data` as JSON text."""
        data = self.data
        return (calendar_id, data["id"], *_columns(data), json_text(data), self.seen_gen)

    def to_event(self, calendar_id: int) -> Event:
        row = Event(calendar_id=calendar_id, google_id=self.google_id, seen_gen=self.seen_gen)
        _set_columns(row, self.data)
        return row


_Row = Event | _NewRow
_INSERT_COLUMNS = (
    "calendar_id",
    "google_id",
    "status",
    "etag",
    "updated",
    "recurring_event_id",
    "start",
    "end",
    "data",
    "seen_gen",
)


def _by_ids_pg() -> Select[Event]:
    """Rows by id on PostgreSQL: one unique-index probe per id, whatever the table's statistics say.

    `google_id IN (...)` (or `= ANY`) on a freshly filled `events` table, whose statistics still
    say it is nearly empty, is planned as a scan of all the calendar's rows filtered by the list:
    seconds per page at 100,000 events. A LATERAL subquery with LIMIT is not flattened into a
    join, so each id becomes an equality on the whole unique key (calendar_id, google_id), which
    the planner always answers from the index.
    """
    ids = cast(bindparam("ids", type_=Text), JSONB)  # one JSON array: a text parameter the driver passes as is
    wanted = func.jsonb_array_elements_text(ids).table_valued("gid").render_derived()
    probe = (
        select(Event)
        .where(Event.calendar_id == bindparam("cal"), Event.google_id == wanted.c.gid)
        .limit(1)
        .lateral("probe")
    )
    row = aliased(Event, probe)
    return compiled_for_postgres(select(row).select_from(wanted).join(probe, true()))


def _by_ids_sqlite() -> Select[Event]:
    """Rows by id on SQLite: the ids as one JSON array, so the statement is the same for any number."""
    wanted = func.json_each(bindparam("ids", type_=String)).table_valued("value")
    return select(Event).where(Event.calendar_id == bindparam("cal"), Event.google_id.in_(select(wanted.c.value)))


_BY_IDS_PG = _by_ids_pg()
_BY_IDS_SQLITE = _by_ids_sqlite()


def _older(updated: Any, than: Any) -> bool:
    """Whether RFC 3339 time `updated` is strictly before `than` (False when either is missing or malformed)."""
    if not isinstance(updated, str) or not isinstance(than, str):
        return False
    if len(updated) == len(than) and updated.endswith("Z") and than.endswith("Z"):
        return updated < than  # Google's own form (fixed width, UTC): text order is time order
    try:
        return event_datetime(updated, None) < event_datetime(than, None)  # a time with no offset is UTC
    except ValueError:
        return False


def _columns(item: dict[str, Any]) -> tuple[str, str | None, str | None, str | None, str | None, str | None]:
    """The columns an event row derives from Google's JSON: status, etag, updated, recurring event
    id, start, end (the order of `_INSERT_COLUMNS`)."""
    return (
        str(item.get("status") or "confirmed"),
        item.get("etag"),
        item.get("updated"),
        item.get("recurringEventId"),
        event_time_text(item.get("start")),
        event_time_text(item.get("end")),
    )


def unusable(item: Any) -> str | None:
    """Why calsync cannot store this listed event, or None when it can.

    Its JSON is stored as sent, whatever its strings hold. The columns derived from it (id, status,
    etag, times) are text on both engines, which holds neither NUL nor lone surrogates on
    PostgreSQL, and have bounded lengths: Google's own values always fit.
    """
    if not isinstance(item, dict):
        return f"not an event object: {type(item).__name__}"
    if not isinstance(item.get("id"), str) or not item["id"]:
        return "no id"
    try:
        values = _columns(item)
    except (TypeError, ValueError, AttributeError) as err:
        return f"unreadable fields: {err}"
    for name, value, limit in zip(_CHECKED, (item["id"], *values), _LIMITS, strict=True):
        if value is None:
            continue
        if not isinstance(value, str):
            return f"{name} is not a string"
        problem = unusable_text(value, limit)
        if problem is not None:
            return f"{name} {problem}"
    return None


def unusable_text(value: str, limit: int) -> str | None:
    """Why `value` cannot go into a text column of `limit` characters, or None."""
    if len(value) > limit:
        return f"is longer than {limit} characters"
    if "\x00" in value:
        return "holds a NUL character"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return "holds a lone surrogate"
    return None


_CHECKED = ("id", "status", "etag", "updated", "recurringEventId", "start", "end")
_LIMITS = (1024, 20, 100, 40, 1024, 40, 40)


def _set_columns(row: Event, item: dict[str, Any]) -> None:
    row.status, row.etag, row.updated, row.recurring_event_id, row.start, row.end = _columns(item)
    row.data = item
