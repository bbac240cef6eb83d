"""In-memory state of the emulated Google account world, guarded by one lock.

Every change gets the next value of one global sequence number; sync and page tokens are
snapshots of that number, so "changes since a token" is simply ``record.seq > token.seq``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, invalid

UTC = dt.UTC


@dataclass
class EventRecord:
    """One stored event (series, single event or exception) and when it last changed."""

    data: dict[str, Any]
    seq: int
    ordinal: int
    cached: tuple[int, RawJson] | None = None

    def public_json(self, render: Any) -> RawJson:
        """The API JSON text of this event, serialised once per change (list pages reuse it)."""
        if self.cached is None or self.cached[0] != self.seq:
            self.cached = (self.seq, RawJson(json.dumps(render(self.data), separators=(",", ":"))))
        return self.cached[1]


class RawJson(str):
    """Already-serialised JSON, spliced verbatim into a response body."""


@dataclass
class Calendar:
    """A calendar with its events kept in insertion order (tombstones included)."""

    id: str
    summary: str
    time_zone: str
    owner: str
    description: str | None = None
    events: dict[str, EventRecord] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    exceptions: dict[str, set[str]] = field(default_factory=dict)
    token_floor: int = 0
    updated: dt.datetime = field(default_factory=lambda: dt.datetime.now(UTC))
    seq: int = 0

    def add(self, event_id: str, data: dict[str, Any], seq: int) -> EventRecord:
        """Store a new event at the end of the calendar's order."""
        record = EventRecord(data=data, seq=seq, ordinal=len(self.order))
        self.events[event_id] = record
        self.order.append(event_id)
        series = data.get("recurringEventId")
        if series:
            self.exceptions.setdefault(series, set()).add(event_id)
        return record


@dataclass
class ListEntry:
    """A calendar's entry in one user's calendar list."""

    calendar_id: str
    primary: bool
    seq: int
    ordinal: int
    deleted: bool = False
    role: str = "owner"  # the user's access role: owner, writer, reader or freeBusyReader
    hidden: bool = False  # hidden from the list in Google's UI: listed only with showHidden (or a sync)


@dataclass
class User:
    """An emulated Google account and its calendar list."""

    email: str
    name: str
    entries: dict[str, ListEntry] = field(default_factory=dict)
    token_floor: int = 0


@dataclass(frozen=True)
class SyncPosition:
    """A decoded sync token: which resource, and the change sequence it covers up to."""

    resource: str
    seq: int
    issued: float


class Store:
    """All mutable emulator state; callers hold ``lock`` around every read-modify-write."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        """Forget every user, calendar and token; old sync/page tokens become invalid."""
        with self.lock:
            self.epoch = secrets.token_hex(4)
            self.seq = 0
            self.users: dict[str, User] = {}
            self.calendars: dict[str, Calendar] = {}

    def next_seq(self) -> int:
        """Advance the global change sequence (call with the lock held)."""
        self.seq += 1
        return self.seq

    def user(self, email: str) -> User:
        """The user, or a 404 like Google's for an unknown account."""
        found = self.users.get(email.lower())
        if found is None:
            raise ApiError(404, "notFound", f"Unknown user {email}")
        return found

    def calendar_for(self, user: User, calendar_id: str) -> Calendar:
        """Resolve ``primary`` and check the calendar is on the user's list (else 404)."""
        cal_id = user.email if calendar_id == "primary" else calendar_id
        entry = user.entries.get(cal_id)
        calendar = self.calendars.get(cal_id)
        if entry is None or entry.deleted or calendar is None:
            raise ApiError(404, "notFound")
        return calendar

    def calendar(self, calendar_id: str) -> Calendar:
        """A calendar by id for the people-side API (no access check)."""
        found = self.calendars.get(calendar_id)
        if found is None:
            raise ApiError(404, "notFound", f"Unknown calendar {calendar_id}")
        return found

    # --- tokens -----------------------------------------------------------------------------
    def sync_token(self, resource: str, seq: int, now: dt.datetime) -> str:
        """An opaque token for "everything of ``resource`` up to change ``seq``"."""
        return _encode({"e": self.epoch, "r": resource, "s": seq, "t": int(now.timestamp())})

    def read_sync_token(
        self, token: str, resource: str, floor: int, max_age: float | None, now: dt.datetime
    ) -> SyncPosition:
        """Decode a sync token or raise Google's 410 ``fullSyncRequired``."""
        data = _decode(token)
        if data is None or data.get("r") != resource:
            raise invalid("Invalid sync token value.", "syncToken")
        too_old = max_age is not None and now.timestamp() - data.get("t", 0) > max_age
        if data.get("e") != self.epoch or data.get("s", -1) < floor or too_old:
            raise ApiError(410, "fullSyncRequired", location="syncToken")
        return SyncPosition(resource=resource, seq=int(data["s"]), issued=float(data.get("t", 0)))

    def page_token(self, payload: dict[str, Any]) -> str:
        """An opaque page token bound to this store's epoch."""
        return _encode({"e": self.epoch, **payload})

    def read_page_token(self, token: str) -> dict[str, Any]:
        """Decode a page token (400 if it is not one of ours or predates a reset)."""
        data = _decode(token)
        if data is None or data.get("e") != self.epoch:
            raise invalid("Invalid page token value.", "pageToken")
        return data


def new_id(length: int = 26) -> str:
    """A random id in Google's event-id alphabet (base32hex, lower case)."""
    text = base64.b32hexencode(os.urandom((length * 5 + 7) // 8)).decode().lower()
    return text[:length]


@functools.lru_cache(maxsize=4096)
def rfc3339(moment: dt.datetime) -> str:
    """``2024-01-01T10:00:00.000Z``: how Google renders ``created``/``updated``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None
