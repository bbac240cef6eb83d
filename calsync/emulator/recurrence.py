"""Recurring events: RRULE/EXDATE/RDATE expansion with python-dateutil, and Google's instance ids.

Timed series expand in the wall time of their ``start.timeZone`` (so DST keeps 09:00 at 09:00);
all-day series expand as dates.  Expansion is always bounded (window and count).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule
from dateutil.parser import isoparse

from .errors import invalid

UTC = dt.UTC
OPEN_ENDED_SPAN = dt.timedelta(days=730)
MAX_INSTANCES = 2500

_UNTIL = re.compile(r"UNTIL=([0-9T]+Z?)", re.IGNORECASE)


def zone(name: str | None) -> dt.tzinfo:
    """The tzinfo for an IANA name (UTC when absent); unknown names are a 400 like Google's."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of the database, a long name
        raise invalid("Invalid time zone definition for start time.", "timeZone") from None


def parse_when(edt: dict[str, Any], cal_tz: str = "UTC") -> dt.datetime | dt.date:
    """Parse an EventDateTime into an aware datetime (in its own zone) or a date."""
    if edt.get("date"):
        try:
            return dt.date.fromisoformat(edt["date"])
        except (TypeError, ValueError):
            raise invalid(f"Invalid date: {edt['date']}", "date") from None
    raw = edt.get("dateTime")
    if not raw:
        raise invalid("Missing time: dateTime or date is required.", "start")
    try:
        value = dt.datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        try:
            value = isoparse(raw)
        except (TypeError, ValueError):
            raise invalid(f"Invalid dateTime: {raw}", "dateTime") from None
    tz = zone(edt.get("timeZone") or (None if value.tzinfo else cal_tz))
    if value.tzinfo is None:
        return value.replace(tzinfo=tz)
    return value.astimezone(tz) if edt.get("timeZone") else value


def instance_suffix(start: dt.datetime | dt.date) -> str:
    """``YYYYMMDDTHHMMSSZ`` for timed starts, ``YYYYMMDD`` for dates (Google's instance-id suffix)."""
    if isinstance(start, dt.datetime):
        return start.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return start.strftime("%Y%m%d")


