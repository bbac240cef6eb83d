"""Every JSON body the emulator returns matches the calendar v3 discovery schemas: required keys
present, types right, and no key Google's schema does not have."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import googleapiclient
import jsonschema
import pytest
import requests
from googleapiclient.errors import HttpError

from calsync.emulator import Emulator

from .conftest import FULL, Receiver, list_all, service_for, timed

DISCOVERY = Path(googleapiclient.__file__).parent / "discovery_cache/documents/calendar.v3.json"
REQUIRED = {
    "Event": ["kind", "etag", "id", "status"],
    "Events": ["kind", "etag", "summary", "updated", "timeZone", "accessRole", "defaultReminders", "items"],
    "CalendarList": ["kind", "etag", "items"],
    "CalendarListEntry": ["kind", "etag", "id"],
    "Calendar": ["kind", "etag", "id", "summary", "timeZone"],
    "Channel": ["kind", "id", "resourceId", "resourceUri", "expiration"],
}
LIVE_EVENT = [
    "htmlLink",
    "created",
    "updated",
    "creator",
    "organizer",
    "start",
    "end",
    "iCalUID",
    "sequence",
    "reminders",
    "eventType",
]
ERROR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "message", "errors"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "status": {"type": "string"},
                "errors": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["domain", "reason", "message"],
                        "properties": {
                            k: {"type": "string"} for k in ("domain", "reason", "message", "locationType", "location")
                        },
                    },
                },
            },
        }
    },
}


def _convert(node: dict[str, Any]) -> dict[str, Any]:
    """A discovery schema node as JSON Schema (objects closed unless the schema says they are maps)."""
    if "$ref" in node:
        return {"$ref": f"#/definitions/{node['$ref']}"}
    kind = node.get("type")
    out: dict[str, Any] = {}
    if kind == "any":
        return out
    if kind == "string" and node.get("format") in ("int64", "uint64"):
        out = {"type": "string", "pattern": r"^-?\d+$"}
    elif kind == "string" and node.get("format") == "date-time":
        out = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"}
    elif kind == "string" and node.get("format") == "date":
        out = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\d$"}
    elif kind:
        out["type"] = kind
    if kind == "array":
        out["items"] = _convert(node["items"])
    if kind == "object":
        out["properties"] = {k: _convert(v) for k, v in node.get("properties", {}).items()}
        extra = node.get("additionalProperties")
        out["additionalProperties"] = _convert(extra) if extra else False
    return out


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    discovery = json.loads(DISCOVERY.read_text())
    definitions = {name: _convert(node) for name, node in discovery["schemas"].items()}
    for name, keys in REQUIRED.items():
        definitions[name]["required"] = keys
    return definitions


def check(schemas: dict[str, Any], name: str, body: Any, extra_required: Sequence[str] = ()) -> None:
    validators = schemas.setdefault("__validators__", {})
    if name not in validators:
        definitions = {k: v for k, v in schemas.items() if k != "__validators__"}
        validators[name] = jsonschema.Draft7Validator({"$ref": f"#/definitions/{name}", "definitions": definitions})
    validators[name].validate(body)
    missing = [k for k in extra_required if k not in body]
    assert not missing, f"{name} lacks {missing}"


def test_event_and_events_list(emu: Emulator, service: Any, alice: str, schemas: dict[str, Any]) -> None:
    plain = emu.insert_event(
        alice, timed(1, 9, location="Room", description="d", attendees=[{"email": "bob@example.com"}, {"email": alice}])
    )
    series = emu.insert_event(
        alice,
        {
            "summary": "s",
            "start": {"dateTime": "2030-01-01T08:00:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2030-01-01T09:00:00Z", "timeZone": "UTC"},
            "recurrence": ["RRULE:FREQ=DAILY;COUNT=3"],
        },
    )
    emu.patch_instance(alice, series["id"], "2030-01-02T08:00:00Z", {"summary": "x"})
    emu.cancel_instance(alice, series["id"], "2030-01-03T08:00:00Z")
    allday = emu.insert_event(alice, {"summary": "a", "start": {"date": "2030-01-05"}, "end": {"date": "2030-01-06"}})
    emu.delete_event(alice, allday["id"])
    for params in ({}, {"singleEvents": True}, {"showDeleted": True}, {"showDeleted": True, "singleEvents": True}):
        page = service.events().list(calendarId="primary", **params).execute()
        check(schemas, "Events", page)
        for item in page["items"]:
            check(schemas, "Event", item, LIVE_EVENT if item["status"] != "cancelled" else ())
    check(schemas, "Event", service.events().get(calendarId="primary", eventId=plain["id"]).execute(), LIVE_EVENT)
    instances = service.events().instances(calendarId="primary", eventId=series["id"]).execute()
    check(schemas, "Events", instances)
    for item in instances["items"]:
        check(schemas, "Event", item, [*LIVE_EVENT, "recurringEventId", "originalStartTime"])


def test_a_hidden_calendar_is_listed_only_with_show_hidden_or_in_a_sync(
    emu: Emulator, service: Any, alice: str
) -> None:
    """As Google: a full listing leaves hidden entries out unless showHidden; an incremental one always
    has them (showHidden cannot be false with a syncToken)."""
    hidden = emu.create_calendar(alice, "Hidden")
    token = service.calendarList().list().execute()["nextSyncToken"]
    emu.hide_calendar(alice, hidden)
    assert hidden not in [e["id"] for e in service.calendarList().list().execute()["items"]]
    shown = {e["id"]: e for e in service.calendarList().list(showHidden=True).execute()["items"]}
    assert shown[hidden]["hidden"] is True
    delta = service.calendarList().list(syncToken=token).execute()["items"]
    assert [(e["id"], e.get("hidden")) for e in delta] == [(hidden, True)]


def test_calendar_list_calendar_and_channel(
    emu: Emulator, service: Any, alice: str, schemas: dict[str, Any], receiver: Receiver
) -> None:
    removed = emu.create_calendar(alice, "Gone")
    page = service.calendarList().list().execute()
    check(schemas, "CalendarList", page)
    for entry in page["items"]:
        check(schemas, "CalendarListEntry", entry, ["summary", "timeZone", "accessRole"])
    emu.remove_calendar(alice, removed)
    delta = service.calendarList().list(syncToken=page["nextSyncToken"]).execute()
    check(schemas, "CalendarList", delta)
    for entry in delta["items"]:
        check(schemas, "CalendarListEntry", entry)
    check(schemas, "CalendarListEntry", service.calendarList().get(calendarId=alice).execute())
    check(schemas, "Calendar", service.calendars().get(calendarId="primary").execute())
    for body in (
        {"id": "c1", "type": "web_hook", "address": receiver.url, "token": "t"},
        {"id": "c2", "type": "web_hook", "address": receiver.url},
    ):
        check(schemas, "Channel", service.events().watch(calendarId="primary", body=body).execute())
    check(
        schemas,
        "Channel",
        service.calendarList().watch(body={"id": "c3", "type": "web_hook", "address": receiver.url}).execute(),
    )


def test_every_error_uses_googles_envelope(emu: Emulator, service: Any, alice: str) -> None:
    writer = service_for(emu, emu.issue_tokens(alice, scopes=(FULL,)))
    _, token, _ = list_all(service)
    emu.invalidate_sync_tokens()
    emu.fail_next(1, status=429)
    calls: list[Callable[[], Any]] = [
        lambda: service.events().list(calendarId="primary").execute(),  # 429
        lambda: service.events().list(calendarId="primary", syncToken=token).execute(),  # 410
        lambda: service.events().get(calendarId="primary", eventId="unknown00").execute(),  # 404
        lambda: service.events().insert(calendarId="primary", body=timed(1, 1)).execute(),  # 403
        lambda: writer.events().insert(calendarId="primary", body={}).execute(),  # 400
        lambda: service.channels().stop(body={"id": "x", "resourceId": "y"}).execute(),  # 404
    ]
    codes = []
    for call in calls:
        with pytest.raises(HttpError) as err:
            call()
        jsonschema.validate(json.loads(err.value.content), ERROR_SCHEMA)
        codes.append(err.value.resp.status)
    assert codes == [429, 410, 404, 403, 400, 404]
    raw = requests.get(emu.api_url + "calendar/v3/calendars/primary/events")
    jsonschema.validate(raw.json(), ERROR_SCHEMA)
    raw = requests.get(emu.api_url + "calendar/v3/no/such/path")
    assert raw.status_code == 404
    jsonschema.validate(raw.json(), ERROR_SCHEMA)
