"""events.list, events.instances and calendarList.list: filtering, expansion, paging, sync tokens.

Paging is snapshot-bound: the first page records the store sequence ``snap`` and the last page's
``nextSyncToken`` is ``snap``.  Pages walk a stable key (insertion order, or start/updated time), so
an edit made between pages is either on a later page or, having ``seq > snap``, in the next
incremental sync -- never lost.  Call with the store lock held.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from dateutil.parser import isoparse

from . import events, recurrence
from .errors import ApiError, bad_request, invalid
from .store import Calendar, EventRecord, RawJson, Store, User, rfc3339

SYNC_INCOMPATIBLE = (
    "iCalUID",
    "orderBy",
    "privateExtendedProperty",
    "q",
    "sharedExtendedProperty",
    "timeMin",
    "timeMax",
    "updatedMin",
)
DEFAULT_REMINDERS = [{"method": "popup", "minutes": 10}]
Params = dict[str, list[str]]
Listed = dict[str, Any] | RawJson  # an event's API JSON, or its cached serialised text


def list_events(
    store: Store, cal: Calendar, role: str, params: Params, now: dt.datetime, sync_token_max_age: float | None
) -> dict[str, Any]:
    """The Events resource for one events.list page, as a user with access ``role`` sees it."""
    size = _max_results(params, default=250, cap=2500)
    single = _flag(params, "singleEvents")
    order_by = _one(params, "orderBy")
    if order_by not in (None, "startTime", "updated"):
        raise invalid(f"Invalid value for orderBy: {order_by}", "orderBy")
    if order_by == "startTime" and not single:
        raise bad_request("The requested ordering is not available for the particular query.")
    sync = _one(params, "syncToken")
    since: int | None = None
    if sync is not None:
        for name in SYNC_INCOMPATIBLE:
            if name in params:
                raise invalid(f"The '{name}' parameter cannot be used together with a syncToken.", name)
        if _one(params, "showDeleted") == "false":
            raise invalid("showDeleted cannot be false when a syncToken is given.", "showDeleted")
        since = store.read_sync_token(sync, "events:" + cal.id, cal.token_floor, sync_token_max_age, now).seq
    snap, after = _page_start(store, params, "events:" + cal.id)
    if after is not None and after.get("since") is not None:
        since = after["since"]
    window = _window(params)
    show_deleted = since is not None or _flag(params, "showDeleted")
    updated_min = _time(params, "updatedMin")
    match = _matcher(params, cal, role, since, show_deleted, single, updated_min, window)
    keyed: Iterable[tuple[Any, Listed]]
    if single:
        keyed = _expanded(cal, role, match, since, show_deleted, window, now)
    elif order_by == "updated":
        keyed = sorted(
            ((r.data["updated"], r.data["id"]), events.shown(r.data, role)) for r in cal.events.values() if match(r)
        )
    else:
        keyed = _by_insertion(cal, role, match, after)
    items, last = _take(keyed, after, size, ordered=single or order_by == "updated")
    body: dict[str, Any] = {
        "kind": "calendar#events",
        "etag": f'"p{snap:x}{cal.seq:x}"',
        "summary": cal.summary,
    }
    if cal.description:
        body["description"] = cal.description
    body.update(
        updated=rfc3339(cal.updated),
        timeZone=cal.time_zone,
        accessRole=role,
        defaultReminders=list(DEFAULT_REMINDERS),
    )
    if last is not None:
        body["nextPageToken"] = store.page_token({"r": "events:" + cal.id, "snap": snap, "k": last, "since": since})
    else:
        body["nextSyncToken"] = store.sync_token("events:" + cal.id, snap, now)
    body["items"] = items
    return body


def list_instances(
    store: Store, cal: Calendar, role: str, event_id: str, params: Params, now: dt.datetime
) -> dict[str, Any]:
    """The Events resource for events.instances (occurrences of one series, exceptions applied)."""
    series = cal.events.get(event_id)
    if series is None or not series.data.get("recurrence"):
        raise ApiError(404, "notFound")
    if series.data.get("status") == "cancelled":
        raise ApiError(410, "deleted")
    size = _max_results(params, default=250, cap=2500)
    snap, after = _page_start(store, params, "instances:" + cal.id + ":" + event_id)
    window = _window(params)
    show_deleted = _flag(params, "showDeleted")
    original = _one(params, "originalStart")
    keyed: list[tuple[Any, dict[str, Any]]] = []
    for item in _series_instances(cal, series.data, window, now, show_deleted):
        if original and item["originalStartTime"].get("dateTime", item["originalStartTime"].get("date")) != original:
            continue
        keyed.append(((_start_key(cal, item), item["id"]), events.shown(item, role)))
    keyed.sort(key=lambda pair: pair[0])
    items, last = _take(keyed, after, size, ordered=True)
    body: dict[str, Any] = {
        "kind": "calendar#events",
        "etag": f'"p{snap:x}{cal.seq:x}"',
        "summary": cal.summary,
        "updated": rfc3339(cal.updated),
        "timeZone": cal.time_zone,
        "accessRole": role,
        "defaultReminders": list(DEFAULT_REMINDERS),
    }
    if last is not None:
        body["nextPageToken"] = store.page_token({"r": "instances:" + cal.id + ":" + event_id, "snap": snap, "k": last})
    body["items"] = items
    return body


def list_calendars(
    store: Store, user: User, params: Params, now: dt.datetime, sync_token_max_age: float | None
) -> dict[str, Any]:
    """The CalendarList resource for one calendarList.list page."""
    size = _max_results(params, default=100, cap=250)
    resource = "calendarList:" + user.email
    since: int | None = None
    sync = _one(params, "syncToken")
    if sync is not None:
        if "minAccessRole" in params:
            raise invalid("The 'minAccessRole' parameter cannot be used together with a syncToken.", "minAccessRole")
        since = store.read_sync_token(sync, resource, user.token_floor, sync_token_max_age, now).seq
    snap, after = _page_start(store, params, resource)
    if after is not None and after.get("since") is not None:
        since = after["since"]
    # As Google: an incremental listing always shows deleted and hidden entries; a full one only when asked.
    show_deleted = since is not None or _flag(params, "showDeleted")
    show_hidden = since is not None or _flag(params, "showHidden")
    entries = sorted(user.entries.values(), key=lambda e: e.ordinal)
    keyed = (
        (e.ordinal, calendar_entry(store, user, e.calendar_id))
        for e in entries
        if (since is None or e.seq > since) and (show_deleted or not e.deleted) and (show_hidden or not e.hidden)
    )
    items, last = _take(keyed, after, size, ordered=True)
    body: dict[str, Any] = {"kind": "calendar#calendarList", "etag": f'"p{snap:x}"'}
    if last is not None:
        body["nextPageToken"] = store.page_token({"r": resource, "snap": snap, "k": last, "since": since})
    else:
        body["nextSyncToken"] = store.sync_token(resource, snap, now)
    body["items"] = items
    return body


def calendar_entry(store: Store, user: User, calendar_id: str) -> dict[str, Any]:
    """A CalendarListEntry (a removed one shows only id and ``deleted``, as in a sync)."""
    entry = user.entries[calendar_id]
    etag = f'"{entry.seq}"'
    if entry.deleted:
        return {"kind": "calendar#calendarListEntry", "etag": etag, "id": calendar_id, "deleted": True}
    cal = store.calendars[calendar_id]
    out: dict[str, Any] = {"kind": "calendar#calendarListEntry", "etag": etag, "id": cal.id, "summary": cal.summary}
    if cal.description:
        out["description"] = cal.description
    out.update(
        timeZone=cal.time_zone,
        colorId="14" if entry.primary else "9",
        backgroundColor="#9fe1e7" if entry.primary else "#5484ed",
        foregroundColor="#000000",
        selected=True,
        accessRole=entry.role,
        defaultReminders=list(DEFAULT_REMINDERS),
    )
    if entry.hidden:
        out["hidden"] = True
    if entry.primary:
        out["notificationSettings"] = {
            "notifications": [
                {"type": "eventCreation", "method": "email"},
                {"type": "eventChange", "method": "email"},
                {"type": "eventCancellation", "method": "email"},
                {"type": "eventResponse", "method": "email"},
            ]
        }
        out["primary"] = True
    out["conferenceProperties"] = {"allowedConferenceSolutionTypes": ["hangoutsMeet"]}
    return out


def calendar_resource(cal: Calendar) -> dict[str, Any]:
    """The Calendar resource (calendars.get)."""
    out: dict[str, Any] = {"kind": "calendar#calendar", "etag": f'"c{cal.seq:x}"', "id": cal.id, "summary": cal.summary}
    if cal.description:
        out["description"] = cal.description
    out["timeZone"] = cal.time_zone
    out["conferenceProperties"] = {"allowedConferenceSolutionTypes": ["hangoutsMeet"]}
    return out


# --- helpers ------------------------------------------------------------------------------------
def _page_start(store: Store, params: Params, resource: str) -> tuple[int, dict[str, Any] | None]:
    token = _one(params, "pageToken")
    if token is None:
        return store.seq, None
    data = store.read_page_token(token)
    if data.get("r") != resource:
        raise invalid("Invalid page token value.", "pageToken")
    return int(data["snap"]), data


def _take(
    keyed: Iterable[tuple[Any, Listed]], after: dict[str, Any] | None, size: int, *, ordered: bool
) -> tuple[list[Listed], Any]:
    """Up to ``size`` items with key greater than the page token's; the last key if more remain."""
    last_key = after.get("k") if after else None
    if isinstance(last_key, list):
        last_key = tuple(last_key)
    items: list[Listed] = []
    key: Any = None
    for key_i, item in keyed:
        if last_key is not None and ordered and key_i <= last_key:
            continue
        if len(items) == size:
            return items, key
        items.append(item)
        key = key_i
    return items, None