def parse_suffix(suffix: str) -> dt.datetime | dt.date | None:
    """Inverse of :func:`instance_suffix`; ``None`` if it is not one."""
    try:
        if len(suffix) == 16 and suffix.endswith("Z"):
            return dt.datetime.strptime(suffix, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if len(suffix) == 8 and suffix.isdigit():
            return dt.datetime.strptime(suffix, "%Y%m%d").date()
    except ValueError:
        return None
    return None


def as_event_time(value: dt.datetime | dt.date, time_zone: str | None) -> dict[str, Any]:
    """Render a start as an EventDateTime (with ``timeZone`` when the series had one)."""
    if isinstance(value, dt.datetime):
        out: dict[str, Any] = {"dateTime": format_datetime(value)}
        if time_zone:
            out["timeZone"] = time_zone
        return out
    return {"date": value.isoformat()}


def format_datetime(value: dt.datetime) -> str:
    """RFC 3339 with offset (``Z`` for UTC), seconds precision, as Google renders event times."""
    text = value.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def expand(
    series: dict[str, Any],
    window_start: dt.datetime | None,
    window_end: dt.datetime | None,
    now: dt.datetime,
    cal_tz: str = "UTC",
    limit: int = MAX_INSTANCES,
) -> list[dt.datetime | dt.date]:
    """Original starts of the series' instances overlapping ``[window_start, window_end)``."""
    start = parse_when(series["start"], cal_tz)
    end = parse_when(series.get("end") or series["start"], cal_tz)
    duration = _duration(start, end)
    all_day = not isinstance(start, dt.datetime)
    if window_end is None:
        base = max(now, _to_aware(start, cal_tz))
        window_end = base + OPEN_ENDED_SPAN
    out: list[dt.datetime | dt.date] = []
    for occurrence in _occurrences(series.get("recurrence") or [], start, cal_tz):
        occurrence = _normal(occurrence)
        occ_start = _to_aware(occurrence, cal_tz)
        if occ_start >= window_end or len(out) >= limit:
            break
        if window_start is not None and occ_start + duration <= window_start:
            continue
        if out and not all_day and occurrence == out[-1]:
            continue  # a wall time in a DST gap, moved onto the next one the rule gives: one instance
        out.append(occurrence.date() if all_day else occurrence)
    return out


def shift(
    series: dict[str, Any], original: dt.datetime | dt.date, cal_tz: str = "UTC"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start and end EventDateTimes of the instance starting at ``original`` (series duration)."""
    start = parse_when(series["start"], cal_tz)
    end = parse_when(series.get("end") or series["start"], cal_tz)
    tz_name = series["start"].get("timeZone")
    if isinstance(original, dt.datetime):
        original = _normal(original)
        new_end = _normal(original + (end - start))
        end_tz = (series.get("end") or {}).get("timeZone") or tz_name
        return as_event_time(original, tz_name), as_event_time(new_end, end_tz)
    return as_event_time(original, None), as_event_time(original + (end - start), None)


def validate(lines: list[str], start: dt.datetime | dt.date, cal_tz: str = "UTC") -> None:
    """Refuse malformed recurrence lines with a 400, as Google does on insert."""
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise invalid("Invalid recurrence rule.", "recurrence")
    try:
        iterator = _occurrences(lines, start, cal_tz)
        next(iterator, None)
    except (ValueError, TypeError):
        raise invalid("Invalid recurrence rule.", "recurrence") from None


def to_utc(value: dt.datetime | dt.date, cal_tz: str = "UTC") -> dt.datetime:
    """An instant for ordering and window checks (dates at midnight in the calendar zone)."""
    return _to_aware(value, cal_tz).astimezone(UTC)


def _normal(value: dt.datetime) -> dt.datetime:
    """A wall time inside a DST gap, moved forward by the gap (RFC 5545), so it renders as Google does."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).astimezone(value.tzinfo)


def _duration(start: dt.date, end: dt.date) -> dt.timedelta:
    # Both datetimes or both dates (a datetime is a date); either way the difference is a timedelta.
    return end - start


def _to_aware(value: dt.datetime | dt.date, cal_tz: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone(cal_tz))
    return dt.datetime(value.year, value.month, value.day, tzinfo=zone(cal_tz))


def _occurrences(lines: list[str], start: dt.datetime | dt.date, cal_tz: str) -> Iterator[dt.datetime]:
    """Iterate occurrence starts (aware datetimes, or naive midnights for all-day series)."""
    dtstart = start if isinstance(start, dt.datetime) else dt.datetime(start.year, start.month, start.day)
    rset = rrule.rruleset()
    for line in lines:
        name, _, value = line.partition(":")
        key = name.split(";")[0].upper()
        params = name.split(";")[1:]
        if key == "RRULE":
            # One rule line without ':' parses to an rrule (the stubs say rrule | rruleset).
            rset.rrule(cast("rrule.rrule", rrule.rrulestr(_fix_until(value, dtstart), dtstart=dtstart)))
        elif key in ("EXDATE", "RDATE"):
            for item in value.split(","):
                moment = _parse_ical_time(item, params, dtstart)
                (rset.exdate if key == "EXDATE" else rset.rdate)(moment)
        elif key == "EXRULE":
            rset.exrule(cast("rrule.rrule", rrule.rrulestr(_fix_until(value, dtstart), dtstart=dtstart)))
        else:
            raise ValueError(f"unsupported recurrence line {line!r}")
    # Google shows DTSTART as the first instance even on a day the rule skips (the rule's COUNT
    # then counts the others); dateutil leaves it out.
    rset.rdate(dtstart)
    return iter(rset)


def _fix_until(rule: str, dtstart: dt.datetime) -> str:
    """Make UNTIL agree with DTSTART's awareness, as dateutil insists and Google tolerates."""
    match = _UNTIL.search(rule)
    if not match:
        return rule
    raw = match.group(1)
    if dtstart.tzinfo is None:
        fixed = raw.rstrip("Zz")[:8] if "T" not in raw else raw.rstrip("Zz")
    elif raw.upper().endswith("Z"):
        return rule
    else:
        local = (
            dt.datetime.strptime(raw[:15], "%Y%m%dT%H%M%S")
            if "T" in raw
            else (dt.datetime.strptime(raw[:8], "%Y%m%d") + dt.timedelta(days=1, seconds=-1))
        )
        fixed = local.replace(tzinfo=dtstart.tzinfo).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return rule[: match.start(1)] + fixed + rule[match.end(1) :]


def _parse_ical_time(text: str, params: list[str], dtstart: dt.datetime) -> dt.datetime:
    text = text.strip()
    tzid = next((p.split("=", 1)[1] for p in params if p.upper().startswith("TZID=")), None)
    if "T" not in text:
        day = dt.datetime.strptime(text, "%Y%m%d")
        if dtstart.tzinfo is None:
            return day
        return day.replace(hour=dtstart.hour, minute=dtstart.minute, second=dtstart.second, tzinfo=dtstart.tzinfo)
    if text.upper().endswith("Z"):
        moment = dt.datetime.strptime(text[:-1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    else:
        moment = dt.datetime.strptime(text, "%Y%m%dT%H%M%S")
        moment = moment.replace(tzinfo=ZoneInfo(tzid) if tzid else dtstart.tzinfo)
    if dtstart.tzinfo is None:
        return moment.replace(tzinfo=None) if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)
    return moment.astimezone(dtstart.tzinfo) if moment.tzinfo else moment
