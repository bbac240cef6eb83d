"""Expanded occurrences and free/busy answered from the mirror, with no Google call.

Each calendar's rows are parsed into a `CalendarMirror` kept per process, with the calendar's
version: its newest change seq, the `last_synced_at` that the last page of every sync run sets,
its full-sync generation and its zone. A row written with a Change moves the seq at once; a row
rewritten without one (only etag/updated moved) moves `last_synced_at` when its run ends. When
the version moved, only the rows whose `updated` differs are read again. A calendar still in
its baseline is read afresh each time. Version and rows are read in one transaction (a
snapshot on both engines), so an answer never mixes two states of the mirror.

Free/busy is asked far more often than calendars change, so it first reads every calendar's
version and the feed's seq in one statement, outside any transaction: a snapshot by itself, one
round trip on PostgreSQL (a read this small waits mostly on round trips) and no write lock on
SQLite. When every parsed mirror is at the version read, that is the answer; otherwise the
versions and the changed rows are read again inside a snapshot transaction.
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

import orjson
from sqlalchemy import Text, and_, bindparam, cast, func, literal, select
from sqlalchemy.orm import Session, sessionmaker

from calsync.clock import rfc3339
from calsync.feed.cursor import newest_seq, newest_seq_value
from calsync.readmodels.occurrences import CalendarMirror, Occurrence, render, zone_of
from calsync.store.db import reading, statements_alone
from calsync.store.models import Calendar, Change, Event

SINGLE_EVENTS_DEFAULT_PAGE = 1000
SINGLE_EVENTS_MAX_PAGE = 2500
FREEBUSY_MAX_CALENDARS = 50
NOT_SYNCED = "notSynced"
NOT_FOUND = "notFound"

_Version = tuple[int | None, int, datetime | None, str | None]


@dataclass(frozen=True)
class Standing:
    """One calendar as a read saw it: what an answer says of it, and the version of its rows."""

    id: int
    google_id: str
    time_zone: str | None
    sync_state: str
    baseline_done: bool
    full_sync_gen: int
    last_synced_at: datetime | None
    newest_seq: int | None

    @classmethod
    def of(cls, cal: Calendar, newest: int | None) -> Standing:
        return cls(
            cal.id,
            cal.google_id,
            cal.time_zone,
            cal.sync_state,
            cal.baseline_done,
            cal.full_sync_gen,
            cal.last_synced_at,
            newest,
        )

    @property
    def version(self) -> _Version:
        return (self.newest_seq, self.full_sync_gen, self.last_synced_at, self.time_zone)


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

    def cached(self, standing: Standing) -> CalendarMirror | None:
        """The parsed mirror if it is at exactly this version; None for a calendar in its baseline."""
        if not standing.baseline_done:
            return None
        with self._lock:
            hit = self._entries.get(standing.id)
        return hit[1] if hit is not None and hit[0] == standing.version else None

    def mirrors(self, session: Session, calendars: Sequence[Calendar]) -> dict[int, CalendarMirror]:
        """The parsed mirror of each calendar as of this session's snapshot."""
        if not calendars:
            return {}
        ids = [c.id for c in calendars]
        newest: dict[int, int | None] = dict(session.execute(_NEWEST, {"ids": ids}).all())
        return self.mirrors_at(session, [Standing.of(cal, newest.get(cal.id)) for cal in calendars])

    def mirrors_at(self, session: Session, standings: Sequence[Standing]) -> dict[int, CalendarMirror]:
        """The parsed mirror of each calendar at the version this session's snapshot read for it."""
        out: dict[int, CalendarMirror] = {}
        for cal in standings:
            mirror = self.cached(cal)
            if mirror is None:
                with self._lock:
                    hit = self._entries.get(cal.id)
                if hit is not None and hit[1].time_zone == cal.time_zone:
                    mirror = _refresh(session, cal.id, hit[1])
                else:
                    rows = session.scalars(select(_DATA_TEXT).where(Event.calendar_id == cal.id)).all()
                    mirror = CalendarMirror(rows, cal.time_zone)
            out[cal.id] = mirror
            with self._lock:
                if cal.baseline_done:
                    self._entries[cal.id] = (cal.version, mirror)
                    self._entries.move_to_end(cal.id)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
                else:
                    self._entries.pop(cal.id, None)
        return out


