"""Expanded occurrences and free/busy answered from the mirror, with no Google call.

Each calendar's rows are parsed into a `CalendarMirror` kept per process, with the calendar's
version: its newest change seq, the `last_synced_at` that the last page of every sync run sets,
its full-sync generation and its zone. A row written with a Change moves the seq at once; a row
rewritten without one (only etag/updated moved) moves `last_synced_at` when its run ends. When
the version moved, only the rows whose `updated` differs are read again. A calendar still in
its baseline is read afresh each time. Version and rows are read in one transaction (a
snapshot on both engines), so an answer never mixes two states of the mirror.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, select
from sqlalchemy.orm import Session

from calsync.clock import rfc3339
from calsync.store.counters import newest_seq
from calsync.store.db import is_postgres
from calsync.store.models import Calendar, Change, Event
from calsync.sync.occurrences import CalendarMirror, Occurrence, render, zone_of

SINGLE_EVENTS_DEFAULT_PAGE = 1000
SINGLE_EVENTS_MAX_PAGE = 2500
FREEBUSY_MAX_CALENDARS = 50
NOT_SYNCED = "notSynced"
NOT_FOUND = "notFound"

_Version = tuple[int | None, int, datetime | None, str | None]


class MirrorCache:
    """Parsed calendars by row id, each with the version it was parsed at (least recently used out).

    A calendar whose version moved is refreshed, not parsed again: the rows whose `updated`
    differs from the parsed one (or that are new) are read and parsed, rows gone are dropped,
    and every other event, with its series' expansion, is kept.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[_Version, CalendarMirror]] = OrderedDict()
        self._lock = threading.Lock()

    def mirrors(self, session: Session, calendars: Sequence[Calendar]) -> dict[int, CalendarMirror]:
        """The parsed mirror of each calendar as of this session's snapshot."""
        if not calendars:
            return {}
        ids = [c.id for c in calendars]
        newest: dict[int, int | None] = {cal_id: seq for cal_id, seq in session.execute(_NEWEST, {"ids": ids})}
        out: dict[int, CalendarMirror] = {}
        for cal in calendars:
            version: _Version = (newest.get(cal.id), cal.full_sync_gen, cal.last_synced_at, cal.time_zone)
            with self._lock:
                hit = self._entries.get(cal.id)
            if hit is not None and hit[0] == version and cal.baseline_done:
                mirror = hit[1]
            elif hit is not None and hit[1].time_zone == cal.time_zone:
                mirror = _refresh(session, cal.id, hit[1])
            else:
                rows = session.scalars(select(_DATA_TEXT).where(Event.calendar_id == cal.id)).all()
                mirror = CalendarMirror(rows, cal.time_zone)
            out[cal.id] = mirror
            with self._lock:
                if cal.baseline_done:
                    self._entries[cal.id] = (version, mirror)
                    self._entries.move_to_end(cal.id)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
                else:
                    self._entries.pop(cal.id, None)
        return out


def _refresh(session: Session, calendar_id: int, mirror: CalendarMirror) -> CalendarMirror:
    """`mirror` brought up to this snapshot by reading only the rows that differ from it."""
    known = mirror.versions()
    current: dict[str, str | None] = {event_id: updated for event_id, updated in session.execute(
        select(Event.google_id, Event.updated).where(Event.calendar_id == calendar_id))}
    stale = [event_id for event_id, updated in current.items()
             if event_id not in known or known[event_id] != updated or updated is None]
    removed = [event_id for event_id in known if event_id not in current]
    changed: list[str] = []
    for start in range(0, len(stale), _CHUNK):
        changed += session.scalars(select(_DATA_TEXT).where(
            Event.calendar_id == calendar_id, Event.google_id.in_(stale[start:start + _CHUNK]))).all()
    return mirror.refreshed(changed, removed)


_CHUNK = 500
# Each calendar's newest change: one backward probe of (calendar_id, seq) per calendar. A GROUP BY
# over the calendars' rows read every one of them (a first sync writes a row per event).
_CALS = Calendar.__table__
_NEWEST = (select(_CALS.c.id, select(func.max(Change.seq)).where(Change.calendar_id == _CALS.c.id)
                  .correlate(_CALS).scalar_subquery())
           .where(_CALS.c.id.in_(bindparam("ids", expanding=True))))
# The rows' JSON as text (parsed by orjson, and kept as text for single events).
_DATA_TEXT = cast(Event.data, Text)


MIRRORS = MirrorCache()


def snapshot(session: Session) -> None:
    """Make the rest of this read transaction one snapshot (PostgreSQL reads per statement otherwise)."""
    if is_postgres(session):
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def as_of_seq(session: Session) -> int:
    """The newest change seq this snapshot holds (0 before the first change)."""
    return newest_seq(session)


