"""Occurrences of the mirrored events in a window, as Google's `events.list?singleEvents=true` lists them.

This is calsync's own expansion, written apart from the emulator's on purpose: the tests check
the two against each other, so a shared mistake would hide. A timed series is expanded by
dateutil in the naive wall time of its `start.timeZone` and each wall time is then placed in that
zone (a time inside a DST gap takes the offset before the gap, as RFC 5545 says, and is shown
normalised); an all-day series expands as dates, which stand at midnight in the calendar's zone
for window tests and ordering. The expansion of each series is remembered and only extended,
so a series begun ten years ago costs its history once, not on every question.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule
from dateutil.parser import isoparse

MAX_WINDOW = timedelta(days=366)
# Occurrences remembered per series at most: a daily series over five centuries.
MAX_REMEMBERED = 200_000
# Slack around a window when bisecting remembered starts: DST moves a wall-time end by hours.
_SLACK = timedelta(days=2)
_UNTIL = re.compile(r"(UNTIL=)([0-9]{8}(?:T[0-9]{6}Z?)?)", re.IGNORECASE)


def zone_of(name: str | None) -> tzinfo:
    """The zone for an IANA name; UTC when there is none or it is unknown."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def known_zone(name: str) -> bool:
    """Whether an IANA zone name is known here."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def render(moment: datetime) -> str:
    """RFC 3339 with the zone's real offset at that instant, seconds precision, `Z` for UTC."""
    zone = moment.tzinfo or UTC
    text = moment.astimezone(UTC).astimezone(zone).isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def instance_id(series_id: str, original: datetime | date) -> str:
    """Google's id of an occurrence: the series id and the original start (UTC, or the date)."""
    if isinstance(original, datetime):
        return f"{series_id}_{original.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    return f"{series_id}_{original:%Y%m%d}"


def midnight(day: date, zone: tzinfo) -> datetime:
    """The instant a day begins in a zone (an all-day event's edge), in UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class Occurrence:
    """One item of the expanded listing: its instants, and how to build its JSON."""

    start: datetime  # aware UTC; an all-day start is midnight in the calendar's zone
    end: datetime
    id: str
    all_day: bool
    source: dict[str, Any]  # the event itself, or for a generated occurrence its series
    series: _Series | None = None
    original: datetime | date | None = None  # generated: the local start (aware) or the date

    def item(self) -> dict[str, Any]:
        """The Event JSON Google lists for this occurrence."""
        if self.series is None or self.original is None:
            return self.source
        return self.series.instance(self.original)

    def is_busy(self) -> bool:
        """Busy unless shown as available, cancelled, or declined by the calendar's own attendee entry."""
        data = self.source
        if data.get("transparency") == "transparent" or data.get("status") == "cancelled":
            return False
        for attendee in data.get("attendees") or ():
            if isinstance(attendee, dict) and attendee.get("self") and attendee.get("responseStatus") == "declined":
                return False
        return True


