"""/api/events?singleEvents=true and /api/freebusy over the real sync: shapes, paging, every 400,
staleness fields, errors per calendar, and no Google call."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select

from calsync.runtime import Runtime
from calsync.store.models import Change
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.occurrence_support import EmulatorApi
from tests.push_support import add_calendar_row
from tests.sync_support import calendar_row_id, connect_account

ANN = "ann@example.com"
NY = "America/New_York"


def _timed(summary: str, start: str, end: str, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": start, "timeZone": NY},
        "end": {"dateTime": end, "timeZone": NY},
        **extra,
    }


@pytest.fixture
def synced(runtime: Runtime, emu: Any) -> dict[str, Any]:
    """Ann's calendar in New York time, with a weekly series across the DST change and its exceptions."""
    account_id = connect_account(runtime, emu, ANN)
    cal = emu.create_calendar(ANN, "Work", time_zone=NY)
    series = emu.insert_event(
        cal,
        _timed(
            "standup",
            "2026-03-02T09:00:00-05:00",
            "2026-03-02T10:00:00-05:00",
            recurrence=["RRULE:FREQ=WEEKLY;BYDAY=MO,WE;COUNT=8"],
        ),
    )
    emu.patch_instance(
        cal,
        series["id"],
        "2026-03-04T09:00:00-05:00",
        {
            "start": {"dateTime": "2026-03-04T09:30:00-05:00"},
            "end": {"dateTime": "2026-03-04T11:00:00-05:00"},
            "summary": "standup (late)",
        },
    )
    emu.cancel_instance(cal, series["id"], "2026-03-09T09:00:00-04:00")
    emu.insert_event(cal, _timed("overlaps standup", "2026-03-02T09:30:00-05:00", "2026-03-02T10:30:00-05:00"))
    emu.insert_event(
        cal,
        _timed("focus (free)", "2026-03-03T13:00:00-05:00", "2026-03-03T15:00:00-05:00", transparency="transparent"),
    )
    emu.insert_event(
        cal,
        _timed(
            "declined",
            "2026-03-05T13:00:00-05:00",
            "2026-03-05T15:00:00-05:00",
            attendees=[{"email": cal, "responseStatus": "declined"}, {"email": "bob@example.com"}],
        ),
    )
    emu.insert_event(cal, {"summary": "holiday", "start": {"date": "2026-03-06"}, "end": {"date": "2026-03-07"}})
    refresh_calendar_list(runtime, account_id)
    cal_row = calendar_row_id(runtime, cal)
    sync_calendar(runtime, cal_row)
    return {"calendar": cal, "row": cal_row, "series": series["id"], "api": EmulatorApi(emu, ANN)}


