"""Events through google-api-python-client: shapes, writes, scopes, paging under concurrent edits."""

from __future__ import annotations

import re
import time
from typing import Any, cast

import pytest
from googleapiclient.errors import HttpError

from calsync.emulator import Emulator

from .conftest import ALICE, Receiver, list_all, timed


def reason(err: HttpError) -> str:
    import json

    return cast("str", json.loads(err.content)["error"]["errors"][0]["reason"])


def test_event_created_by_a_person_looks_like_googles(emu: Emulator, service: Any, alice: str) -> None:
    stored = emu.insert_event(alice, timed(1, 9, location="Room 1"))
    got = service.events().get(calendarId="primary", eventId=stored["id"]).execute()
    assert got == stored
    assert re.fullmatch(r"[a-v0-9]{26}", got["id"])
    assert got["kind"] == "calendar#event" and got["status"] == "confirmed"
    assert re.fullmatch(r'"\d+"', got["etag"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", got["updated"])
    assert got["iCalUID"] == got["id"] + "@google.com"
    assert got["organizer"] == {"email": ALICE, "self": True}
    assert got["sequence"] == 0


def test_patch_bumps_etag_and_updated_and_sequence_only_when_significant(emu: Emulator, alice: str) -> None:
    first = emu.insert_event(alice, timed(1, 9))
    renamed = emu.patch_event(alice, first["id"], {"summary": "renamed"})
    assert renamed["etag"] != first["etag"] and renamed["sequence"] == 0
    moved = emu.patch_event(
        alice, first["id"], {"start": {"dateTime": "2030-01-01T10:00:00Z"}, "end": {"dateTime": "2030-01-01T11:00:00Z"}}
    )
    assert moved["sequence"] == 1 and moved["summary"] == "renamed"
    replaced = emu.update_event(alice, first["id"], timed(2, 9, summary="whole"))
    assert replaced["summary"] == "whole" and replaced["sequence"] == 2 and "location" not in replaced


def test_a_reminders_only_patch_moves_the_etag_and_keeps_updated(emu: Emulator, alice: str) -> None:
    """Google: "Updating event reminders will not cause [updated] to change"."""
    first = emu.insert_event(alice, timed(1, 9))
    reminded = emu.patch_event(alice, first["id"], {"reminders": {"useDefault": False, "overrides": []}})
    assert reminded["etag"] != first["etag"] and reminded["updated"] == first["updated"]
    time.sleep(0.002)  # `updated` has millisecond resolution
    renamed = emu.patch_event(alice, first["id"], {"summary": "renamed"})
    assert renamed["updated"] > first["updated"]


def test_patching_extended_properties_changes_only_the_keys_named(emu: Emulator, writer: Any, alice: str) -> None:
    """Google's guide: a patch changes some properties and leaves the others; a null deletes one. The
    whole `private` map was replaced, and a null was stored."""
    made = emu.insert_event(alice, {**timed(1, 9), "extendedProperties": {"private": {"a": "1", "b": "2"}}})
    patched = (
        writer.events()
        .patch(
            calendarId="primary",
            eventId=made["id"],
            body={"extendedProperties": {"private": {"c": "3", "a": None}, "shared": {"s": "x"}}},
        )
        .execute()
    )
    assert patched["extendedProperties"] == {"private": {"b": "2", "c": "3"}, "shared": {"s": "x"}}


def test_write_through_api_needs_a_write_scope(emu: Emulator, service: Any, writer: Any, alice: str) -> None:
    with pytest.raises(HttpError) as err:
        service.events().insert(calendarId="primary", body=timed(1, 9)).execute()
    assert err.value.resp.status == 403 and reason(err.value) == "insufficientPermissions"
    made = writer.events().insert(calendarId="primary", body=timed(1, 9)).execute()
    patched = writer.events().patch(calendarId="primary", eventId=made["id"], body={"summary": "x"}).execute()
    assert patched["summary"] == "x"
    updated = writer.events().update(calendarId="primary", eventId=made["id"], body=timed(3, 8)).execute()
    assert updated["start"]["dateTime"] == "2030-01-03T08:00:00Z"
    writer.events().delete(calendarId="primary", eventId=made["id"]).execute()
    assert emu.events(alice) == []
    assert emu.events(alice, include_cancelled=True)[0]["status"] == "cancelled"


def test_deleting_twice_is_410_deleted_and_unknown_is_404(emu: Emulator, writer: Any, alice: str) -> None:
    event = emu.insert_event(alice, timed(1, 9))
    writer.events().delete(calendarId="primary", eventId=event["id"]).execute()
    with pytest.raises(HttpError) as err:
        writer.events().delete(calendarId="primary", eventId=event["id"]).execute()
    assert err.value.resp.status == 410 and reason(err.value) == "deleted"
    with pytest.raises(HttpError) as err:
        writer.events().get(calendarId="primary", eventId="nosuchevent00").execute()
    assert err.value.resp.status == 404 and reason(err.value) == "notFound"


def test_insert_validates_like_google(emu: Emulator, writer: Any, alice: str) -> None:
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body={"summary": "no times"}).execute()
    assert err.value.resp.status == 400
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body=timed(1, 9, id="UPPER-case!")).execute()
    assert err.value.resp.status == 400
    made = writer.events().insert(calendarId="primary", body=timed(1, 9, id="custom0id123")).execute()
    assert made["id"] == "custom0id123"
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body=timed(1, 9, id="custom0id123")).execute()
    assert err.value.resp.status == 409 and reason(err.value) == "duplicate"