def _by_insertion(
    cal: Calendar, role: str, match: Callable[[EventRecord], bool], after: dict[str, Any] | None
) -> Iterator[tuple[int, Listed]]:
    first = int(after["k"]) + 1 if after else 0
    for ordinal in range(first, len(cal.order)):
        record = cal.events[cal.order[ordinal]]
        if not match(record):
            continue
        if events.hides_details(record.data, role):  # the cached text is the full event
            yield ordinal, events.shown(record.data, role)
        else:
            yield ordinal, record.public_json(events.public)


def _matcher(
    params: Params,
    cal: Calendar,
    role: str,
    since: int | None,
    show_deleted: bool,
    single: bool,
    updated_min: dt.datetime | None,
    window: tuple[Any, Any],
) -> Callable[[EventRecord], bool]:
    ical = _one(params, "iCalUID")
    query = (_one(params, "q") or "").lower()
    private = [p.split("=", 1) for p in params.get("privateExtendedProperty", [])]
    shared = [p.split("=", 1) for p in params.get("sharedExtendedProperty", [])]
    types = set(params.get("eventTypes", []))
    updated_text = rfc3339(updated_min) if updated_min else None
    if since is not None:
        return lambda record: record.seq > since
    if not (ical or query or private or shared or types or updated_text or single or window[0] or window[1]):
        # No filter: a full sync's listing (showDeleted) takes every record, a plain one hides deletions.
        if show_deleted:
            return lambda record: True
        return lambda record: record.data.get("status") != "cancelled" or _kept_cancelled(cal, record)

    def match(record: EventRecord) -> bool:
        data = record.data
        if updated_text is not None:
            if data["updated"] < updated_text:
                return False
        elif data.get("status") == "cancelled" and not show_deleted and (single or not _kept_cancelled(cal, record)):
            return False
        if ical and data.get("iCalUID") != ical:
            return False
        if types and data.get("eventType", "default") not in types:
            return False
        if (query or private or shared) and events.hides_details(data, role):
            data = events.shown(data, role)  # details the user may not see cannot be searched for
        if query and query not in _text(data):
            return False
        for pairs, scope in ((private, "private"), (shared, "shared")):
            props = (data.get("extendedProperties") or {}).get(scope) or {}
            if any(len(p) != 2 or props.get(p[0]) != p[1] for p in pairs):
                return False
        if (window[0] or window[1]) and not single and data.get("status") != "cancelled":
            return _overlaps(cal, data, window)
        return True

    return match


