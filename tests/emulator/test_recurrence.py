"""Recurring series: exceptions, cancelled instances, singleEvents expansion and events.instances."""

from __future__ import annotations

from typing import Any

import pytest
from googleapiclient.errors import HttpError

from calsync.emulator import Emulator

from .conftest import list_all

WEEKLY = {
    "summary": "standup",
    "start": {"dateTime": "2030-01-07T09:00:00+01:00", "timeZone": "Europe/Berlin"},
    "end": {"dateTime": "2030-01-07T09:15:00+01:00", "timeZone": "Europe/Berlin"},
    "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=5"],
}


def test_modified_and_cancelled_instances_are_exceptions(emu: Emulator, service: Any, alice: str) -> None:
    series = emu.insert_event(alice, WEEKLY)
    moved = emu.patch_instance(
        alice,
        series["id"],
        "2030-01-14T09:00:00+01:00",
        {
            "start": {"dateTime": "2030-01-14T10:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2030-01-14T10:15:00+01:00", "timeZone": "Europe/Berlin"},
        },
    )
    assert moved["id"] == series["id"] + "_20300114T080000Z"
    assert moved["recurringEventId"] == series["id"]
    assert moved["originalStartTime"] == {"dateTime": "2030-01-14T09:00:00+01:00", "timeZone": "Europe/Berlin"}
    assert moved["iCalUID"] == series["iCalUID"] and "recurrence" not in moved
    cancelled = emu.cancel_instance(alice, series["id"], "20300121T080000Z")
    assert cancelled["status"] == "cancelled"
    items, _, _ = list_all(service)
    by_id = {e["id"]: e for e in items}
    # Google keeps cancelled occurrences of a live series in a plain full list.
    assert set(by_id) == {series["id"], moved["id"], cancelled["id"]}
    assert by_id[cancelled["id"]] == {
        k: by_id[cancelled["id"]][k]
        for k in ("kind", "etag", "id", "status", "updated", "recurringEventId", "originalStartTime")
    }


def test_single_events_expands_and_applies_exceptions(emu: Emulator, service: Any, alice: str) -> None:
    series = emu.insert_event(alice, WEEKLY)
    emu.patch_instance(alice, series["id"], "2030-01-14T09:00:00+01:00", {"summary": "moved standup"})
    emu.cancel_instance(alice, series["id"], "2030-01-21T09:00:00+01:00")
    items, _, _ = list_all(service, singleEvents=True, orderBy="startTime")
    assert [e["start"]["dateTime"] for e in items] == [
        "2030-01-07T09:00:00+01:00",
        "2030-01-14T09:00:00+01:00",
        "2030-01-28T09:00:00+01:00",
        "2030-02-04T09:00:00+01:00",
    ]
    assert [e["summary"] for e in items] == ["standup", "moved standup", "standup", "standup"]
    assert all(e["recurringEventId"] == series["id"] for e in items)
    assert items[0]["id"] == series["id"] + "_20300107T080000Z"


def test_expansion_keeps_wall_time_across_dst(emu: Emulator, service: Any, alice: str) -> None:
    body = dict(
        WEEKLY,
        start={"dateTime": "2030-03-25T09:00:00+01:00", "timeZone": "Europe/Berlin"},
        end={"dateTime": "2030-03-25T10:00:00+01:00", "timeZone": "Europe/Berlin"},
        recurrence=["RRULE:FREQ=WEEKLY;COUNT=2"],
    )
    emu.insert_event(alice, body)
    items, _, _ = list_all(service, singleEvents=True)
    assert [e["start"]["dateTime"] for e in items] == ["2030-03-25T09:00:00+01:00", "2030-04-01T09:00:00+02:00"]


def test_window_and_exdate_and_all_day(emu: Emulator, service: Any, alice: str) -> None:
    emu.insert_event(
        alice,
        {
            "summary": "daily",
            "start": {"date": "2030-01-01"},
            "end": {"date": "2030-01-02"},
            "recurrence": ["RRULE:FREQ=DAILY", "EXDATE;VALUE=DATE:20300101,20300103"],
        },
    )
    items, _, _ = list_all(service, singleEvents=True, timeMin="2030-01-02T00:00:00Z", timeMax="2030-01-05T00:00:00Z")
    assert [e["start"]["date"] for e in items] == ["2030-01-02", "2030-01-04"]
    assert items[0]["id"].endswith("_20300102")


