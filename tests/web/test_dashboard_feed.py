"""The dashboard's changes feed folds a calendar's first-sync snapshot into one line, on both engines:
thousands of snapshot rows never bury the real changes, across pages and in the live refresh."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest

from calsync import create_app
from calsync.clock import FrozenClock
from calsync.config import Secret, Settings
from calsync.runtime import Runtime
from tests.web.dashboard_support import PASSWORD, add_account, add_calendar, add_change, add_snapshot, sign_in

_ROW = re.compile(r'<tr class="change change-(\w+)">')


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(dataclasses.replace(settings, admin_password=Secret(PASSWORD)), clock=FrozenClock())
    yield rt
    rt.close()


@pytest.fixture
def admin(runtime: Runtime) -> Any:
    client = create_app(runtime=runtime).test_client()
    sign_in(client)
    return client


def created(runtime: Runtime, calendar_id: int, event_id: str) -> int:
    return add_change(runtime, calendar_id, event_id, "created", None, {"id": event_id, "summary": f"New {event_id}"})


def test_a_first_sync_is_one_summary_line_per_calendar(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work, family = add_calendar(runtime, ann, "work@x", "Work"), add_calendar(runtime, ann, "family@x", "Family")
    first_page = add_snapshot(runtime, work, 1000, "w")
    created(runtime, family, "piano")  # another calendar's change between two pages of Work's sync
    second_page = add_snapshot(runtime, work, 1000, "v")
    family_snapshot = add_snapshot(runtime, family, 3, "f")
    moved = add_change(
        runtime, work, "w7", "updated", {"id": "w7", "summary": "Standup"}, {"id": "w7", "summary": "Daily standup"}
    )

    page = admin.get("/dashboard/changes").text
    assert _ROW.findall(page) == ["updated", "snapshot", "snapshot", "created"]
    assert page.count("First sync: 2,000 events") == 1 and page.count("First sync: 3 events") == 1
    assert f"seq {first_page[0]:,}–{second_page[-1]:,}" in page
    assert f"seq {family_snapshot[0]:,}–{family_snapshot[-1]:,}" in page
    assert "Snapshot event" not in page and "Daily standup" in page and "New piano" in page
    assert f'data-cursor="{moved}"' in page and "before=" not in page

    only_work = admin.get(f"/dashboard/changes?calendar={work}").text
    assert _ROW.findall(only_work) == ["updated", "snapshot"] and "First sync: 2,000 events" in only_work


def test_a_change_inside_a_first_sync_splits_its_snapshot(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    add_snapshot(runtime, work, 400, "a")
    add_change(runtime, work, "a1", "deleted", {"id": "a1", "summary": "Gone while calsync was down"}, None)
    add_snapshot(runtime, work, 1, "b")
    page = admin.get("/dashboard/changes").text
    assert _ROW.findall(page) == ["snapshot", "deleted", "snapshot"]
    assert "First sync: 1 event<" in page and "seq 402<" in page and "First sync: 400 events" in page


def test_a_snapshot_line_is_on_the_page_of_its_newest_row_only(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work, family = add_calendar(runtime, ann, "work@x", "Work"), add_calendar(runtime, ann, "family@x", "Family")
    early = add_snapshot(runtime, work, 50, "w")
    middle = [created(runtime, family, f"m{n}") for n in range(40)]
    late = add_snapshot(runtime, work, 50, "v")  # the same first sync: Family's rows do not end it
    for n in range(49):
        created(runtime, family, f"n{n}")

    first = admin.get("/dashboard/changes").text
    assert _ROW.findall(first) == ["created"] * 49 + ["snapshot"]
    assert first.count("First sync: 100 events") == 1 and f"seq {early[0]}–{late[-1]}" in first
    assert f"before={late[-1]}" in first
    second = admin.get(f"/dashboard/changes?before={late[-1]}").text
    assert _ROW.findall(second) == ["created"] * 40 and "First sync" not in second
    assert f"New m{len(middle) - 1}" in second and "New m0" in second and "before=" not in second.split("Newest")[-1]


def test_the_live_refresh_brings_a_new_first_sync_as_one_line(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work, late = add_calendar(runtime, ann, "work@x", "Work"), add_calendar(runtime, ann, "late@x", "Late")
    cursor = created(runtime, work, "seen")
    seqs = add_snapshot(runtime, late, 1000, "a") + add_snapshot(runtime, late, 250, "b")
    resp = admin.get(f"/dashboard/changes/fragment?after={cursor}", headers={"X-Requested-With": "fetch"})
    assert _ROW.findall(resp.text) == ["snapshot"] and "First sync: 1,250 events" in resp.text
    assert resp.headers["X-Cursor"] == str(seqs[-1])


def test_each_event_row_says_whether_the_app_wrote_it_through_calsync_or_google_had_it(
    admin: Any, runtime: Runtime
) -> None:
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    add_change(
        runtime, work, "b1", "created", None, {"id": "b1", "summary": "Booking"}, origin="api", idempotency_key="k-7"
    )
    created(runtime, work, "lunch")
    page = admin.get("/dashboard/changes").text
    booking, lunch = page.index("Booking"), page.index("New lunch")
    assert page.count("via API") == 1 and page.count("from Google") == 1
    assert lunch < page.index("from Google") < booking < page.index("via API")  # newest first
    assert "Idempotency-Key k-7" in page
