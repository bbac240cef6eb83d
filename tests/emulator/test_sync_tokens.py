"""Sync tokens: incremental lists return exactly the changes (cancelled included); 410 and 400 paths."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from googleapiclient.errors import HttpError

from calsync.emulator import Emulator

from .conftest import list_all, timed


def error_of(err: HttpError) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads(err.content)["error"])


def test_incremental_returns_exactly_the_changes(emu: Emulator, service: Any, alice: str) -> None:
    kept, changed, gone = (emu.insert_event(alice, timed(d, 9)) for d in (1, 2, 3))
    _, token, _ = list_all(service)
    emu.patch_event(alice, changed["id"], {"summary": "new title"})
    emu.delete_event(alice, gone["id"])
    added = emu.insert_event(alice, timed(4, 9))
    items, token2, _ = list_all(service, syncToken=token)
    by_id = {e["id"]: e for e in items}
    assert set(by_id) == {changed["id"], gone["id"], added["id"]}
    assert by_id[changed["id"]]["summary"] == "new title"
    assert by_id[gone["id"]]["status"] == "cancelled"
    assert kept["id"] not in by_id
    assert list_all(service, syncToken=token2)[0] == []


def test_cancelled_event_in_a_sync_carries_only_what_google_guarantees(emu: Emulator, service: Any, alice: str) -> None:
    event = emu.insert_event(alice, timed(1, 9, summary="secret"))
    _, token, _ = list_all(service)
    emu.delete_event(alice, event["id"])
    [item] = list_all(service, syncToken=token)[0]
    assert item["id"] == event["id"] and item["status"] == "cancelled"
    assert "summary" not in item


def test_full_list_hides_deleted_unless_show_deleted(emu: Emulator, service: Any, alice: str) -> None:
    event = emu.insert_event(alice, timed(1, 9))
    emu.delete_event(alice, event["id"])
    assert list_all(service)[0] == []
    assert [e["id"] for e in list_all(service, showDeleted=True)[0]] == [event["id"]]


def test_incremental_is_paged_too(emu: Emulator, service: Any, alice: str) -> None:
    _, token, _ = list_all(service)
    emu.bulk_insert_events(alice, [timed(1, 1)] * 7)
    items, _, pages = list_all(service, syncToken=token, maxResults=3)
    assert len(items) == 7 and pages == 3


def test_invalidated_token_is_410_full_sync_required(emu: Emulator, service: Any, alice: str) -> None:
    emu.insert_event(alice, timed(1, 9))
    _, token, _ = list_all(service)
    emu.invalidate_sync_tokens(alice)
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId="primary", syncToken=token).execute()
    error = error_of(err.value)
    assert err.value.resp.status == 410
    assert error["errors"][0] == {
        "domain": "calendar",
        "reason": "fullSyncRequired",
        "message": "Sync token is no longer valid, a full sync is required.",
        "locationType": "parameter",
        "location": "syncToken",
    }
    _, fresh, _ = list_all(service)
    assert list_all(service, syncToken=fresh)[0] == []


def test_invalidating_one_calendar_leaves_others_valid(emu: Emulator, service: Any, alice: str) -> None:
    other = emu.create_calendar(alice, "Work")
    _, primary_token, _ = list_all(service)
    _, work_token, _ = list_all(service, calendar_id=other)
    emu.invalidate_sync_tokens(other)
    assert list_all(service, syncToken=primary_token)[0] == []
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId=other, syncToken=work_token).execute()
    assert err.value.resp.status == 410


def test_token_from_before_a_reset_is_410(emu: Emulator, service: Any, alice: str) -> None:
    _, token, _ = list_all(service)
    emu.reset()
    emu.create_user(alice)
    from .conftest import service_for

    fresh = service_for(emu, emu.issue_tokens(alice))
    with pytest.raises(HttpError) as err:
        fresh.events().list(calendarId="primary", syncToken=token).execute()
    assert err.value.resp.status == 410


def test_too_old_token_is_410(emu: Emulator, service: Any, alice: str) -> None:
    import datetime as dt

    _, token, _ = list_all(service)
    emu.sync_token_max_age = 60
    real = emu.clock
    emu.clock = lambda: real() + dt.timedelta(seconds=120)
    try:
        with pytest.raises(HttpError) as err:
            service.events().list(calendarId="primary", syncToken=token).execute()
    finally:
        emu.clock = real
    assert err.value.resp.status == 410


@pytest.mark.parametrize(
    "param",
    [
        {"timeMin": "2030-01-01T00:00:00Z"},
        {"timeMax": "2030-01-01T00:00:00Z"},
        {"q": "x"},
        {"iCalUID": "a@google.com"},
        {"updatedMin": "2030-01-01T00:00:00Z"},
        {"orderBy": "updated"},
        {"privateExtendedProperty": "a=b"},
        {"sharedExtendedProperty": "a=b"},
        {"showDeleted": False},
    ],
)
def test_sync_token_with_incompatible_params_is_400(
    emu: Emulator, service: Any, alice: str, param: dict[str, Any]
) -> None:
    _, token, _ = list_all(service)
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId="primary", syncToken=token, **param).execute()
    assert err.value.resp.status == 400


def test_calendar_list_sync_reports_added_and_removed_calendars(emu: Emulator, service: Any, alice: str) -> None:
    removed = emu.create_calendar(alice, "Old")
    page = service.calendarList().list().execute()
    assert {e["id"] for e in page["items"]} == {alice, removed}
    assert "nextSyncToken" in page and "nextPageToken" not in page
    added = emu.create_calendar(alice, "New")
    emu.remove_calendar(alice, removed)
    delta = service.calendarList().list(syncToken=page["nextSyncToken"]).execute()
    by_id = {e["id"]: e for e in delta["items"]}
    assert set(by_id) == {added, removed}
    assert by_id[removed]["deleted"] is True and by_id[added]["summary"] == "New"
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId=removed).execute()
    assert err.value.resp.status == 404


def test_calendar_list_pages(emu: Emulator, service: Any, alice: str) -> None:
    for i in range(4):
        emu.create_calendar(alice, f"c{i}")
    first = service.calendarList().list(maxResults=2).execute()
    assert len(first["items"]) == 2 and "nextPageToken" in first and "nextSyncToken" not in first
    rest = service.calendarList().list(maxResults=2, pageToken=first["nextPageToken"]).execute()
    last = service.calendarList().list(maxResults=2, pageToken=rest["nextPageToken"]).execute()
    assert len(last["items"]) == 1 and "nextSyncToken" in last
    primary = [e for e in first["items"] if e.get("primary")]
    assert primary and primary[0]["id"] == alice and primary[0]["accessRole"] == "owner"


def test_mirror_converges_whatever_edits_happen_between_pages(emu: Emulator, alice: str) -> None:
    """Property: full sync then incremental syncs, with random edits between any two pages, leave a
    mirror identical to what Google holds (ids and etags)."""
    import requests
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    session = requests.Session()
    url = emu.api_url + f"calendar/v3/calendars/{alice}/events"
    edit = st.tuples(st.sampled_from(["insert", "patch", "delete"]), st.integers(0, 10_000))

    def apply(ops: list[tuple[str, int]]) -> None:
        for op, pick in ops:
            live = emu.events(alice)
            if op == "insert" or not live:
                emu.insert_event(alice, timed(1 + pick % 28, pick % 20))
            elif op == "patch":
                emu.patch_event(alice, live[pick % len(live)]["id"], {"summary": str(pick)})
            else:
                emu.delete_event(alice, live[pick % len(live)]["id"])

    def sync(mirror: dict[str, str], token: str | None, size: int, edits: list[list[tuple[str, int]]]) -> str:
        page_token = None
        for page_no in range(1000):
            params: dict[str, Any] = {"maxResults": size}
            if token:
                params["syncToken"] = token
            if page_token:
                params["pageToken"] = page_token
            page = session.get(url, params=params).json()
            for item in page["items"]:
                if item["status"] == "cancelled":
                    mirror.pop(item["id"], None)
                else:
                    mirror[item["id"]] = item["etag"]
            if "nextSyncToken" in page:
                return cast("str", page["nextSyncToken"])
            page_token = page["nextPageToken"]
            apply(edits[page_no] if page_no < len(edits) else [])
        raise AssertionError("paging did not end")

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        initial=st.integers(0, 12),
        size=st.integers(1, 5),
        during_full=st.lists(st.lists(edit, max_size=3), max_size=4),
        between=st.lists(edit, max_size=5),
        during_incremental=st.lists(st.lists(edit, max_size=3), max_size=4),
    )
    def run(
        initial: int,
        size: int,
        during_full: list[list[tuple[str, int]]],
        between: list[tuple[str, int]],
        during_incremental: list[list[tuple[str, int]]],
    ) -> None:
        emu.reset()
        emu.create_user(alice)
        session.headers["Authorization"] = "Bearer " + emu.issue_tokens(alice)["access_token"]
        emu.bulk_insert_events(alice, [timed(1 + i, 9) for i in range(initial)])
        mirror: dict[str, str] = {}
        token = sync(mirror, None, size, during_full)
        apply(between)
        token = sync(mirror, token, size, during_incremental)
        sync(mirror, token, size, [])
        assert mirror == {e["id"]: e["etag"] for e in emu.events(alice)}

    run()
