"""Pure functions that say what really changed between two versions of an event's JSON.

Google bumps `etag`, `updated` and often `sequence` on every write, and a replayed page or a 410
resync hands back events that are otherwise identical: those keys alone never make a change.
"""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta
from typing import Any

from calsync.clock import event_datetime, zone_named

IGNORED_FIELDS = frozenset({"etag", "updated", "sequence"})
CANCELLED = "cancelled"


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Sorted top-level keys whose values differ (a key present on one side only counts), minus noise.

    A cancelled occurrence comes from Google cut down to its identity and status: the keys it leaves
    out (summary, start, end...) did not change, and naming them made a cancellation read as a move
    and a rename. Only the keys it carries are compared.
    """
    keys = (before.keys() | after.keys()) - IGNORED_FIELDS
    if after.get("status") == CANCELLED and before.get("status") != CANCELLED:
        keys = after.keys() - IGNORED_FIELDS
    return sorted(k for k in keys if before.get(k, _MISSING) != after.get(k, _MISSING))


def implied_occurrence(series: dict[str, Any], event_id: str, original_start: dict[str, Any]) -> dict[str, Any]:
    """The JSON of an unmodified occurrence as its series implies it (Google's instance shape).

    Used as `before` when an occurrence first becomes its own event (modified or cancelled):
    the series minus `recurrence`, with the occurrence's id, originalStartTime, and start/end
    moved to the original start with the series' duration.
    """
    data = {k: copy.deepcopy(v) for k, v in series.items() if k != "recurrence"}
    data["id"] = event_id
    data["recurringEventId"] = series.get("id")
    data["originalStartTime"] = copy.deepcopy(original_start)
    start, end = _shift(series, original_start)
    if start is not None:
        data["start"], data["end"] = start, end
    return data


def event_time_text(when: dict[str, Any] | None) -> str | None:
    """An EventDateTime as one string (its dateTime, or its date for all-day events)."""
    if not isinstance(when, dict):
        return None
    value = when.get("dateTime") or when.get("date")
    return str(value) if value is not None else None


class _Missing:
    """A sentinel unequal to everything, so `{"k": None}` and `{}` differ."""

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return 0


_MISSING = _Missing()


def _shift(series: dict[str, Any], original: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Start and end of the occurrence at `original`, keeping the series' duration and time zones."""
    s_start, s_end = series.get("start") or {}, series.get("end") or {}
    try:
        if original.get("date"):
            first, last = date.fromisoformat(s_start["date"]), date.fromisoformat(s_end.get("date") or s_start["date"])
            begin = date.fromisoformat(original["date"])
            return {"date": begin.isoformat()}, {"date": (begin + (last - first)).isoformat()}
        if original.get("dateTime") and s_start.get("dateTime"):
            tz_name = s_start.get("timeZone")
            first = _aware(s_start["dateTime"], tz_name)
            last = _aware(s_end.get("dateTime") or s_start["dateTime"], s_end.get("timeZone") or tz_name)
            duration: timedelta = last - first
            begin = _aware(original["dateTime"], original.get("timeZone") or tz_name)
            start = {"dateTime": _format(begin)}
            end = {"dateTime": _format(begin + duration)}
            if tz_name:
                start["timeZone"] = tz_name
            end_tz = s_end.get("timeZone") or tz_name
            if end_tz:
                end["timeZone"] = end_tz
            return start, end
    except (KeyError, ValueError, TypeError):
        pass
    return None, None


def _aware(text: str, tz_name: str | None) -> datetime:
    """The time in its own zone when that is known (the shifted copy is written in it)."""
    value = event_datetime(text, tz_name)
    zone = zone_named(tz_name)
    return value.astimezone(zone) if zone else value


def _format(value: datetime) -> str:
    text = value.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text
