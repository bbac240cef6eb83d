"""Event resources: building Google-shaped event JSON and applying writes to a calendar.

Shared by the Calendar API handlers and the people-side Python API so both edit the same way:
``updated``/``etag`` move on every change, ``sequence`` on significant ones, and every change takes
a new store sequence number (which is what sync tokens see).  Call with the store lock held.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import re
from typing import Any

from . import recurrence
from .errors import ApiError, invalid, not_found
from .store import Calendar, EventRecord, Store, new_id, rfc3339

WRITABLE = (
    "summary",
    "description",
    "location",
    "colorId",
    "start",
    "end",
    "endTimeUnspecified",
    "recurrence",
    "transparency",
    "visibility",
    "attendees",
    "attendeesOmitted",
    "extendedProperties",
    "reminders",
    "eventType",
    "guestsCanInviteOthers",
    "guestsCanModify",
    "guestsCanSeeOtherGuests",
    "anyoneCanAddSelf",
    "source",
    "attachments",
    "conferenceData",
    "status",
    "locked",
    "privateCopy",
    "gadget",
    "hangoutLink",
    "focusTimeProperties",
    "outOfOfficeProperties",
    "workingLocationProperties",
    "birthdayProperties",
)
SIGNIFICANT = ("start", "end", "recurrence", "location")
ORDER = (
    "kind",
    "etag",
    "id",
    "status",
    "htmlLink",
    "created",
    "updated",
    "summary",
    "description",
    "location",
    "colorId",
    "creator",
    "organizer",
    "start",
    "end",
    "endTimeUnspecified",
    "recurrence",
    "recurringEventId",
    "originalStartTime",
    "transparency",
    "visibility",
    "iCalUID",
    "sequence",
    "attendees",
    "attendeesOmitted",
    "extendedProperties",
    "hangoutLink",
    "conferenceData",
    "gadget",
    "anyoneCanAddSelf",
    "guestsCanInviteOthers",
    "guestsCanModify",
    "guestsCanSeeOtherGuests",
    "privateCopy",
    "locked",
    "reminders",
    "source",
    "attachments",
    "birthdayProperties",
    "focusTimeProperties",
    "outOfOfficeProperties",
    "workingLocationProperties",
    "eventType",
)
# What a user who may not see an event's details still gets of it: when, not what (the fields Google
# returns to a freeBusyReader's events.list; its docs list none).
TIME_ONLY = frozenset(
    {
        "kind",
        "etag",
        "id",
        "status",
        "htmlLink",
        "updated",
        "start",
        "end",
        "endTimeUnspecified",
        "recurrence",
        "recurringEventId",
        "originalStartTime",
        "transparency",
        "visibility",
        "iCalUID",
    }
)
DETAIL_ROLES = ("owner", "writer")
_ID = re.compile(r"^[a-v0-9]{5,1024}$")
_STATUSES = ("confirmed", "tentative", "cancelled")


def public(data: dict[str, Any]) -> dict[str, Any]:
    """What the API shows: everything, or for a cancelled event only what Google guarantees."""
    if data.get("status") != "cancelled":
        return data
    out: dict[str, Any] = {k: data[k] for k in ("kind", "etag", "id", "status", "updated") if k in data}
    for key in ("recurringEventId", "originalStartTime"):
        if key in data:
            out[key] = data[key]
    return out


def hides_details(data: dict[str, Any], role: str) -> bool:
    """Google: a reader sees a private event "but event details will be hidden"; a freeBusyReader
    sees no event's details but a public one's ("full event details will be displayed")."""
    if role in DETAIL_ROLES:
        return False
    visibility = data.get("visibility")
    if role == "freeBusyReader":
        return visibility != "public"
    return visibility in ("private", "confidential")  # "confidential": "The event is private."


def shown(data: dict[str, Any], role: str) -> dict[str, Any]:
    """What the API shows a user with access ``role`` on the event's calendar."""
    out = public(data)
    if hides_details(data, role):
        return {k: v for k, v in out.items() if k in TIME_ONLY}
    return out


def insert(
    store: Store, cal: Calendar, body: dict[str, Any], actor: str, now: dt.datetime, base_url: str
) -> EventRecord:
    """Create an event (the id may be given, as Google allows) and record the change."""
    event_id = body.get("id") or new_id()
    if not isinstance(event_id, str) or not _ID.match(event_id):
        raise invalid("Invalid resource id value.", "id")
    if event_id in cal.events:
        raise ApiError(409, "duplicate")
    seq = store.next_seq()
    data = {
        "kind": "calendar#event",
        "id": event_id,
        "status": "confirmed",
        "htmlLink": html_link(base_url, event_id, cal.id),
        "created": rfc3339(now),
        "creator": _person(actor, cal, creator=True),
        "organizer": _person(cal.id, cal, creator=False),
        "iCalUID": body.get("iCalUID") or f"{event_id}@google.com",
        "sequence": 0,
        "reminders": {"useDefault": True},
        "eventType": "default",
    }
    for key in ("recurringEventId", "originalStartTime"):
        if key in body:
            data[key] = body[key]
    _apply(data, body, cal, replace=False)
    stamp(data, now, seq)
    record = cal.add(event_id, _ordered(data), seq)
    _touch(cal, now, seq)
    return record


