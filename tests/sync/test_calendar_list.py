"""The calendar list against the emulator, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update

from calsync.clock import FrozenClock
from calsync.errors import AuthRevoked
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change
from calsync.sync.calendar_list import CalendarListResult, refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.sync_support import calendar_row_id, changes, connect_account

ALICE = "alice@example.com"
NOW = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def frozen(settings: Any) -> Any:
    runtime = Runtime.create(settings, clock=FrozenClock(NOW))
    yield runtime
    runtime.close()


def rows(runtime: Runtime) -> dict[str, Calendar]:
    with runtime.sessions() as session:
        return {c.google_id: c for c in session.scalars(select(Calendar))}


def test_new_calendars_are_stored_and_ask_for_a_sync(frozen: Runtime, emu: Any) -> None:
    account_id = connect_account(frozen, emu, ALICE)
    team = emu.create_calendar(ALICE, "Team", time_zone="Europe/Berlin")
    result = refresh_calendar_list(frozen, account_id)
    found = rows(frozen)
    assert set(found) == {ALICE, team}
    assert sorted(result.added) == sorted(c.id for c in found.values())
    assert (result.removed, result.kept) == ([], [])
    primary, other = found[ALICE], found[team]
    assert (primary.primary, primary.summary, primary.time_zone, primary.access_role) == (True, ALICE, "UTC", "owner")
    assert (other.primary, other.summary, other.time_zone) == (False, "Team", "Europe/Berlin")
    for cal in found.values():
        assert (cal.sync_requested, cal.sync_done, cal.due_at, cal.removed_at) == (1, 0, NOW, None)
        assert cal.account_id == account_id and cal.sync_token is None


def test_a_second_refresh_keeps_what_it_has_and_never_duplicates(frozen: Runtime, emu: Any) -> None:
    account_id = connect_account(frozen, emu, ALICE)
    refresh_calendar_list(frozen, account_id)
    with transaction(frozen.sessions) as session:
        session.execute(update(Calendar).values(sync_done=1, due_at=None))
    team = emu.create_calendar(ALICE, "Team")
    result = refresh_calendar_list(frozen, account_id)
    found = rows(frozen)
    assert result == CalendarListResult(added=[found[team].id], removed=[], kept=[found[ALICE].id])
    assert (found[ALICE].sync_requested, found[ALICE].sync_done, found[ALICE].due_at) == (1, 1, None)


def test_a_removed_calendar_leaves_the_queue_but_keeps_its_changes(frozen: Runtime, emu: Any) -> None:
    account_id = connect_account(frozen, emu, ALICE)
    team = emu.create_calendar(ALICE, "Team")
    refresh_calendar_list(frozen, account_id)
    team_cal = calendar_row_id(frozen, team)
    sync_calendar(frozen, team_cal)
    emu.insert_event(team, {"summary": "x", "start": {"date": "2026-04-02"}, "end": {"date": "2026-04-03"}})
    sync_calendar(frozen, team_cal)
    emu.remove_calendar(ALICE, team)
    result = refresh_calendar_list(frozen, account_id)
    assert result.removed == [team_cal] and result.added == []
    found = rows(frozen)[team]
    assert (found.removed_at, found.due_at) == (NOW, None)
    assert [c.kind for c in changes(frozen, team_cal)] == ["created"]
    # Removing is done once: a later refresh neither re-removes nor re-adds it.
    assert refresh_calendar_list(frozen, account_id).removed == []


def test_a_calendar_the_user_hides_in_google_stays_and_keeps_syncing(frozen: Runtime, emu: Any) -> None:
    """Hidden from the list in Google's UI, a calendar is still the user's: calendarList.list leaves it
    out unless asked with showHidden, and without it the refresh took it for removed (its channel
    stopped, a `calendar.removed` row, no more syncs)."""
    account_id = connect_account(frozen, emu, ALICE)
    team = emu.create_calendar(ALICE, "Team")
    refresh_calendar_list(frozen, account_id)
    emu.hide_calendar(ALICE, team)
    result = refresh_calendar_list(frozen, account_id)
    assert result.removed == [] and rows(frozen)[team].removed_at is None
    types = [c.type for c in changes(frozen, lifecycle=True)]
    assert "calendar.removed" not in types


def test_a_calendar_back_on_the_list_asks_for_a_sync_again(frozen: Runtime, emu: Any) -> None:
    account_id = connect_account(frozen, emu, ALICE)
    refresh_calendar_list(frozen, account_id)
    earlier = datetime(2026, 3, 1, tzinfo=UTC)
    with transaction(frozen.sessions) as session:
        session.execute(update(Calendar).values(removed_at=earlier, due_at=None, sync_requested=4, sync_done=4))
    result = refresh_calendar_list(frozen, account_id)
    cal = rows(frozen)[ALICE]
    assert result.added == [cal.id]
    assert (cal.removed_at, cal.sync_requested, cal.sync_done, cal.due_at) == (None, 5, 4, NOW)


def test_every_page_of_a_long_calendar_list_is_read(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    for i in range(260):
        emu.create_calendar(ALICE, f"cal {i}")
    result = refresh_calendar_list(runtime, account_id)
    assert len(result.added) == 261
    assert emu.count("calendar.calendarList.list") == 2


def test_a_refreshed_access_token_is_stored_with_the_list(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    with runtime.sessions() as session:
        stored = session.get_one(Account, account_id).credentials
    emu.expire_access_tokens()
    refresh_calendar_list(runtime, account_id)
    assert emu.count("oauth.token") == 1
    with runtime.sessions() as session:
        assert session.get_one(Account, account_id).credentials != stored
    refresh_calendar_list(runtime, account_id)
    assert emu.count("oauth.token") == 1


def test_a_revoked_grant_marks_the_account_and_raises(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    refresh_calendar_list(runtime, account_id)
    emu.revoke_grant(ALICE)
    with pytest.raises(AuthRevoked):
        refresh_calendar_list(runtime, account_id)
    with runtime.sessions() as session:
        account = session.get_one(Account, account_id)
        assert account.status == "reauth_required" and account.last_error
        assert [c.type for c in session.scalars(select(Change).order_by(Change.seq))] == [
            "calendar.added",
            "account.reauth_required",
        ]
        assert len(session.scalars(select(Calendar)).all()) == 1