def test_list_pages_have_page_token_or_sync_token_never_both(emu: Emulator, service: Any, alice: str) -> None:
    emu.bulk_insert_events(alice, [timed(1 + i % 28, i % 20) for i in range(25)])
    token, pages = None, []
    while True:
        page = service.events().list(calendarId="primary", maxResults=10, pageToken=token).execute()
        pages.append(page)
        assert ("nextPageToken" in page) != ("nextSyncToken" in page)
        token = page.get("nextPageToken")
        if not token:
            break
    assert [len(p["items"]) for p in pages] == [10, 10, 5]
    assert len({e["id"] for p in pages for e in p["items"]}) == 25


def test_edits_between_pages_are_never_lost(emu: Emulator, service: Any, alice: str) -> None:
    originals = [emu.insert_event(alice, timed(1, 0, summary=f"e{i}")) for i in range(30)]
    first = service.events().list(calendarId="primary", maxResults=10).execute()
    seen = {e["id"]: e for e in first["items"]}
    early, late = originals[0]["id"], originals[25]["id"]
    emu.patch_event(alice, early, {"summary": "changed early"})  # already paged past
    emu.patch_event(alice, late, {"summary": "changed late"})  # still ahead
    emu.delete_event(alice, originals[1]["id"])
    added = emu.insert_event(alice, timed(2, 0, summary="added while paging"))
    token = first["nextPageToken"]
    while token:
        page = service.events().list(calendarId="primary", maxResults=10, pageToken=token).execute()
        seen.update({e["id"]: e for e in page["items"]})
        token = page.get("nextPageToken")
        sync = page.get("nextSyncToken")
    assert seen[late]["summary"] == "changed late"
    changes = service.events().list(calendarId="primary", syncToken=sync).execute()
    changed = {e["id"]: e for e in changes["items"]}
    assert changed[early]["summary"] == "changed early"
    assert changed[originals[1]["id"]]["status"] == "cancelled"
    assert added["id"] in changed
    mirror = {**seen, **changed}
    live = {e["id"] for e in emu.events(alice)}
    assert {i for i, e in mirror.items() if e["status"] != "cancelled"} == live


def test_max_results_is_capped_and_validated(emu: Emulator, service: Any, alice: str) -> None:
    emu.bulk_insert_events(alice, [timed(1, 1)] * 3)
    page = service.events().list(calendarId="primary", maxResults=99999).execute()
    assert len(page["items"]) == 3
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId="primary", maxResults=0).execute()
    assert err.value.resp.status == 400


def test_time_window_and_search_filters(emu: Emulator, service: Any, alice: str) -> None:
    emu.insert_event(alice, timed(1, 9, summary="breakfast"))
    emu.insert_event(alice, timed(5, 9, summary="lunch with Bob"))
    items = (
        service.events()
        .list(calendarId="primary", timeMin="2030-01-04T00:00:00Z", timeMax="2030-01-06T00:00:00Z")
        .execute()["items"]
    )
    assert [e["summary"] for e in items] == ["lunch with Bob"]
    items = service.events().list(calendarId="primary", q="bob").execute()["items"]
    assert [e["summary"] for e in items] == ["lunch with Bob"]


def test_primary_resolves_and_foreign_calendar_is_404(emu: Emulator, service: Any, alice: str) -> None:
    emu.create_user("bob@example.com")
    assert service.calendars().get(calendarId="primary").execute()["id"] == ALICE
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId="bob@example.com").execute()
    assert err.value.resp.status == 404