def patch(
    store: Store,
    cal: Calendar,
    event_id: str,
    changes: dict[str, Any],
    now: dt.datetime,
    base_url: str,
    *,
    replace: bool = False,
) -> EventRecord:
    """Patch (merge) or update (replace) an event; a virtual instance becomes an exception."""
    record = cal.events.get(event_id)
    data = copy.deepcopy(record.data if record is not None else get(store, cal, event_id, now))
    before = {k: data.get(k) for k in SIGNIFICANT}
    old = copy.deepcopy(data)
    _apply(data, changes, cal, replace=replace)
    if any(data.get(k) != before[k] for k in SIGNIFICANT):
        data["sequence"] = int(data.get("sequence", 0)) + 1
    seq = store.next_seq()
    stamp(data, now, seq)
    if _only_reminders_changed(old, data):
        # Google: "Updating event reminders will not cause [updated] to change" (the etag does).
        data["updated"] = old.get("updated", data["updated"])
    if record is None:
        record = cal.add(event_id, _ordered(data), seq)
    else:
        record.data, record.seq = _ordered(data), seq
    _touch(cal, now, seq)
    if data.get("status") == "cancelled" and data.get("recurrence"):
        _cancel_exceptions(store, cal, event_id, now)
    return record


def delete(store: Store, cal: Calendar, event_id: str, now: dt.datetime, base_url: str) -> EventRecord:
    """Cancel an event (tombstone kept for sync); a series takes its exceptions with it."""
    if get(store, cal, event_id, now).get("status") == "cancelled":
        raise ApiError(410, "deleted")
    return patch(store, cal, event_id, {"status": "cancelled"}, now, base_url)


def get(store: Store, cal: Calendar, event_id: str, now: dt.datetime) -> dict[str, Any]:
    """An event by id, including a not-yet-modified instance of a series."""
    record = cal.events.get(event_id)
    if record is not None:
        return record.data
    series, original = _split_instance_id(cal, event_id, now)
    return instance(cal, series.data, original)


def instance(cal: Calendar, series: dict[str, Any], original: dt.datetime | dt.date) -> dict[str, Any]:
    """The JSON of one unmodified occurrence of a series."""
    start, end = recurrence.shift(series, original, cal.time_zone)
    data = {k: v for k, v in series.items() if k != "recurrence"}
    data["id"] = f"{series['id']}_{recurrence.instance_suffix(original)}"
    data["start"], data["end"] = start, end
    data["recurringEventId"] = series["id"]
    data["originalStartTime"] = recurrence.as_event_time(original, series["start"].get("timeZone"))
    return _ordered(data)


def parse_original_start(text: str, cal: Calendar) -> dt.datetime | dt.date:
    """Accept an RFC 3339 time, a date, or an instance-id suffix as an occurrence's start."""
    parsed = recurrence.parse_suffix(text)
    if parsed is not None:
        return parsed
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    return recurrence.parse_when({"dateTime": text}, cal.time_zone)


def instance_id(series_id: str, original: dt.datetime | dt.date) -> str:
    """Google's id for an occurrence: ``<seriesId>_<suffix>``."""
    return f"{series_id}_{recurrence.instance_suffix(original)}"


def html_link(base_url: str, event_id: str, calendar_id: str) -> str:
    """A link in the shape of Google's (``eid`` is base64 of "<id> <calendarId>")."""
    eid = base64.urlsafe_b64encode(f"{event_id} {calendar_id}".encode()).decode().rstrip("=")
    return f"{base_url}/calendar/event?eid={eid}"


def _split_instance_id(cal: Calendar, event_id: str, now: dt.datetime) -> tuple[EventRecord, Any]:
    series_id, _, suffix = event_id.rpartition("_")
    series = cal.events.get(series_id)
    original = recurrence.parse_suffix(suffix) if series_id else None
    if series is None or original is None or not series.data.get("recurrence"):
        raise not_found()
    if series.data.get("status") == "cancelled":
        raise ApiError(410, "deleted")
    moment = recurrence.to_utc(original, cal.time_zone)
    found = recurrence.expand(series.data, moment, moment + dt.timedelta(seconds=1), now, cal.time_zone, limit=5)
    for candidate in found:
        if recurrence.instance_suffix(candidate) == suffix:
            return series, candidate
    raise not_found()