def _kept_cancelled(cal: Calendar, record: EventRecord) -> bool:
    """A cancelled occurrence of a live series stays in a plain list (it hides that occurrence)."""
    parent = cal.events.get(record.data.get("recurringEventId", ""))
    return parent is not None and parent.data.get("status") != "cancelled"


def _expanded(
    cal: Calendar,
    role: str,
    match: Callable[[EventRecord], bool],
    since: int | None,
    show_deleted: bool,
    window: tuple[Any, Any],
    now: dt.datetime,
) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """singleEvents=true: series replaced by their instances, sorted by start time."""
    out: dict[str, dict[str, Any]] = {}
    for record in cal.events.values():
        if not match(record):
            continue
        data = record.data
        if data.get("recurrence"):
            for item in _series_instances(cal, data, window, now, show_deleted, skip_exceptions=True):
                out[item["id"]] = item
        elif data.get("status") == "cancelled" or _overlaps(cal, data, window):
            out[data["id"]] = data
    keyed = [((_start_key(cal, item), item["id"]), events.shown(item, role)) for item in out.values()]
    keyed.sort(key=lambda pair: pair[0])
    return keyed


def _series_instances(
    cal: Calendar,
    series: dict[str, Any],
    window: tuple[Any, Any],
    now: dt.datetime,
    show_deleted: bool,
    skip_exceptions: bool = False,
) -> Iterator[dict[str, Any]]:
    cancelled_series = series.get("status") == "cancelled"
    for original in recurrence.expand(series, window[0], window[1], now, cal.time_zone):
        exception = cal.events.get(events.instance_id(series["id"], original))
        if exception is not None:
            if skip_exceptions:
                continue
            if exception.data.get("status") == "cancelled" and not show_deleted:
                continue
            yield exception.data
        elif show_deleted or not cancelled_series:
            yield events.instance(cal, series, original)


