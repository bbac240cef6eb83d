"""What a user's access role on a shared calendar lets them see through events.list/get/instances."""

from __future__ import annotations

from typing import Any

import pytest

from calsync.emulator import Emulator

from .conftest import list_all, service_for, timed

BOB = "bob@example.com"
WEEKLY = {
    "summary": "therapy",
    "description": "room 4, bring notes",
    "location": "Clinic",
    "start": {"dateTime": "2030-01-07T09:00:00Z", "timeZone": "UTC"},
    "end": {"dateTime": "2030-01-07T10:00:00Z", "timeZone": "UTC"},
    "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=3"],
    "visibility": "private",
}
# What Google still shows of an event whose details are hidden (seen in its answers to a
# freeBusyReader's events.list): when the time is taken, never what it is taken by.
TIME_ONLY = {
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


def _bobs_calendar_seen_by_alice(emu: Emulator, alice: str, role: str) -> Any:
    """Bob's primary calendar shared with Alice as ``role``; Alice's read-only client."""
    emu.create_user(BOB, "Bob")
    if role != "owner":
        emu.share_calendar(BOB, alice, role=role)
    return service_for(emu, emu.issue_tokens(BOB if role == "owner" else alice))


@pytest.mark.parametrize("role", ["owner", "writer", "reader", "freeBusyReader"])
def test_events_list_and_instances_report_the_callers_own_access_role(emu: Emulator, alice: str, role: str) -> None:
    """Google: accessRole is "The user's access role for this calendar" -- it was always "owner"."""
    api = _bobs_calendar_seen_by_alice(emu, alice, role)
    series = emu.insert_event(BOB, WEEKLY)
    assert api.events().list(calendarId=BOB).execute()["accessRole"] == role
    assert api.events().instances(calendarId=BOB, eventId=series["id"]).execute()["accessRole"] == role


def test_a_reader_sees_a_private_event_but_not_its_details(emu: Emulator, alice: str) -> None:
    """Google: "Private events will appear to users with reader access, but event details will be
    hidden." A reader was shown the summary, description, attendees... of a private event."""
    reader = _bobs_calendar_seen_by_alice(emu, alice, "reader")
    details = {
        "description": "salary review",
        "location": "HR",
        "attendees": [{"email": BOB}, {"email": "carol@example.com"}],
        "extendedProperties": {"private": {"k": "v"}, "shared": {"s": "t"}},
    }
    private = emu.insert_event(BOB, timed(1, 9, "private talk", visibility="private", **details))
    confidential = emu.insert_event(BOB, timed(2, 9, "secret", visibility="confidential", **details))
    public = emu.insert_event(BOB, timed(3, 9, "all hands", **details))
    series = emu.insert_event(BOB, WEEKLY)

    items, token, _ = list_all(reader, BOB)
    by_id = {e["id"]: e for e in items}
    for hidden in (private, confidential, series):
        seen = by_id[hidden["id"]]
        assert set(seen) <= TIME_ONLY, sorted(set(seen) - TIME_ONLY)
        assert seen == {k: v for k, v in hidden.items() if k in TIME_ONLY}
    assert by_id[public["id"]] == public  # a default-visibility event keeps its details
    got = reader.events().get(calendarId=BOB, eventId=private["id"]).execute()
    assert "summary" not in got and got["start"] == private["start"] and got["visibility"] == "private"
    for occurrence in reader.events().instances(calendarId=BOB, eventId=series["id"]).execute()["items"]:
        assert set(occurrence) <= TIME_ONLY and occurrence["recurringEventId"] == series["id"]
    expanded, _, _ = list_all(reader, BOB, singleEvents=True)
    assert [e.get("summary") for e in expanded] == [None, None, "all hands", None, None, None]
    # Hidden details cannot be found by searching for them either.
    assert reader.events().list(calendarId=BOB, q="private talk").execute()["items"] == []
    assert [e["id"] for e in reader.events().list(calendarId=BOB, q="salary").execute()["items"]] == [public["id"]]
    assert reader.events().list(calendarId=BOB, privateExtendedProperty="k=v").execute()["items"] == [
        by_id[public["id"]]
    ]
    # An incremental sync shows a private event's change in the same hidden shape.
    emu.patch_event(BOB, private["id"], {"summary": "renamed"})
    changed = reader.events().list(calendarId=BOB, syncToken=token).execute()["items"]
    assert [set(e) <= TIME_ONLY and "summary" not in e for e in changed] == [True]
    # A writer (and the owner) sees every detail.
    emu.share_calendar(BOB, alice, role="writer")
    writer_items = {e["id"]: e for e in list_all(reader, BOB)[0]}
    assert writer_items[private["id"]]["summary"] == "renamed"
    assert writer_items[confidential["id"]]["attendees"] == confidential["attendees"]


def test_a_free_busy_reader_sees_only_when_the_calendar_is_busy(emu: Emulator, alice: str) -> None:
    """Google: freeBusyReader "Lets the grantee see whether the calendar is free or busy at a given
    time, but does not allow access to event details" -- except of a public event, whose "full event
    details will be displayed". It was shown every summary and description."""
    busy = _bobs_calendar_seen_by_alice(emu, alice, "freeBusyReader")
    meeting = emu.insert_event(BOB, timed(1, 9, "board meeting", description="layoffs", location="HQ"))
    free = emu.insert_event(BOB, timed(2, 9, "gym", transparency="transparent", visibility="default"))
    series = emu.insert_event(BOB, {**WEEKLY, "visibility": "default"})
    gone = emu.insert_event(BOB, timed(3, 9, "cancelled"))
    emu.delete_event(BOB, gone["id"])
    talk = emu.insert_event(BOB, timed(4, 9, "open talk", description="all welcome", visibility="public"))

    items, _, _ = list_all(busy, BOB, showDeleted=True)
    assert [e["id"] for e in items] == [meeting["id"], free["id"], series["id"], gone["id"], talk["id"]]
    for stored, seen in zip((meeting, free, series), items, strict=False):
        assert set(seen) <= TIME_ONLY, sorted(set(seen) - TIME_ONLY)
        assert seen == {k: v for k, v in stored.items() if k in TIME_ONLY}
    assert items[1]["transparency"] == "transparent"  # free time stays free
    assert items[3]["status"] == "cancelled"
    assert items[4] == talk
    got = busy.events().get(calendarId=BOB, eventId=meeting["id"]).execute()
    assert "summary" not in got and "description" not in got and got["end"] == meeting["end"]
    for occurrence in busy.events().instances(calendarId=BOB, eventId=series["id"]).execute()["items"]:
        assert set(occurrence) <= TIME_ONLY
    assert busy.events().list(calendarId=BOB, q="layoffs").execute()["items"] == []
    assert busy.events().list(calendarId=BOB, q="welcome").execute()["items"] == [talk]