def _cancel_exceptions(store: Store, cal: Calendar, series_id: str, now: dt.datetime) -> None:
    for exc_id in sorted(cal.exceptions.get(series_id, ())):
        record = cal.events[exc_id]
        if record.data.get("status") != "cancelled":
            seq = store.next_seq()
            record.data = dict(record.data, status="cancelled")
            stamp(record.data, now, seq)
            record.seq = seq
            _touch(cal, now, seq)


def _apply(data: dict[str, Any], changes: dict[str, Any], cal: Calendar, *, replace: bool) -> None:
    """Merge (patch) or replace (update) the writable fields, then validate the result."""
    if not isinstance(changes, dict):
        raise invalid("Request body must be a JSON object.")
    if replace:
        for key in WRITABLE:
            if key not in ("status", "eventType") and key not in changes:
                data.pop(key, None)
    for key in WRITABLE:
        if key not in changes:
            continue
        value = changes[key]
        if value is None:
            data.pop(key, None)
        elif (
            key in ("start", "end", "reminders", "extendedProperties")
            and not replace
            and isinstance(value, dict)
            and isinstance(data.get(key), dict)
        ):
            merged = {**data[key], **value}
            if key == "extendedProperties":  # `private` and `shared` merge key by key; a null removes one
                for scope in ("private", "shared"):
                    if isinstance(value.get(scope), dict) and isinstance(data[key].get(scope), dict):
                        keys = {**data[key][scope], **value[scope]}
                        merged[scope] = {k: v for k, v in keys.items() if v is not None}
                    elif isinstance(value.get(scope), dict):
                        merged[scope] = {k: v for k, v in value[scope].items() if v is not None}
            if key in ("start", "end") and "date" in value and "dateTime" not in value:
                merged.pop("dateTime", None)
                merged.pop("timeZone", None)
            if key in ("start", "end") and "dateTime" in value:
                merged.pop("date", None)
            data[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            data[key] = _clone(value)
    _validate(data, cal)


def _clone(value: Any) -> Any:
    """Copy JSON data (much cheaper than ``copy.deepcopy`` for plain dicts and lists)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _validate(data: dict[str, Any], cal: Calendar) -> None:
    if data.get("status") not in _STATUSES:
        raise invalid("Invalid value for status.", "status")
    for key in ("start", "end"):
        if not isinstance(data.get(key), dict):
            raise ApiError(
                400, "required", "Missing end time." if key == "end" else "Missing start time.", location=key
            )
    start = recurrence.parse_when(data["start"], cal.time_zone)
    end = recurrence.parse_when(data["end"], cal.time_zone)
    if isinstance(start, dt.datetime) != isinstance(end, dt.datetime):
        raise bad("Start and end times must either both be date or both be dateTime.")
    if recurrence.to_utc(end, cal.time_zone) < recurrence.to_utc(start, cal.time_zone):
        raise ApiError(400, "timeRangeEmpty", "The specified time range is empty.", location="end")
    if data.get("recurrence"):
        if data.get("recurringEventId"):
            raise invalid("An instance cannot have a recurrence.", "recurrence")
        if isinstance(start, dt.datetime) and not data["start"].get("timeZone"):
            raise ApiError(400, "required", "Missing time zone definition for start time.", location="start.timeZone")
        recurrence.validate(data["recurrence"], start, cal.time_zone)
    for attendee in data.get("attendees") or []:
        if not isinstance(attendee, dict) or not attendee.get("email"):
            raise invalid("Invalid attendee email.", "attendees")
        attendee.setdefault("responseStatus", "needsAction")
        if attendee["email"].lower() == cal.id.lower():
            attendee["self"] = True
            attendee["organizer"] = True


def bad(message: str) -> ApiError:
    """A 400 ``badRequest`` for an inconsistent event body."""
    return ApiError(400, "badRequest", message)


def _person(email: str, cal: Calendar, *, creator: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"email": email}
    if not creator and email != cal.owner:
        out["displayName"] = cal.summary
    if creator and email != cal.owner:
        return out
    out["self"] = True
    return out


def _only_reminders_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = (set(old) | set(new)) - {"etag", "updated"}
    changed = {k for k in keys if old.get(k) != new.get(k)}
    return changed == {"reminders"} and "updated" in old


def stamp(data: dict[str, Any], now: dt.datetime, seq: int) -> None:
    data["updated"] = rfc3339(now)
    data["etag"] = f'"{int(now.timestamp() * 1000)}{seq % 1000000:06d}"'


def _touch(cal: Calendar, now: dt.datetime, seq: int) -> None:
    cal.updated = now
    cal.seq = seq


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ORDER if k in data}
