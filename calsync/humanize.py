"""Human-readable renderings shared by the dashboard, `calsync status` and the demo.

Operators read durations ("6 d 23 h"), ages ("3 s ago") and field-level diffs ("10:00 → 10:30"),
not raw timestamps and JSON; keeping one rendering makes the three views agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from calsync.clock import parse_timestamp, utc

_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
_MAX_VALUE = 160
_FIELD_ORDER = {
    name: n
    for n, name in enumerate(
        ("summary", "status", "start", "end", "location", "description", "attendees", "recurrence", "originalStartTime")
    )
}


@dataclass(frozen=True)
class FieldDiff:
    """One changed top-level field of an event, rendered for people."""

    name: str
    before: str
    after: str


def human_duration(seconds: float) -> str:
    """The two most significant units: '3 s', '4 min 10 s', '2 h 5 min', '6 d 23 h'."""
    total = int(abs(seconds))
    if total == 0:
        return "0 s"
    parts: list[str] = []
    for unit, size in _UNITS:
        amount, total = divmod(total, size)
        if amount or parts:
            parts.append(f"{amount} {unit}")
        if len(parts) == 2:
            break
    if len(parts) == 2 and parts[1].startswith("0 "):
        parts.pop()
    return " ".join(parts)


def ago(then: datetime | None, now: datetime) -> str:
    """'3 s ago' for the past, 'in 3 s' for the future, 'never' for None."""
    if then is None:
        return "never"
    delta = (utc(now) - utc(then)).total_seconds()  # type: ignore[operator]
    if abs(delta) < 1:
        return "just now"
    return f"{human_duration(delta)} ago" if delta > 0 else f"in {human_duration(delta)}"


def expires_in(when: datetime | None, now: datetime) -> str:
    """'expires in 6 d 23 h', or 'expired 2 h ago' once past."""
    if when is None:
        return "no expiry"
    delta = (utc(when) - utc(now)).total_seconds()  # type: ignore[operator]
    if delta <= 0:
        return f"expired {human_duration(delta)} ago"
    return f"expires in {human_duration(delta)}"


def utc_label(when: datetime | None) -> str:
    """The exact time, for hover titles and tables: '2026-01-01 12:00:05 UTC'."""
    value = utc(when)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def event_title(before: dict[str, Any] | None, after: dict[str, Any] | None, event_id: str = "") -> str:
    """The event's summary as it is now (or was, when deleted); its id when it has none."""
    for body in (after, before):
        if body and body.get("summary"):
            return str(body["summary"])
    for body in (after, before):
        if body and body.get("recurringEventId"):
            return f"occurrence of {body['recurringEventId']}"
    return event_id or "(untitled event)"


def event_when(body: dict[str, Any] | None) -> str:
    """The start of an event, for one-line summaries of created or deleted events."""
    if not body:
        return ""
    return render_value(body.get("start")) if body.get("start") else ""


def field_diffs(fields: list[str], before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[FieldDiff]:
    """Each changed field with its value before and after, rendered as short text, in reading order."""
    old, new = before or {}, after or {}
    ordered = sorted(fields, key=lambda name: (_FIELD_ORDER.get(name, len(_FIELD_ORDER)), name))
    return [FieldDiff(name, render_value(old.get(name)), render_value(new.get(name))) for name in ordered]


def render_value(value: Any) -> str:
    """A short readable rendering of an event field: times, people and lists made legible."""
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, dict) and ("dateTime" in value or "date" in value):
        text = _render_time(value)
    elif isinstance(value, list) and all(isinstance(v, dict) and "email" in v for v in value):
        text = ", ".join(
            str(v["email"]) + (f" ({v['responseStatus']})" if v.get("responseStatus") else "") for v in value
        )
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "; ".join(value)
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def lifecycle_title(change_type: str, summary: str | None = None) -> str:
    """What a lifecycle row of the feed says, in words: 'Calendar "Work" added', 'Account disconnected'."""
    subject, _, step = change_type.partition(".")
    words = _LIFECYCLE_WORDS.get(step, step.replace("_", " "))
    if subject == "calendar":
        return f'Calendar "{summary}" {words}' if summary else f"Calendar {words}"
    return f"Account {words}"


_LIFECYCLE_WORDS = {"reauth_required": "needs consent again", "synced": "synced in full for the first time"}


def _render_time(value: dict[str, Any]) -> str:
    """'2026-12-01 16:00 UTC' from Google's {dateTime, timeZone}: the wall time and one zone label."""
    if "date" in value and "dateTime" not in value:
        return f"{value['date']} (all day)"
    raw = str(value["dateTime"])
    try:
        parsed = parse_timestamp(raw)
    except ValueError:
        return raw
    wall = parsed.strftime("%Y-%m-%d %H:%M" + (":%S" if parsed.second else ""))
    zone = value.get("timeZone")
    if not zone:
        offset = parsed.utcoffset()
        zone = "UTC" if offset is not None and not offset else parsed.strftime("%z")
        zone = zone if zone == "UTC" or not zone else f"{zone[:3]}:{zone[3:]}"
    return f"{wall} {zone}".strip()
