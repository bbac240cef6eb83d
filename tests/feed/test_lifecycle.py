"""Lifecycle rows in the feed, in seq order with the event rows: an account connected (with its app's
ref), its calendars added, each first sync complete, a calendar removed in Google, a dead grant, a
disconnect. The worker runs against the emulator over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select, update

from calsync.accounts.disconnect import disconnect_account
from calsync.feed.reads import reconnect_hint
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change
from calsync.store.owed import request_calendar_sync
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import SyncKind, sync_calendar
from calsync.work.worker import Worker
from tests.conftest import API_TOKEN
from tests.sync_support import (
    assert_names_the_whole_connect_flow,
    calendar_row_id,
    changes,
    connect_account,
    connect_with_ref,
)

ANN = "ann@example.com"
REF = "crm-7"


def work(runtime: Runtime) -> None:
    Worker(runtime, threads=1).run_burst()


def owe_list_refresh(runtime: Runtime, account_id: int) -> None:
    """What a calendar-list notification owes the account (the receiver's rule)."""
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(list_requested=Account.list_requested + 1, list_due_at=runtime.clock.now())
        )


def lifecycle(runtime: Runtime) -> list[Change]:
    return [c for c in changes(runtime, lifecycle=True) if c.event_id is None]


def feed(client: FlaskClient, **params: str) -> list[dict[str, Any]]:
    resp = client.get(
        "/api/changes", query_string={"limit": "1000", **params}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert resp.status_code == 200
    return list(resp.get_json()["changes"])


def timed(summary: str, day: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": f"2026-03-{day:02d}T09:00:00Z"},
        "end": {"dateTime": f"2026-03-{day:02d}T10:00:00Z"},
    }


def test_connect_writes_connected_then_added_per_calendar_then_synced_after_each_first_sync(
    runtime: Runtime, emu: Any, client: FlaskClient
) -> None:
    emu.create_user(ANN)
    team = emu.create_calendar(ANN, "Team")
    family = emu.create_calendar(ANN, "Family")
    for day in (2, 3, 4):
        emu.insert_event(team, timed(f"Team {day}", day))
    emu.insert_event(ANN, timed("Dentist", 5))
    account_id = connect_with_ref(runtime, emu, ANN, REF)
    work(runtime)

    rows = changes(runtime, lifecycle=True)
    steps = [c for c in rows if c.event_id is None]
    cal_ids = {calendar_row_id(runtime, g) for g in (ANN, team, family)}
    assert [c.type for c in steps] == ["account.connected"] + ["calendar.added"] * 3 + ["calendar.synced"] * 3
    assert steps[0].calendar_id is None
    assert {c.calendar_id for c in steps[1:4]} == cal_ids and {c.calendar_id for c in steps[4:]} == cal_ids
    for cal_id in cal_ids:  # everything a calendar's first sync wrote comes before its `synced`
        [synced] = [c for c in steps if c.type == "calendar.synced" and c.calendar_id == cal_id]
        [added] = [c for c in steps if c.type == "calendar.added" and c.calendar_id == cal_id]
        assert all(c.seq < synced.seq for c in rows if c.calendar_id == cal_id and c is not synced)
        assert added.seq < synced.seq
    assert {(c.account_id, c.ref) for c in rows} == {(account_id, REF)}
    assert [c.seq for c in rows] == sorted(c.seq for c in rows)

    api = feed(client, types="account.connected,calendar.added,calendar.synced")
    assert [r["seq"] for r in api] == [c.seq for c in steps]
    assert api[0] == {
        "seq": steps[0].seq,
        "type": "account.connected",
        "account": ANN,
        "ref": REF,
        "calendar_id": None,
        "event_id": None,
        "change": None,
        "fields": [],
        "before": None,
        "after": None,
        "detected_at": api[0]["detected_at"],
    }
    assert {(r["type"], r["calendar_id"], r["summary"]) for r in api[1:4]} == {
        ("calendar.added", ANN, ANN),
        ("calendar.added", team, "Team"),
        ("calendar.added", family, "Family"),
    }
    assert all(r["event_id"] is None and r["ref"] == REF and r["before"] is r["after"] is None for r in api[1:])
    assert [r["type"] for r in feed(client, types="calendar.synced", calendar=team)] == ["calendar.synced"]


def test_a_first_sync_of_many_pages_says_synced_once_at_its_end_and_later_syncs_never(
    runtime: Runtime, emu: Any
) -> None:
    account_id = connect_account(runtime, emu, ANN)
    events = [emu.insert_event(ANN, timed(f"Event {day}", day)) for day in (2, 3, 4, 5)]
    refresh_calendar_list(runtime, account_id)
    cal_id = calendar_row_id(runtime, ANN)
    assert sync_calendar(runtime, cal_id, page_size=1).pages == 4
    [added, synced] = lifecycle(runtime)
    assert (added.type, synced.type) == ("calendar.added", "calendar.synced")
    assert synced.seq == max(c.seq for c in changes(runtime, lifecycle=True))

    emu.patch_event(ANN, events[0]["id"], {"summary": "Moved"})
    assert sync_calendar(runtime, cal_id).kind == SyncKind.INCREMENTAL
    emu.invalidate_sync_tokens(ANN)
    emu.patch_event(ANN, events[1]["id"], {"summary": "Moved too"})
    assert sync_calendar(runtime, cal_id).kind == SyncKind.RESYNC
    assert sync_calendar(runtime, cal_id, full=True).kind == SyncKind.RESYNC
    assert [c.type for c in lifecycle(runtime)] == ["calendar.added", "calendar.synced"]
    assert [c.kind for c in changes(runtime)] == ["snapshot"] * 4 + ["updated", "updated"]
    # calendar.synced comes after every snapshot row of the first sync.
    assert synced.seq > max(c.seq for c in changes(runtime) if c.kind == "snapshot")


def test_a_calendar_removed_in_google_is_a_removed_row_with_its_name(
    runtime: Runtime, emu: Any, client: FlaskClient
) -> None:
    emu.create_user(ANN)
    family = emu.create_calendar(ANN, "Family")
    account_id = connect_with_ref(runtime, emu, ANN, REF)
    work(runtime)
    emu.remove_calendar(ANN, family)
    owe_list_refresh(runtime, account_id)
    work(runtime)
    last = lifecycle(runtime)[-1]
    assert (last.type, last.calendar_id, last.ref) == ("calendar.removed", calendar_row_id(runtime, family), REF)
    [row] = feed(client, types="calendar.removed")
    assert (row["calendar_id"], row["summary"], row["account"]) == (family, "Family", ANN)
    listed = client.get("/api/calendars", headers={"Authorization": f"Bearer {API_TOKEN}"}).get_json()
    assert [c["calendar_id"] for c in listed] == [ANN]


def test_a_revoked_grant_is_one_reauth_row_saying_how_to_reconnect_then_reconnect_and_disconnect(
    runtime: Runtime, emu: Any, client: FlaskClient
) -> None:
    emu.create_user(ANN)
    emu.create_calendar(ANN, "Team")
    account_id = connect_with_ref(runtime, emu, ANN, REF)
    work(runtime)
    emu.revoke_grant(ANN)
    owe_list_refresh(runtime, account_id)
    with transaction(runtime.sessions) as session:  # every calendar's next sync also meets the dead grant
        for cal_id in session.scalars(select(Calendar.id).where(Calendar.account_id == account_id)).all():
            request_calendar_sync(session, cal_id, runtime.clock.now())
    work(runtime)
    [reauth] = feed(client, types="account.reauth_required")
    assert (reauth["account"], reauth["ref"], reauth["calendar_id"], reauth["event_id"]) == (ANN, REF, None, None)
    assert reauth["reason"] and "POST /api/connect-sessions" in reauth["reconnect"]
    assert '"ref": "crm-7"' in reauth["reconnect"]
    assert_names_the_whole_connect_flow(reauth["reconnect"])
    assert "/connect" in reconnect_hint(None)  # an account connected by an operator, without a ref

    connect_with_ref(runtime, emu, ANN, REF)  # the user consents again through a new session
    work(runtime)
    disconnect_account(runtime, account_id)
    disconnect_account(runtime, account_id)  # again: nothing more to say
    steps = [r["type"] for r in feed(client) if r["change"] is None]
    assert steps == [
        "account.connected",
        "calendar.added",
        "calendar.added",
        "calendar.synced",
        "calendar.synced",
        "account.reauth_required",
        "account.connected",
        "account.disconnected",
    ]
    assert {r["ref"] for r in feed(client)} == {REF}


def test_the_reconnect_hint_includes_the_confirm_step() -> None:
    hint = reconnect_hint("crm-7")
    assert_names_the_whole_connect_flow(hint)
    assert '"ref": "crm-7"' in hint and "connection=" in hint