def test_open_ended_series_expansion_is_bounded(emu: Emulator, service: Any, alice: str) -> None:
    emu.insert_event(
        alice,
        {
            "summary": "forever",
            "start": {"dateTime": "2030-01-01T08:00:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2030-01-01T08:30:00Z", "timeZone": "UTC"},
            "recurrence": ["RRULE:FREQ=HOURLY"],
        },
    )
    items, _, _ = list_all(service, singleEvents=True, maxResults=2500)
    assert 0 < len(items) <= 2500


def test_instances_endpoint(emu: Emulator, service: Any, alice: str) -> None:
    series = emu.insert_event(alice, WEEKLY)
    emu.cancel_instance(alice, series["id"], "2030-01-14T09:00:00+01:00")
    page = service.events().instances(calendarId="primary", eventId=series["id"]).execute()
    assert len(page["items"]) == 4
    page = (
        service.events().instances(calendarId="primary", eventId=series["id"], showDeleted=True, maxResults=3).execute()
    )
    assert len(page["items"]) == 3 and "nextPageToken" in page
    with pytest.raises(HttpError) as err:
        service.events().instances(calendarId="primary", eventId="nosuchseries").execute()
    assert err.value.resp.status == 404


def test_sync_reports_instance_changes_and_series_deletion(emu: Emulator, service: Any, alice: str) -> None:
    series = emu.insert_event(alice, WEEKLY)
    _, token, _ = list_all(service)
    exc = emu.cancel_instance(alice, series["id"], "2030-01-14T09:00:00+01:00")
    items, token, _ = list_all(service, syncToken=token)
    assert [(e["id"], e["status"], e["recurringEventId"]) for e in items] == [(exc["id"], "cancelled", series["id"])]
    emu.delete_event(alice, series["id"])
    items, _, _ = list_all(service, syncToken=token)
    assert {e["id"] for e in items} == {series["id"]}
    assert all(e["status"] == "cancelled" for e in items)


def test_instance_of_series_can_be_fetched_and_patched_through_the_api(emu: Emulator, writer: Any, alice: str) -> None:
    series = emu.insert_event(alice, WEEKLY)
    iid = series["id"] + "_20300128T080000Z"
    got = writer.events().get(calendarId="primary", eventId=iid).execute()
    assert got["recurringEventId"] == series["id"] and got["start"]["dateTime"] == "2030-01-28T09:00:00+01:00"
    patched = writer.events().patch(calendarId="primary", eventId=iid, body={"summary": "special"}).execute()
    assert patched["summary"] == "special"
    assert [e["id"] for e in emu.events(alice)] == [series["id"], iid]
    with pytest.raises(HttpError) as err:
        writer.events().get(calendarId="primary", eventId=series["id"] + "_20300129T080000Z").execute()
    assert err.value.resp.status == 404


def test_recurring_without_time_zone_or_bad_rule_is_400(emu: Emulator, writer: Any, alice: str) -> None:
    body: dict[str, Any] = {"start": {"dateTime": "2030-01-01T08:00:00Z"}, "end": {"dateTime": "2030-01-01T09:00:00Z"}}
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body=dict(body, recurrence=["RRULE:FREQ=DAILY"])).execute()
    assert err.value.resp.status == 400
    body = {"start": {"date": "2030-01-01"}, "end": {"date": "2030-01-02"}, "recurrence": ["RRULE:FREQ=NEVER"]}
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body=body).execute()
    assert err.value.resp.status == 400


def test_dtstart_on_a_day_the_rule_skips_is_the_first_instance(emu: Emulator, service: Any, alice: str) -> None:
    """As Google lists it (googleapis/google-api-nodejs-client#2214): a Monday start with
    `BYDAY=TU,TH,SA;COUNT=5` is six instances, the Monday and five the rule gives."""
    series = emu.insert_event(
        alice,
        {
            "summary": "session",
            "start": {"dateTime": "2020-06-08T13:00:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2020-06-08T14:00:00Z", "timeZone": "UTC"},
            "recurrence": ["RRULE:FREQ=WEEKLY;INTERVAL=1;BYDAY=TU,TH,SA;COUNT=5"],
        },
    )
    items, _, _ = list_all(service, singleEvents=True, orderBy="startTime")
    assert [e["start"]["dateTime"][:10] for e in items] == [
        "2020-06-08",
        "2020-06-09",
        "2020-06-11",
        "2020-06-13",
        "2020-06-16",
        "2020-06-18",
    ]
    assert items[0]["id"] == series["id"] + "_20200608T130000Z"
