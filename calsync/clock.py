"""One injectable clock, so scheduling, renewal and retries are tested without sleeping."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.parser import isoparse


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Real time, always timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to; for tests and benchmarks."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float | timedelta = 0, **kwargs: float) -> datetime:
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        with self._lock:
            self._now += step + timedelta(**kwargs)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


def at_least(seconds: float) -> timedelta:
    """`seconds` rounded up to whole microseconds (a timedelta's and a stored time's resolution).

    Work put off by a wait rounded to the nearest microsecond could come due a moment before the
    wait is over: claimed then, it would be refused, and put off again, by less than a microsecond.
    """
    return timedelta(microseconds=math.ceil(seconds * 1_000_000))


def utc(value: datetime | None) -> datetime | None:
    """Return an aware UTC datetime; SQLite hands naive values back, PostgreSQL aware ones."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, as the API promises."""
    v = utc(value)
    if v is None:
        return None
    return v.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def zone_named(name: object) -> ZoneInfo | None:
    """The IANA zone of that name; None when there is no name or it is unknown here."""
    if not name:
        return None
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of the database ("America"), a long name
        return None


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 / RFC 3339 date-time as written, naive when it has no offset; ValueError otherwise."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        value: datetime = isoparse(text)  # the forms fromisoformat refuses, such as a bare hour offset
        return value


def event_datetime(text: str, zone_name: str | None, fallback: tzinfo = UTC) -> datetime:
    """Google's `dateTime` as an aware datetime: a wall time without an offset is in `zone_name`
    (UTC when that zone is unknown here), or in `fallback` when there is no zone name."""
    value = parse_timestamp(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=(zone_named(zone_name) or UTC) if zone_name else fallback)
    return value


def event_time(when: Mapping[str, Any], zone_name: str | None = None, fallback: tzinfo = UTC) -> datetime | date:
    """Google's EventDateTime: an aware datetime for `dateTime` (in its own `timeZone`, else
    `zone_name`, see `event_datetime`), a date for an all-day `date`; KeyError, TypeError or
    ValueError when it is neither."""
    if when.get("dateTime"):
        return event_datetime(str(when["dateTime"]), when.get("timeZone") or zone_name, fallback)
    return date.fromisoformat(when["date"])


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """An HTTP Retry-After as seconds from `now`: a number of seconds or an HTTP date (RFC 9110).
    None when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now.astimezone(UTC)).total_seconds())


# Google's quota day -----------------------------------------------------------------------------
try:
    _PACIFIC: tzinfo = ZoneInfo("America/Los_Angeles")
except ZoneInfoNotFoundError:  # no time-zone database: Pacific standard time all year
    _PACIFIC = timezone(timedelta(hours=-8))


def quota_day(moment: datetime) -> int:
    """Google's quota day (it ends at midnight Pacific time) as YYYYMMDD."""
    local = moment.astimezone(_PACIFIC)
    return local.year * 10000 + local.month * 100 + local.day


def day_started(moment: datetime) -> datetime:
    """When the quota day holding `moment` began, in UTC."""
    local = moment.astimezone(_PACIFIC)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def day_ends(moment: datetime) -> datetime:
    """When the quota day holding `moment` ends, in UTC: a Pacific day of 23 or 25 hours when the
    clocks change, so never `day_started + 24 h`."""
    local = moment.astimezone(_PACIFIC)
    tomorrow = local.date() + timedelta(days=1)
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=_PACIFIC).astimezone(UTC)