def _overlaps(cal: Calendar, data: dict[str, Any], window: tuple[Any, Any]) -> bool:
    low, high = window
    if low is None and high is None:
        return True
    if data.get("recurrence"):
        anchor = low or high
        return bool(recurrence.expand(data, low, high, anchor, cal.time_zone, limit=1))
    start = recurrence.to_utc(recurrence.parse_when(data["start"], cal.time_zone), cal.time_zone)
    end = recurrence.to_utc(recurrence.parse_when(data["end"], cal.time_zone), cal.time_zone)
    return (high is None or start < high) and (low is None or end > low)


def _start_key(cal: Calendar, data: dict[str, Any]) -> str:
    when = cast("dict[str, Any]", data.get("start") or data.get("originalStartTime"))
    return rfc3339(recurrence.to_utc(recurrence.parse_when(when, cal.time_zone), cal.time_zone))


def _text(data: dict[str, Any]) -> str:
    parts = [
        data.get("summary"),
        data.get("description"),
        data.get("location"),
        (data.get("organizer") or {}).get("email"),
    ]
    for attendee in data.get("attendees") or []:
        parts += [attendee.get("email"), attendee.get("displayName")]
    return " ".join(p for p in parts if p).lower()


def _window(params: Params) -> tuple[dt.datetime | None, dt.datetime | None]:
    low, high = _time(params, "timeMin"), _time(params, "timeMax")
    if low and high and high <= low:
        raise bad_request("The specified time range is empty.", "timeMax")
    return low, high


def _time(params: Params, name: str) -> dt.datetime | None:
    raw = _one(params, name)
    if raw is None:
        return None
    try:
        value = isoparse(raw)
    except ValueError:
        raise bad_request(f"Bad Request: invalid {name} {raw!r}", name) from None
    if value.tzinfo is None:
        raise bad_request(f"Bad Request: {name} must include a time zone offset", name)
    return value.replace(microsecond=0)  # "Milliseconds may be provided but are ignored."


def _max_results(params: Params, default: int, cap: int) -> int:
    raw = _one(params, "maxResults")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            f"Invalid value '{raw}'. Values must match the following regular expression: '-?\\d+'", "maxResults"
        ) from None
    if value < 1:
        raise invalid(f"Invalid value '{raw}'. Values must be within the range: [1, {cap}]", "maxResults")
    return min(value, cap)


def _flag(params: Params, name: str) -> bool:
    raw = _one(params, name)
    if raw not in (None, "true", "false", "True", "False", "1", "0"):
        raise invalid(f"Invalid boolean value: '{raw}'.", name)
    return raw in ("true", "True", "1")


def _one(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None