def _refresh(session: Session, calendar_id: int, mirror: CalendarMirror) -> CalendarMirror:
    """`mirror` brought up to this snapshot by reading only the rows that differ from it."""
    known = mirror.versions()
    rows = session.execute(select(Event.google_id, Event.etag, Event.updated).where(Event.calendar_id == calendar_id))
    current = {event_id: (etag, updated) for event_id, etag, updated in rows}
    stale = [
        event_id
        for event_id, version in current.items()
        if event_id not in known or known[event_id] != version or None in version
    ]
    removed = [event_id for event_id in known if event_id not in current]
    changed: list[str] = []
    for start in range(0, len(stale), _CHUNK):
        changed += session.scalars(
            select(_DATA_TEXT).where(
                Event.calendar_id == calendar_id, Event.google_id.in_(stale[start : start + _CHUNK])
            )
        ).all()
    return mirror.refreshed(changed, removed)


_CHUNK = 500
# Each calendar's newest change: one backward probe of (calendar_id, seq) per calendar. A GROUP BY
# over the calendars' rows read every one of them (a first sync writes a row per event).
_CALS = Calendar.__table__
_NEWEST_OF_ROW = select(func.max(Change.seq)).where(Change.calendar_id == _CALS.c.id).correlate(_CALS).scalar_subquery()
_NEWEST = select(_CALS.c.id, _NEWEST_OF_ROW).where(_CALS.c.id.in_(bindparam("ids", expanding=True)))
# The feed's seq and each asked-for calendar with its version, in one statement. The calendars are
# outer-joined to a one-row table so that the seq comes back even when none of them is known.
_ONE_ROW = select(literal(1).label("one")).subquery("one_row")
_STANDING = (
    select(
        newest_seq_value(),
        _CALS.c.id,
        _CALS.c.google_id,
        _CALS.c.time_zone,
        _CALS.c.sync_state,
        _CALS.c.baseline_done,
        _CALS.c.full_sync_gen,
        _CALS.c.last_synced_at,
        _NEWEST_OF_ROW,
    )
    .select_from(
        _ONE_ROW.outerjoin(
            _CALS, and_(_CALS.c.google_id.in_(bindparam("ids", expanding=True)), _CALS.c.removed_at.is_(None))
        )
    )
    .order_by(_CALS.c.id)
)
# The rows' JSON as text (parsed by orjson, and kept as text for single events).
_DATA_TEXT = cast(Event.data, Text)


MIRRORS = MirrorCache()


def as_of_seq(session: Session) -> int:
    """The newest change seq this snapshot holds (0 before the first change)."""
    return newest_seq(session)


# --- events.list?singleEvents=true ------------------------------------------------------------------
def single_events_page(
    session: Session,
    calendar: Calendar,
    low: datetime,
    high: datetime,
    *,
    page_token: str | None,
    page_size: int = SINGLE_EVENTS_DEFAULT_PAGE,
    cache: MirrorCache = MIRRORS,
) -> dict[str, Any]:
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
    return {"items": [o.item() for o in page], "nextPageToken": encode_occurrence_token(page[-1]) if more else None}


def encode_occurrence_token(last: Occurrence) -> str:
    start = last.start  # the year zero-padded: strftime writes year 500 as `500`, read back as 5000
    text = f"o:{start.year:04d}{start.strftime('%m%dT%H%M%S.%f')}Z:{last.id}"
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
        """Its part of the answer; without a zone the edges stay UTC datetimes, for `freebusy_json`."""
        busy: list[dict[str, Any]]
        if zone_name is None:
            busy = [{"start": s, "end": e} for s, e in self.busy]
        else:
            busy = [{"start": _render(s, zone_name), "end": _render(e, zone_name)} for s, e in self.busy]
        out: dict[str, Any] = {"busy": busy}
        if self.errors:
            out["errors"] = self.errors
        out["sync_state"] = self.sync_state
        out["last_synced_at"] = rfc3339(self.last_synced_at)
        return out