class _Series:
    """A recurring event and the occurrence starts generated so far (extended on demand)."""

    def __init__(self, data: dict[str, Any], cal_zone: tzinfo) -> None:
        self.data = data
        self.id = str(data["id"])
        self.cal_zone = cal_zone
        start, end = data["start"], data.get("end") or data["start"]
        self.all_day = not start.get("dateTime")
        if self.all_day:
            first = date.fromisoformat(start["date"])
            self.days = date.fromisoformat(end.get("date") or start["date"]) - first
            dtstart = datetime(first.year, first.month, first.day)
            self.zone: tzinfo = cal_zone
            self.zone_name = None
            self.end_zone_name = None
            self.duration = timedelta(0)
        else:
            self.zone_name = start.get("timeZone")
            self.end_zone_name = end.get("timeZone") or self.zone_name
            begin = _parse_datetime(start["dateTime"], self.zone_name)
            self.zone = zone_of(self.zone_name) if self.zone_name else (begin.tzinfo or UTC)
            dtstart = begin.astimezone(self.zone).replace(tzinfo=None)
            finish = _parse_datetime(end["dateTime"], end.get("timeZone") or self.zone_name)
            self.duration = finish.astimezone(self.zone).replace(tzinfo=None) - dtstart
            self.days = timedelta(0)
        self._generator = _rule_set(data.get("recurrence") or [], dtstart, self.all_day, self.zone)
        self._walls: list[datetime] = []  # generated naive wall times (midnights for all-day)
        self._keys: list[datetime] = []  # their start instants, UTC
        self._exhausted = False
        self._lock = threading.Lock()

    def between(self, low: datetime, high: datetime, hidden: set[datetime | date]) -> Iterator[Occurrence]:
        """Generated occurrences overlapping [low, high), except the originals in `hidden`."""
        with self._lock:
            self._extend(high + _SLACK)
            keys, walls = self._keys, self._walls
            first = bisect.bisect_left(keys, low - self._longest() - _SLACK)
            last = bisect.bisect_left(keys, high + _SLACK)
            chosen = walls[first:last]
        for wall in chosen:
            original: datetime | date
            if self.all_day:
                original = wall.date()
                start = midnight(original, self.cal_zone)
                end = midnight(original + self.days, self.cal_zone)
            else:
                original = _place(wall, self.zone)
                start = original.astimezone(UTC)
                end = _place(original.replace(tzinfo=None) + self.duration, self.zone).astimezone(UTC)
            if start >= high or end <= low:
                continue
            if (original if self.all_day else start) in hidden:
                continue
            yield Occurrence(start, end, instance_id(self.id, original), self.all_day, self.data, self, original)

    def instance(self, original: datetime | date) -> dict[str, Any]:
        """The JSON of the unmodified occurrence at `original`: the series' fields, its own times."""
        data = {k: v for k, v in self.data.items() if k != "recurrence"}
        data["id"] = instance_id(self.id, original)
        if isinstance(original, datetime):
            end = _place(original.replace(tzinfo=None) + self.duration, self.zone)
            data["start"] = _when(original, self.zone_name)
            data["end"] = _when(end, self.end_zone_name)
            data["originalStartTime"] = _when(original, self.zone_name)
        else:
            data["start"] = {"date": original.isoformat()}
            data["end"] = {"date": (original + self.days).isoformat()}
            data["originalStartTime"] = {"date": original.isoformat()}
        data["recurringEventId"] = self.id
        return data

    def _longest(self) -> timedelta:
        return self.days if self.all_day else self.duration

    def _extend(self, until: datetime) -> None:
        while not self._exhausted and (not self._keys or self._keys[-1] < until):
            if len(self._keys) >= MAX_REMEMBERED:
                self._exhausted = True
                break
            wall = next(self._generator, None)
            if wall is None:
                self._exhausted = True
                break
            self._walls.append(wall)
            key = midnight(wall.date(), self.cal_zone) if self.all_day else _place(wall, self.zone).astimezone(UTC)
            self._keys.append(key)


class CalendarMirror:
    """One calendar's mirrored events, parsed once, asked for occurrences in any window."""

    def __init__(self, rows: Iterable[dict[str, Any]], time_zone: str | None) -> None:
        self.zone = zone_of(time_zone)
        self.series: list[_Series] = []
        self._hidden: dict[str, set[datetime | date]] = {}
        singles: list[Occurrence] = []
        for data in rows:
            status = data.get("status")
            parent = data.get("recurringEventId")
            if parent:
                original = self._original_key(data)
                if original is not None:
                    self._hidden.setdefault(str(parent), set()).add(original)
                if status == "cancelled":
                    continue
            elif status == "cancelled":
                continue  # a deleted event
            try:
                if data.get("recurrence") and not parent:
                    self.series.append(_Series(data, self.zone))
                    continue
                singles.append(self._single(data))
            except (KeyError, TypeError, ValueError):
                continue  # a shape Google does not send; it cannot be placed in time
        singles.sort(key=lambda o: o.start)
        self._singles = singles
        self._single_starts = [o.start for o in singles]
        self._longest_single = max((o.end - o.start for o in singles), default=timedelta(0))

    def occurrences(self, low: datetime, high: datetime) -> list[Occurrence]:
        """Every occurrence overlapping [low, high) (end > low and start < high), by start then id."""
        found: list[Occurrence] = []
        first = bisect.bisect_left(self._single_starts, low - self._longest_single)
        last = bisect.bisect_left(self._single_starts, high)
        found.extend(o for o in self._singles[first:last] if o.end > low)
        for series in self.series:
            found.extend(series.between(low, high, self._hidden.get(series.id, set())))
        found.sort(key=lambda o: (o.start, o.id))
        return found

    def _single(self, data: dict[str, Any]) -> Occurrence:
        start, end = data["start"], data.get("end") or data["start"]
        if start.get("dateTime"):
            begin = _parse_datetime(start["dateTime"], start.get("timeZone"), self.zone)
            finish = _parse_datetime(end["dateTime"], end.get("timeZone"), self.zone)
            return Occurrence(begin.astimezone(UTC), finish.astimezone(UTC), str(data["id"]), False, data)
        first, after = date.fromisoformat(start["date"]), date.fromisoformat(end.get("date") or start["date"])
        return Occurrence(midnight(first, self.zone), midnight(after, self.zone), str(data["id"]), True, data)

    def _original_key(self, data: dict[str, Any]) -> datetime | date | None:
        original = data.get("originalStartTime") or {}
        try:
            if original.get("dateTime"):
                return _parse_datetime(original["dateTime"], original.get("timeZone"), self.zone).astimezone(UTC)
            if original.get("date"):
                return date.fromisoformat(original["date"])
        except (TypeError, ValueError):
            return None
        return None