# --- events.list?singleEvents=true ------------------------------------------------------------------
def single_events_page(session: Session, calendar: Calendar, low: datetime, high: datetime, *,
                       page_token: str | None, page_size: int = SINGLE_EVENTS_DEFAULT_PAGE,
                       cache: MirrorCache = MIRRORS) -> dict[str, Any]:
    """One page of the calendar's occurrences in [low, high), ordered by start then id.

    The page token names the last item's (start, id), so an edit between pages neither repeats
    nor skips an item that did not move. ValueError for a token calsync did not hand out.
    """
    after = decode_occurrence_token(page_token) if page_token else None
    mirror = cache.mirrors(session, [calendar])[calendar.id]
    found = mirror.occurrences(low, high)
    if after is not None:
        found = [o for o in found if (o.start, o.id) > after]
    page, more = found[:page_size], len(found) > page_size
    return {"items": [o.item() for o in page],
            "nextPageToken": encode_occurrence_token(page[-1]) if more else None}


def encode_occurrence_token(last: Occurrence) -> str:
    text = f"o:{last.start.strftime('%Y%m%dT%H%M%S.%fZ')}:{last.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_occurrence_token(token: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, stamp, event_id = text.split(":", 2)
        if prefix != "o" or not event_id:
            raise ValueError(text)
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC), event_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as err:
        raise ValueError("malformed pageToken") from err


# --- freebusy.query -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalendarBusy:
    calendar_id: str
    busy: list[tuple[datetime, datetime]]
    errors: list[dict[str, str]]
    sync_state: str | None
    last_synced_at: datetime | None

    def to_dict(self, zone_name: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"busy": [{"start": _render(s, zone_name), "end": _render(e, zone_name)}
                                        for s, e in self.busy]}
        if self.errors:
            out["errors"] = self.errors
        out["sync_state"] = self.sync_state
        out["last_synced_at"] = rfc3339(self.last_synced_at)
        return out


def freebusy(session: Session, calendar_ids: Sequence[str], low: datetime, high: datetime, *,
             cache: MirrorCache = MIRRORS) -> tuple[int, list[CalendarBusy]]:
    """Busy blocks per calendar id, and the change seq they reflect, from one snapshot.

    A Google id mirrored under several accounts is answered from the most recently synced copy.
    An unknown or removed calendar gets `notFound`; one whose first full sync has not finished
    gets `notSynced`: never an empty list that would read as "free".
    """
    snapshot(session)
    seq = as_of_seq(session)
    rows = session.scalars(
        select(Calendar).where(Calendar.google_id.in_(set(calendar_ids)), Calendar.removed_at.is_(None))
        .order_by(Calendar.id)).all()
    chosen: dict[str, Calendar] = {}
    for cal in rows:
        best = chosen.get(cal.google_id)
        if best is None or _fresher(cal, best):
            chosen[cal.google_id] = cal
    synced = [cal for cal in chosen.values() if cal.baseline_done]
    mirrors = cache.mirrors(session, synced)
    answers: list[CalendarBusy] = []
    for google_id in calendar_ids:
        found = chosen.get(google_id)
        if found is None:
            answers.append(CalendarBusy(google_id, [], [{"domain": "global", "reason": NOT_FOUND}], None, None))
        elif not found.baseline_done:
            answers.append(CalendarBusy(google_id, [], [{"domain": "calsync", "reason": NOT_SYNCED}],
                                        found.sync_state, found.last_synced_at))
        else:
            busy = mirrors[found.id].busy_blocks(low, high)
            answers.append(CalendarBusy(google_id, busy, [], found.sync_state, found.last_synced_at))
    return seq, answers


def freebusy_body(seq: int, answers: Sequence[CalendarBusy], low: datetime, high: datetime,
                  time_zone: str | None) -> dict[str, Any]:
    """The answer in the shape of Google's freebusy.query, with calsync's staleness fields."""
    return {"kind": "calendar#freeBusy", "timeMin": rfc3339(low), "timeMax": rfc3339(high),
            "calendars": {a.calendar_id: a.to_dict(time_zone) for a in answers}, "as_of_seq": seq}


@lru_cache(maxsize=1 << 16)
def _render(moment: datetime, zone_name: str | None) -> str:
    """A busy edge as text; the same blocks are asked for again and again, so each is rendered once."""
    return render(moment.astimezone(zone_of(zone_name)))


def _fresher(cal: Calendar, than: Calendar) -> bool:
    if cal.baseline_done != than.baseline_done:
        return cal.baseline_done
    epoch = datetime.min.replace(tzinfo=UTC)
    return (cal.last_synced_at or epoch) > (than.last_synced_at or epoch)
