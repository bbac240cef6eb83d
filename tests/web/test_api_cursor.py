"""Where a consumer starts and resumes: `as_of_seq` on /api/events pages, and a cursor that retention
has passed answered `410 cursor_expired` instead of a page with a silent gap."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient

from calsync.feed.retention import trim_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.sync_support import calendar_row_id, connect_account, google_view
from tests.web.test_api import Seed

ALICE = "alice@example.com"
RETENTION = timedelta(days=30)


def trim_all(runtime: Runtime) -> None:
    while True:
        with transaction(runtime.sessions) as session:
            if not trim_changes(session, runtime.clock.now() - RETENTION):
                return


def feed_with_old_rows(runtime: Runtime, old: int, new: int) -> list[int]:
    seed = Seed(runtime)
    cal = seed.calendar(seed.account(ALICE), ALICE, summary="Alice")
    long_ago, lately = runtime.clock.now() - RETENTION - timedelta(days=1), runtime.clock.now()
    return [seed.change(cal, f"old{i}", "created", None, {"id": f"old{i}"}, at=long_ago) for i in range(old)] + [
        seed.change(cal, f"new{i}", "created", None, {"id": f"new{i}"}, at=lately) for i in range(new)
    ]


def test_a_cursor_behind_deleted_rows_is_410_cursor_expired(
    client: FlaskClient, runtime: Runtime, api_headers: dict[str, str]
) -> None:
    seqs = feed_with_old_rows(runtime, old=5, new=3)
    trim_all(runtime)

    def get(query: str) -> Any:
        return client.get("/api/changes?" + query, headers=api_headers)

    for query in ("after=0", "after=4", f"after=0&calendar={ALICE}", "after=3&types=event.created", "limit=1"):
        resp = get(query)
        assert resp.status_code == 410, query
        body = resp.get_json()
        assert body["error"] == "cursor_expired" and body["oldest_seq"] == 6, body
        assert set(body) == {"error", "message", "oldest_seq"}
        assert "seq 5" in body["message"] and "CALSYNC_CHANGES_RETENTION" in body["message"]
    kept = get("after=5").get_json()  # the mark itself is a good cursor: nothing after it is gone
    assert [c["seq"] for c in kept["changes"]] == seqs[5:] and kept["next"] == seqs[-1]
    assert [c["seq"] for c in get("after=7").get_json()["changes"]] == [8]


def test_a_filtered_consumer_whose_rows_are_rare_keeps_a_cursor_retention_does_not_pass(
    client: FlaskClient, runtime: Runtime, api_headers: dict[str, str]
) -> None:
    """A page that is not full moves `next` past the rows the filter left out: the cursor of an app
    reading one quiet calendar (or only `origin=api`) stayed where its last row was, retention passed
    it, and it got 410 `cursor_expired` though not one of its rows had been deleted."""
    feed_with_old_rows(runtime, old=1, new=0)
    seed = Seed(runtime)
    quiet = seed.calendar(seed.account("bob@example.com"), "bob@example.com", summary="Bob")
    long_ago = runtime.clock.now() - RETENTION - timedelta(days=1)
    mine = seed.change(quiet, "b0", "created", None, {"id": "b0"}, at=long_ago)
    busy = seed.calendar(seed.account("carol@example.com"), "busy@example.com")
    others = [seed.change(busy, f"x{i}", "created", None, {"id": f"x{i}"}, at=long_ago) for i in range(3)]
    query = "/api/changes?calendar=bob@example.com&after="
    page = client.get(query + "0", headers=api_headers).get_json()
    assert [c["seq"] for c in page["changes"]] == [mine] and page["next"] == others[-1]
    trim_all(runtime)  # every row so far is past retention: its own and the busy calendar's
    later = client.get(query + str(page["next"]), headers=api_headers)
    assert later.status_code == 200 and later.get_json()["changes"] == []
    assert client.get(query + str(mine), headers=api_headers).status_code == 410  # a cursor left behind


def test_with_every_row_deleted_the_cursor_and_as_of_seq_stay_where_the_feed_was(
    client: FlaskClient, runtime: Runtime, api_headers: dict[str, str]
) -> None:
    feed_with_old_rows(runtime, old=4, new=0)
    trim_all(runtime)
    events = client.get(f"/api/events?calendar={ALICE}", headers=api_headers).get_json()
    assert events == {"items": [], "nextPageToken": None, "as_of_seq": 4}  # not 0: that cursor has expired
    assert client.get("/api/changes?after=4", headers=api_headers).get_json() == {"changes": [], "next": 4}
    assert client.get("/api/changes?after=3", headers=api_headers).status_code == 410


def test_pages_read_while_calendars_change_converge_from_the_smallest_as_of_seq(
    client: FlaskClient, runtime: Runtime, emu: Any, api_headers: dict[str, str]
) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    ids = [
        emu.insert_event(
            ALICE,
            {
                "summary": f"Event {n}",
                "start": {"dateTime": "2026-06-01T10:00:00Z"},
                "end": {"dateTime": "2026-06-01T11:00:00Z"},
            },
        )["id"]
        for n in range(2300)
    ]
    refresh_calendar_list(runtime, account_id)
    cal = calendar_row_id(runtime, ALICE)
    sync_calendar(runtime, cal)

    def page(token: str | None) -> dict[str, Any]:
        url = f"/api/events?calendar={ALICE}" + (f"&pageToken={token}" if token else "")
        resp = client.get(url, headers=api_headers)
        assert resp.status_code == 200
        return resp.get_json()  # type: ignore[no-any-return]

    copy: dict[str, dict[str, Any]] = {}
    marks: list[int] = []

    def after_page_1(seen: list[str]) -> None:  # edits to events already read and to events not read yet
        emu.patch_event(ALICE, seen[0], {"summary": "Read, then moved"})
        emu.delete_event(ALICE, seen[1])
        emu.patch_event(ALICE, ids[-1], {"location": "Not read yet"})
        emu.delete_event(ALICE, ids[-2])
        emu.insert_event(
            ALICE,
            {
                "summary": "Born between pages 1 and 2",
                "start": {"dateTime": "2026-06-02T10:00:00Z"},
                "end": {"dateTime": "2026-06-02T11:00:00Z"},
            },
        )

    def after_page_2(seen: list[str]) -> None:
        emu.patch_event(ALICE, seen[0], {"summary": "Read, moved twice"})
        emu.patch_event(ALICE, ids[-1], {"location": "Still not read"})
        emu.delete_event(ALICE, ids[-3])

    edits: list[Callable[[list[str]], None]] = [after_page_1, after_page_2]
    token = None
    while True:
        body = page(token)
        marks.append(body["as_of_seq"])
        copy.update({item["id"]: item for item in body["items"]})
        token = body["nextPageToken"]
        if token is None:
            break
        for write in edits[len(marks) - 1 : len(marks)]:
            write([item["id"] for item in body["items"]])
            sync_calendar(runtime, cal)
    assert len(marks) == 3 and marks[0] < marks[1] < marks[2]

    def fold(start: dict[str, dict[str, Any]], after: int) -> dict[str, dict[str, Any]]:
        state = dict(start)
        while True:
            feed = client.get(f"/api/changes?calendar={ALICE}&after={after}&limit=1000", headers=api_headers)
            changes = feed.get_json()["changes"]
            if not changes:
                return state
            for change in changes:
                if change["change"] == "deleted":
                    state.pop(change["event_id"], None)
                else:
                    state[change["event_id"]] = change["after"]
            after = feed.get_json()["next"]

    mirror: dict[str, dict[str, Any]] = {}
    token = None
    while True:  # the mirror as a consumer starting now would load it
        body = page(token)
        mirror.update({item["id"]: item for item in body["items"]})
        if (token := body["nextPageToken"]) is None:
            break
    assert mirror == google_view(emu, ALICE)
    assert fold(copy, min(marks)) == mirror
    assert fold(copy, max(marks)) != mirror  # the writes between the pages are what it had to catch
