"""Slack incoming-webhook messages: one human line per change, e.g.
`Team calendar: "Standup" moved 10:00 → 10:30 (Tue 3 Dec)`.

People read these in a channel, so they name the calendar and event, say what happened in words,
and show times in the event's own time zone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from calsync.clock import event_datetime, zone_named
from calsync.humanize import lifecycle_title
from calsync.store.states import ChangeKind

MAX_TEXT = 3000
_TIME_FIELDS = ("start", "end")


def slack_message(
    kind: str,
    fields: list[str],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    calendar_name: str,
    time_zone: str | None = None,
    event_id: str = "",
) -> dict[str, str]:
    """The JSON body Slack's incoming webhooks take: `{"text": ...}`."""
    return {
        "text": summary_line(
            kind, fields, before, after, calendar_name=calendar_name, time_zone=time_zone, event_id=event_id
        )
    }


def lifecycle_message(change_type: str, account: str, summary: str | None) -> dict[str, str]:
    """An account's or a calendar's step, e.g. `ann@example.com: Calendar "Work" added`."""
    return {"text": f"{_escape(account)}: {_escape(lifecycle_title(change_type, summary))}"[:MAX_TEXT]}


def summary_line(
    kind: str,
    fields: list[str],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    calendar_name: str,
    time_zone: str | None = None,
    event_id: str = "",
) -> str:
    """One line saying what happened to the event, in words."""
    old, new = before or {}, after or {}
    title = _title(old if kind == ChangeKind.UPDATED and "summary" in fields else new or old, event_id)
    if kind == ChangeKind.CREATED:
        what = f"created{_span(new, time_zone)}"
    elif kind == ChangeKind.SNAPSHOT:
        what = f"is on the calendar{_span(new, time_zone)}"
    elif kind == ChangeKind.DELETED or new.get("status") == "cancelled":
        what = f"cancelled{_span(old or new, time_zone, prefix=', was ')}"
    else:
        what = _updated(fields, old, new, time_zone)
    text = f'{_escape(calendar_name)}: "{_escape(title)}" {what}'
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _updated(fields: list[str], old: dict[str, Any], new: dict[str, Any], tz: str | None) -> str:
    parts: list[str] = []
    old_start, new_start = _moment(old.get("start"), tz), _moment(new.get("start"), tz)
    old_end, new_end = _moment(old.get("end"), tz), _moment(new.get("end"), tz)
    day = new_start or old_start
    if "start" in fields and old_start and new_start:
        if _day(old_start) == _day(new_start):
            parts.append(f"moved {_clock(old_start)} → {_clock(new_start)}")
        else:
            parts.append(f"moved {_when(old_start)} → {_when(new_start)}")
            day = None
    elif "end" in fields and old_end and new_end:
        parts.append(f"now ends {_clock(new_end)} (was {_clock(old_end)})")
    if "summary" in fields and new.get("summary"):
        parts.append(f'renamed to "{_escape(str(new["summary"]))}"')
    rest = [f for f in fields if f not in _TIME_FIELDS and f != "summary"]
    if rest:
        parts.append(("also changed: " if parts else "updated: ") + ", ".join(rest))
    if not parts:
        parts.append("updated")
    suffix = f" ({_day(day)})" if day else ""
    return ", ".join(parts) + suffix


def _span(body: dict[str, Any], tz: str | None, prefix: str = ", ") -> str:
    start, end = _moment(body.get("start"), tz), _moment(body.get("end"), tz)
    if start is None:
        return ""
    if isinstance(start, date) and not isinstance(start, datetime):
        return f" ({_day(start)}, all day)"
    times = _clock(start) + (f"–{_clock(end)}" if end is not None and _day(end) == _day(start) else "")
    return f"{prefix}{times} ({_day(start)})"


def _moment(value: Any, tz: str | None) -> date | None:
    """A start/end as a local datetime (or a date for all-day events)."""
    if not isinstance(value, dict):
        return None
    if value.get("dateTime"):
        zone = zone_named(value.get("timeZone")) or zone_named(tz)
        try:
            when = event_datetime(str(value["dateTime"]), None, fallback=zone or UTC)
            return when.astimezone(zone) if zone is not None else when
        except (ValueError, OverflowError):  # year 1 or 9999 pushed past the calendar by its zone
            return None
    if value.get("date"):
        try:
            return date.fromisoformat(str(value["date"]))
        except ValueError:
            return None
    return None


def _clock(value: date | None) -> str:
    if isinstance(value, datetime):
        return f"{value:%H:%M}"
    return "all day" if value is not None else ""


def _when(value: date) -> str:
    return f"{_day(value)} {_clock(value)}" if isinstance(value, datetime) else _day(value)


def _day(value: date | None) -> str:
    if value is None:
        return ""
    return f"{value:%a} {value.day} {value:%b}"


def _title(body: dict[str, Any], event_id: str) -> str:
    if body.get("summary"):
        return str(body["summary"])
    return event_id or "(untitled event)"


def _escape(text: str) -> str:
    """Slack's three control characters; everything else is shown as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