def _all_pages(client: Any, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        resp = client.get(
            "/api/events", headers=headers, query_string={**params, **({"pageToken": token} if token else {})}
        )
        assert resp.status_code == 200, resp.get_json()
        pages += 1
        items += resp.get_json()["items"]
        token = resp.get_json()["nextPageToken"]
        if token is None:
            return items


def test_single_events_equal_the_emulators_across_pages_and_follow_a_new_sync(
    runtime: Runtime, emu: Any, client: Any, api_headers: dict[str, str], synced: dict[str, Any]
) -> None:
    cal, low, high = synced["calendar"], "2026-03-01T00:00:00-05:00", "2026-04-01T00:00:00-04:00"
    params = {"calendar": cal, "singleEvents": "true", "orderBy": "startTime", "timeMin": low, "timeMax": high}
    got = _all_pages(client, api_headers, **params, maxResults="2")
    expected = synced["api"].listing(cal, singleEvents="true", orderBy="startTime", timeMin=low, timeMax=high)
    assert got == expected
    ids = [i["id"] for i in got]
    assert synced["series"] + "_20260302T140000Z" in ids and synced["series"] + "_20260309T130000Z" not in ids
    late = next(i for i in got if i["summary"] == "standup (late)")
    assert late["originalStartTime"] == {"dateTime": "2026-03-04T09:00:00-05:00", "timeZone": NY}
    # An edit reaches the answer with the next sync (the parsed mirror is not kept past a change).
    emu.patch_event(cal, synced["series"], {"summary": "daily sync"})
    sync_calendar(runtime, synced["row"])
    again = _all_pages(client, api_headers, **params)
    assert again == synced["api"].listing(cal, singleEvents="true", orderBy="startTime", timeMin=low, timeMax=high)
    assert {i["summary"] for i in again if i.get("recurringEventId") and "late" not in i["summary"]} == {"daily sync"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "timeMin: required"),
        ({"timeMin": "2026-03-01T00:00:00Z"}, "timeMax: required"),
        ({"timeMin": "yesterday", "timeMax": "2026-03-02T00:00:00Z"}, "not an RFC 3339 time"),
        ({"timeMin": "2026-03-01T00:00:00", "timeMax": "2026-03-02T00:00:00Z"}, "offset is required"),
        ({"timeMin": "2026-03-02T00:00:00Z", "timeMax": "2026-03-01T00:00:00Z"}, "later than timeMin"),
        ({"timeMin": "2026-03-01T00:00:00Z", "timeMax": "2027-03-03T00:00:00Z"}, "at most 366 days"),
        ({"timeMin": "2026-03-01T00:00:00Z", "timeMax": "2026-03-02T00:00:00Z", "orderBy": "updated"}, "orderBy"),
        ({"timeMin": "2026-03-01T00:00:00Z", "timeMax": "2026-03-02T00:00:00Z", "pageToken": "bogus"}, "pageToken"),
        ({"timeMin": "2026-03-01T00:00:00Z", "timeMax": "2026-03-02T00:00:00Z", "maxResults": "0"}, "maxResults"),
    ],
)
def test_single_events_refuses_bad_parameters(
    client: Any, api_headers: dict[str, str], synced: dict[str, Any], query: dict[str, str], message: str
) -> None:
    resp = client.get(
        "/api/events",
        headers=api_headers,
        query_string={"calendar": synced["calendar"], "singleEvents": "true", **query},
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "bad_request" and message in resp.get_json()["message"]


@pytest.mark.parametrize(
    "query", [{"singleEvents": "yes"}, {"timeMin": "2026-03-01T00:00:00Z"}, {"orderBy": "startTime"}]
)
def test_window_parameters_need_single_events(
    client: Any, api_headers: dict[str, str], synced: dict[str, Any], query: dict[str, str]
) -> None:
    resp = client.get("/api/events", headers=api_headers, query_string={"calendar": synced["calendar"], **query})
    assert resp.status_code == 400 and resp.get_json()["error"] == "bad_request"


def _freebusy(client: Any, headers: dict[str, str], body: Any) -> Any:
    return client.post("/api/freebusy", headers=headers, json=body)


def test_freebusy_merges_clips_and_skips_free_declined_and_cancelled(
    runtime: Runtime, emu: Any, client: Any, api_headers: dict[str, str], synced: dict[str, Any]
) -> None:
    cal = synced["calendar"]
    emu.insert_event(cal, _timed("later", "2026-05-02T09:00:00-04:00", "2026-05-02T10:00:00-04:00"))
    sync_calendar(runtime, synced["row"])  # one change in the feed, outside the window
    calls = len(emu.requests)
    resp = _freebusy(
        client,
        api_headers,
        {
            "timeMin": "2026-03-02T09:45:00-05:00",
            "timeMax": "2026-03-10T00:00:00Z",
            "items": [{"id": cal}, {"id": "nobody@example.com"}],
        },
    )
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert len(emu.requests) == calls  # answered from the mirror alone
    with runtime.sessions() as session:
        assert body["as_of_seq"] == session.scalar(select(func.max(Change.seq))) and body["as_of_seq"] > 0
    assert body["kind"] == "calendar#freeBusy"
    assert (body["timeMin"], body["timeMax"]) == ("2026-03-02T14:45:00.000Z", "2026-03-10T00:00:00.000Z")
    mine = body["calendars"][cal]
    assert mine["sync_state"] == "synced" and mine["last_synced_at"] and "errors" not in mine
    assert mine["busy"] == [
        # The standup (9-10) and the overlapping 9:30-10:30 merge, clipped to the window's 9:45.
        {"start": "2026-03-02T14:45:00Z", "end": "2026-03-02T15:30:00Z"},
        # Wednesday's moved standup; Tuesday's free focus time and Thursday's declined meeting are free.
        {"start": "2026-03-04T14:30:00Z", "end": "2026-03-04T16:00:00Z"},
        # The all-day holiday blocks the day in the calendar's zone (New York), and Monday 9:00 EDT is cancelled.
        {"start": "2026-03-06T05:00:00Z", "end": "2026-03-07T05:00:00Z"},
    ]
    assert body["calendars"]["nobody@example.com"] == {
        "busy": [],
        "errors": [{"domain": "global", "reason": "notFound"}],
        "sync_state": None,
        "last_synced_at": None,
    }


def test_freebusy_renders_in_the_asked_time_zone(
    client: Any, api_headers: dict[str, str], synced: dict[str, Any]
) -> None:
    body = _freebusy(
        client,
        api_headers,
        {
            "timeMin": "2026-03-04T00:00:00Z",
            "timeMax": "2026-03-05T00:00:00Z",
            "timeZone": "Europe/Berlin",
            "items": [{"id": synced["calendar"]}],
        },
    ).get_json()
    assert body["calendars"][synced["calendar"]]["busy"] == [
        {"start": "2026-03-04T15:30:00+01:00", "end": "2026-03-04T17:00:00+01:00"}
    ]


def test_a_calendar_not_yet_synced_is_an_error_not_free(
    runtime: Runtime, emu: Any, client: Any, api_headers: dict[str, str]
) -> None:
    account_id = connect_account(runtime, emu, ANN)
    add_calendar_row(runtime, account_id, ANN)  # known from the list, first full sync still owed
    body = _freebusy(
        client,
        api_headers,
        {"timeMin": "2026-03-01T00:00:00Z", "timeMax": "2026-03-02T00:00:00Z", "items": [{"id": ANN}]},
    ).get_json()
    assert body["calendars"][ANN] == {
        "busy": [],
        "errors": [{"domain": "calsync", "reason": "notSynced"}],
        "sync_state": "pending",
        "last_synced_at": None,
    }
    assert body["as_of_seq"] == 0


GOOD = {"timeMin": "2026-03-01T00:00:00Z", "timeMax": "2026-03-02T00:00:00Z", "items": [{"id": ANN}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ("text", "JSON object"),
        ({**GOOD, "timeMin": None}, "timeMin: required"),
        ({**GOOD, "timeMax": 5}, "timeMax: required"),
        ({**GOOD, "timeMin": "2026-03-01"}, "offset"),
        ({**GOOD, "timeMin": "0001-01-01T00:02:01+00:11"}, "out of range"),  # found by schemathesis: was a 500
        ({**GOOD, "timeMax": "2026-02-01T00:00:00Z"}, "later than timeMin"),
        ({**GOOD, "timeMax": "2027-03-03T00:00:00Z"}, "366 days"),
        ({**GOOD, "timeZone": "Mars/Olympus"}, "timeZone"),
        ({**GOOD, "timeZone": "America"}, "timeZone"),  # a folder of the zone database: was a 500
        ({**GOOD, "timeZone": "A" * 300}, "timeZone"),  # a name too long for a file: was a 500
        ({**GOOD, "items": []}, "items"),
        ({**GOOD, "items": [ANN]}, "items"),
        ({**GOOD, "items": [{"id": ""}]}, "items"),
        ({**GOOD, "items": [{"id": f"c{i}"} for i in range(51)]}, "at most 50"),
        ({**GOOD, "calendarExpansionMax": "many"}, "calendarExpansionMax"),
    ],
)
def test_freebusy_refuses_bad_bodies(client: Any, api_headers: dict[str, str], body: Any, message: str) -> None:
    resp = _freebusy(client, api_headers, body)
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "bad_request" and message in resp.get_json()["message"]


def test_freebusy_needs_the_api_token(client: Any) -> None:
    assert client.post("/api/freebusy", json=GOOD).status_code == 401


def test_a_warm_answer_is_one_statement_and_each_change_reaches_the_next(
    runtime: Runtime, emu: Any, client: Any, api_headers: dict[str, str], synced: dict[str, Any]
) -> None:
    cal = synced["calendar"]
    window = {"timeMin": "2026-03-02T00:00:00Z", "timeMax": "2026-03-03T00:00:00Z", "items": [{"id": cal}]}
    statements: list[tuple[str, bool]] = []

    def seen(conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        statements.append((sql, bool(getattr(dbapi, "autocommit", False))))

    def answer() -> list[dict[str, str]]:
        statements.clear()
        resp = _freebusy(client, api_headers, window)
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()["calendars"][cal]["busy"]  # type: ignore[no-any-return]

    standup = [{"start": "2026-03-02T14:00:00Z", "end": "2026-03-02T15:30:00Z"}]
    event.listen(runtime.engine, "before_cursor_execute", seen)
    try:
        assert answer() == standup  # parses the calendar
        assert answer() == standup
        assert len(statements) == 1, statements  # the seq and the version in one statement: a cache hit
        if runtime.engine.dialect.name == "postgresql":
            assert statements[0][1], "read outside a transaction: no BEGIN, no ROLLBACK"
        emu.insert_event(cal, _timed("new", "2026-03-02T12:00:00-05:00", "2026-03-02T12:30:00-05:00"))
        sync_calendar(runtime, synced["row"])
        assert answer() == [*standup, {"start": "2026-03-02T17:00:00Z", "end": "2026-03-02T17:30:00Z"}]
        assert len(statements) > 1  # the version moved: read again in a snapshot, with the rows that changed
        answer()
        assert len(statements) == 1
        # Only unknown calendars: the seq still comes back from the one statement.
        statements.clear()
        body = _freebusy(client, api_headers, {**window, "items": [{"id": "nobody@example.com"}]}).get_json()
        assert len(statements) == 1
        with runtime.sessions() as session:
            newest = session.scalar(select(func.max(Change.seq)))
        assert newest and body["as_of_seq"] == newest
    finally:
        event.remove(runtime.engine, "before_cursor_execute", seen)