def freebusy(
    sessions: sessionmaker[Session],
    calendar_ids: Sequence[str],
    low: datetime,
    high: datetime,
    *,
    cache: MirrorCache = MIRRORS,
) -> tuple[int, list[CalendarBusy]]:
    """Busy blocks per calendar id, and the change seq they reflect, from one snapshot.

    A Google id mirrored under several accounts is answered from the most recently synced copy.
    An unknown or removed calendar gets `notFound`; one whose first full sync has not finished
    gets `notSynced`: never an empty list that would read as "free".
    """
    with sessions() as session:
        statements_alone(session)
        seq, chosen = _standing(session, calendar_ids)
        synced = [cal for cal in chosen.values() if cal.baseline_done]
        mirrors = {cal.id: mirror for cal in synced if (mirror := cache.cached(cal)) is not None}
    if len(mirrors) < len(synced):
        with reading(sessions) as session:
            seq, chosen = _standing(session, calendar_ids)
            mirrors = cache.mirrors_at(session, [cal for cal in chosen.values() if cal.baseline_done])
    answers: list[CalendarBusy] = []
    for google_id in calendar_ids:
        found = chosen.get(google_id)
        if found is None:
            answers.append(CalendarBusy(google_id, [], [{"domain": "global", "reason": NOT_FOUND}], None, None))
        elif not found.baseline_done:
            answers.append(
                CalendarBusy(
                    google_id, [], [{"domain": "calsync", "reason": NOT_SYNCED}], found.sync_state, found.last_synced_at
                )
            )
        else:
            busy = mirrors[found.id].busy_blocks(low, high)
            answers.append(CalendarBusy(google_id, busy, [], found.sync_state, found.last_synced_at))
    return seq, answers


def _standing(session: Session, calendar_ids: Sequence[str]) -> tuple[int, dict[str, Standing]]:
    """The feed's seq and, per Google id, the calendar that answers for it, read in one statement."""
    seq = 0
    chosen: dict[str, Standing] = {}
    for row in session.execute(_STANDING, {"ids": sorted(set(calendar_ids))}):
        seq = int(row[0] or 0)
        if row[1] is None:
            continue
        cal = Standing(*row[1:])
        best = chosen.get(cal.google_id)
        if best is None or _fresher(cal, best):
            chosen[cal.google_id] = cal
    return seq, chosen


def freebusy_json(
    seq: int, answers: Sequence[CalendarBusy], low: datetime, high: datetime, time_zone: str | None
) -> bytes:
    """The answer in the shape of Google's freebusy.query, with calsync's staleness fields, as JSON.

    Busy edges are most of an answer. In UTC (the default) orjson writes them from the datetimes,
    `Z` and whole seconds, as `render` would; in another zone they are rendered here, because
    orjson rounds an offset with seconds (a zone's local mean time) to the minute.
    """
    body = {
        "kind": "calendar#freeBusy",
        "timeMin": rfc3339(low),
        "timeMax": rfc3339(high),
        "calendars": {a.calendar_id: a.to_dict(time_zone) for a in answers},
        "as_of_seq": seq,
    }
    return orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS)


@lru_cache(maxsize=1 << 16)
def _render(moment: datetime, zone_name: str | None) -> str:
    """A busy edge as text; the same blocks are asked for again and again, so each is rendered once."""
    return render(moment.astimezone(zone_of(zone_name)))


def _fresher(cal: Standing, than: Standing) -> bool:
    if cal.baseline_done != than.baseline_done:
        return cal.baseline_done
    epoch = datetime.min.replace(tzinfo=UTC)
    return (cal.last_synced_at or epoch) > (than.last_synced_at or epoch)