def check_window(low: datetime, high: datetime) -> None:
    """ValueError unless `low < high` and the window is at most MAX_WINDOW long."""
    if high <= low:
        raise ValueError("timeMax must be later than timeMin")
    if high - low > MAX_WINDOW:
        raise ValueError(f"the window may be at most {MAX_WINDOW.days} days")


def parse_instant(text: str) -> datetime:
    """An RFC 3339 time with an offset, as an aware UTC datetime; ValueError otherwise."""
    try:
        value: datetime = isoparse(text)
    except (ValueError, OverflowError) as err:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from err
    if value.tzinfo is None:
        raise ValueError(f"an offset is required (e.g. Z or +01:00): {text!r}")
    return value.astimezone(UTC)


# --- helpers --------------------------------------------------------------------------------------
def _place(wall: datetime, zone: tzinfo) -> datetime:
    """A naive wall time in `zone`, normalised (a time in a DST gap moves forward by the gap)."""
    return wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def _when(moment: datetime, zone_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"dateTime": render(moment)}
    if zone_name:
        out["timeZone"] = zone_name
    return out


def _parse_datetime(text: str, zone_name: str | None, fallback: tzinfo = UTC) -> datetime:
    value: datetime = isoparse(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone_of(zone_name) if zone_name else fallback)
    return value


def _rule_set(lines: list[str], dtstart: datetime, all_day: bool, zone: tzinfo) -> Iterator[datetime]:
    """The naive wall-time starts of a series: its RRULEs and RDATEs, less its EXDATEs."""
    rules = rrule.rruleset()
    has_rule = False
    for line in lines:
        head, _, value = str(line).partition(":")
        name, *params = head.split(";")
        name = name.strip().upper()
        if name == "RRULE":
            rules.rrule(rrule.rrulestr(_local_until(value, all_day, zone), dtstart=dtstart))
            has_rule = True
        elif name in ("RDATE", "EXDATE"):
            tzid = next((p.split("=", 1)[1] for p in params if p.upper().startswith("TZID=")), None)
            for text in value.split(","):
                wall = _wall_time(text.strip(), tzid, dtstart, all_day, zone)
                if name == "RDATE":
                    rules.rdate(wall)
                else:
                    rules.exdate(wall)
        elif name == "EXRULE":
            rules.exrule(rrule.rrulestr(_local_until(value, all_day, zone), dtstart=dtstart))
    if not has_rule:
        rules.rdate(dtstart)
    return iter(rules)


def _local_until(rule: str, all_day: bool, zone: tzinfo) -> str:
    """UNTIL as a naive wall time, to go with the naive DTSTART: a UTC UNTIL is moved into the
    series' zone; a date UNTIL of a timed series means the end of that day."""
    match = _UNTIL.search(rule)
    if match is None:
        return rule
    raw = match.group(2).upper()
    if all_day:
        local = raw.rstrip("Z")
    elif "T" not in raw:
        local = raw + "T235959"
    elif raw.endswith("Z"):
        instant = datetime.strptime(raw, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        local = instant.astimezone(zone).strftime("%Y%m%dT%H%M%S")
    else:
        local = raw
    return rule[:match.start(2)] + local + rule[match.end(2):]


def _wall_time(text: str, tzid: str | None, dtstart: datetime, all_day: bool, zone: tzinfo) -> datetime:
    """An RDATE/EXDATE value as a naive wall time of the series."""
    if "T" not in text:
        day = datetime.strptime(text[:8], "%Y%m%d")
        return day if all_day else day.replace(hour=dtstart.hour, minute=dtstart.minute, second=dtstart.second)
    if all_day:
        return datetime.strptime(text.rstrip("Zz")[:15], "%Y%m%dT%H%M%S")
    if text.upper().endswith("Z"):
        instant = datetime.strptime(text[:-1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    else:
        instant = datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=zone_of(tzid) if tzid else zone)
    return instant.astimezone(zone).replace(tzinfo=None)