def test_bulk_insert_is_fast_and_sends_one_push(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    import time

    service.events().watch(
        calendarId="primary", body={"id": "bulk", "type": "web_hook", "address": receiver.url}
    ).execute()
    receiver.wait_for(lambda hits: len(hits) == 1)
    started = time.monotonic()
    assert emu.bulk_insert_events(alice, (timed(1 + i % 28, i % 20) for i in range(5000))) == 5000
    assert time.monotonic() - started < 5
    assert emu.wait_push_idle()
    assert receiver.states() == ["sync", "exists"]
    items, _, pages = list_all(service, maxResults=2500)
    assert len(items) == 5000 and pages == 2


def test_fields_selects_a_partial_response(emu: Emulator, service: Any, alice: str) -> None:
    emu.insert_event(alice, timed(1, 9, location="here"))
    page = (
        service.events()
        .list(calendarId="primary", fields="kind,nextSyncToken,items(id,start/dateTime,location)")
        .execute()
    )
    assert set(page) == {"kind", "nextSyncToken", "items"}
    assert set(page["items"][0]) == {"id", "start", "location"} and set(page["items"][0]["start"]) == {"dateTime"}
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId="primary", fields="items(id").execute()
    assert err.value.resp.status == 400


def test_fractions_of_a_second_in_the_window_are_ignored(emu: Emulator, service: Any, alice: str) -> None:
    # events.list: timeMin/timeMax "Milliseconds may be provided but are ignored."
    emu.insert_event(alice, timed(1, 9, summary="at nine"))
    before_nine, _, _ = list_all(
        service, timeMin="2030-01-01T08:00:00Z", timeMax="2030-01-01T09:00:00.500Z", singleEvents=True
    )
    assert before_nine == []
    at_nine, _, _ = list_all(service, timeMin="2030-01-01T08:00:00Z", timeMax="2030-01-01T09:00:01Z", singleEvents=True)
    assert [e["summary"] for e in at_nine] == ["at nine"]


def test_if_match_with_a_stale_etag_is_412_and_changes_nothing(emu: Emulator, writer: Any, alice: str) -> None:
    made = writer.events().insert(calendarId="primary", body=timed(1, 9)).execute()
    moved = emu.patch_event(alice, made["id"], {"summary": "by a person"})
    for request in (
        writer.events().patch(calendarId="primary", eventId=made["id"], body={"summary": "app"}),
        writer.events().update(calendarId="primary", eventId=made["id"], body=timed(2, 9)),
        writer.events().delete(calendarId="primary", eventId=made["id"]),
    ):
        request.headers["if-match"] = made["etag"]
        with pytest.raises(HttpError) as err:
            request.execute()
        assert err.value.resp.status == 412 and reason(err.value) == "conditionNotMet"
    assert emu.events(alice) == [moved]
    fresh = writer.events().patch(calendarId="primary", eventId=made["id"], body={"summary": "app"})
    fresh.headers["if-match"] = moved["etag"]
    assert fresh.execute()["summary"] == "app"


def test_an_insert_with_an_id_the_calendar_holds_is_409_duplicate_even_once_deleted(
    emu: Emulator, writer: Any, alice: str
) -> None:
    made = writer.events().insert(calendarId="primary", body={**timed(1, 9), "id": "booking0042"}).execute()
    assert made["id"] == "booking0042"
    writer.events().delete(calendarId="primary", eventId=made["id"]).execute()
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body={**timed(2, 9), "id": "booking0042"}).execute()
    assert err.value.resp.status == 409 and reason(err.value) == "duplicate"
    assert emu.events(alice) == []


def test_a_reader_of_a_shared_calendar_cannot_write_to_it(emu: Emulator, writer: Any, alice: str) -> None:
    bob = emu.create_user("bob@example.com")
    emu.share_calendar(bob, alice, role="reader")
    entry = writer.calendarList().get(calendarId=bob).execute()
    assert entry["accessRole"] == "reader"
    assert writer.events().list(calendarId=bob).execute()["items"] == []
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId=bob, body=timed(1, 9)).execute()
    assert err.value.resp.status == 403 and reason(err.value) == "requiredAccessLevel"
    emu.share_calendar(bob, alice, role="writer")
    assert writer.events().insert(calendarId=bob, body=timed(1, 9)).execute()["id"]


def test_a_write_whose_answer_is_lost_is_made_all_the_same(emu: Emulator, writer: Any, alice: str) -> None:
    emu.fail_after_write(1, status=503, method="calendar.events.insert")
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body={**timed(1, 9), "id": "lostansa01"}).execute()
    assert err.value.resp.status == 503
    assert [e["id"] for e in emu.events(alice)] == ["lostansa01"]
    with pytest.raises(HttpError) as err:
        writer.events().insert(calendarId="primary", body={**timed(1, 9), "id": "lostansa01"}).execute()
    assert err.value.resp.status == 409  # the retry learns it was made
    assert writer.events().get(calendarId="primary", eventId="lostansa01").execute()["id"] == "lostansa01"
