"""Disconnecting stops the account's channels at Google, revokes its grant and forgets its tokens."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from sqlalchemy import select, text

from calsync.accounts.connected import load_credentials, upsert_account
from calsync.accounts.disconnect import DisconnectResult, disconnect_account
from calsync.clock import FrozenClock
from calsync.config import Secret
from calsync.errors import NotFoundError
from calsync.google.calendar import GoogleCalendar
from calsync.google.oauth import credentials_from_json
from calsync.runtime import Runtime
from calsync.store.crypto import new_key
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change, Channel
from calsync.store.states import UNSTOPPED_CHANNEL, ChannelStatus, Priority
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.work.jobs import run_calendar_job, run_list_job
from calsync.work.leases import claim_account_list, claim_calendar
from calsync.work.worker import Worker
from tests.push_support import wait_for
from tests.sync_support import mirror

READONLY = "https://www.googleapis.com/auth/calendar.readonly"
EMAIL = "alice@example.com"


def connect(runtime: Runtime, emu: Any, email: str = EMAIL) -> int:
    """An account as after consent: tokens from the emulator, stored through upsert_account."""
    emu.create_user(email)
    tokens = emu.issue_tokens(email, scopes=[READONLY])
    creds = credentials_from_json(
        json.dumps({"token": tokens["access_token"], "refresh_token": tokens["refresh_token"], "scopes": [READONLY]}),
        runtime.settings,
    )
    with transaction(runtime.sessions) as session:
        account = upsert_account(session, runtime.cipher, email, creds, [READONLY], runtime.clock.now())
        return account.id


def add_calendar(runtime: Runtime, account_id: int, google_id: str) -> int:
    with transaction(runtime.sessions) as session:
        cal = Calendar(account_id=account_id, google_id=google_id, sync_state="synced", due_at=runtime.clock.now())
        session.add(cal)
        session.flush()
        return cal.id


def watch(runtime: Runtime, account_id: int, calendar_id: int | None, google_id: str | None) -> str:
    """Open a real channel at the emulator and record it the way calsync does (row first)."""
    channel_id = str(uuid.uuid4())
    with transaction(runtime.sessions) as session:
        account = session.get(Account, account_id)
        assert account is not None
        creds = load_credentials(runtime, account)
        session.add(
            Channel(
                id=channel_id,
                account_id=account_id,
                calendar_id=calendar_id,
                kind="events" if google_id else "calendar_list",
                token_hash="0" * 64,
            )
        )
    google = GoogleCalendar(creds, runtime.settings.calendar_api_endpoint)
    address = runtime.settings.notifications_url
    if google_id:
        answer = google.watch_events(
            google_id, channel_id=channel_id, token="t", address=address, ttl=timedelta(hours=1)
        )
    else:
        answer = google.watch_calendar_list(channel_id=channel_id, token="t", address=address, ttl=timedelta(hours=1))
    with transaction(runtime.sessions) as session:
        channel = session.get(Channel, channel_id)
        assert channel is not None
        channel.resource_id = answer["resourceId"]
        channel.status = ChannelStatus.ACTIVE
    return channel_id


def refresh_works(runtime: Runtime, refresh_token: str) -> bool:
    creds = credentials_from_json(json.dumps({"refresh_token": refresh_token, "scopes": [READONLY]}), runtime.settings)
    try:
        creds.refresh(Request())
    except RefreshError:
        return False
    return True


def test_disconnect_stops_channels_revokes_the_grant_and_wipes_tokens(runtime: Runtime, emu: Any) -> None:
    emu.create_user(EMAIL)
    team = emu.create_calendar(EMAIL, "Team")
    account_id = connect(runtime, emu)
    other_id = connect(runtime, emu, "bob@example.com")
    primary = add_calendar(runtime, account_id, EMAIL)
    team_cal = add_calendar(runtime, account_id, team)
    bobs_cal = add_calendar(runtime, other_id, "bob@example.com")
    opened = [
        watch(runtime, account_id, primary, EMAIL),
        watch(runtime, account_id, team_cal, team),
        watch(runtime, account_id, None, None),
    ]
    bobs_channel = watch(runtime, other_id, bobs_cal, "bob@example.com")
    with transaction(runtime.sessions) as session:  # a watch that never answered: nothing to stop at Google
        session.add(
            Channel(
                id="never-answered",
                account_id=account_id,
                calendar_id=primary,
                kind="events",
                token_hash="0" * 64,
                status="pending",
            )
        )
    assert {c["id"] for c in emu.channels()} == {*opened, bobs_channel}
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        assert account is not None
        refresh_token = load_credentials(runtime, account).refresh_token
    assert refresh_token and refresh_works(runtime, refresh_token)

    result = disconnect_account(runtime, account_id)

    assert {c["id"] for c in emu.channels()} == {bobs_channel}
    assert sorted(result.channels_stopped) == sorted([*opened, "never-answered"])
    assert result.revoked and not result.channels_not_stopped
    assert not refresh_works(runtime, refresh_token)
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        assert account is not None and account.status == "disconnected"
        assert json.loads(runtime.cipher.decrypt_str(account.credentials)) == {}
        assert account.list_due_at is None
        channels = {c.id: c for c in session.scalars(select(Channel))}
        for channel_id in [*opened, "never-answered"]:
            assert channels[channel_id].status == "stopped" and channels[channel_id].stopped_at is not None
        assert channels[bobs_channel].status == "active"
        calendars = {c.id: c for c in session.scalars(select(Calendar))}
        assert calendars[primary].due_at is None and calendars[team_cal].due_at is None
        assert calendars[bobs_cal].due_at is not None
        bob = session.get(Account, other_id)
        assert bob is not None and bob.status == "active"


def test_disconnect_is_idempotent(runtime: Runtime, emu: Any) -> None:
    emu.create_user(EMAIL)
    account_id = connect(runtime, emu)
    cal = add_calendar(runtime, account_id, EMAIL)
    watch(runtime, account_id, cal, EMAIL)
    first = disconnect_account(runtime, account_id)
    calls = len(emu.requests)
    second = disconnect_account(runtime, account_id)
    assert first.revoked and len(first.channels_stopped) == 1
    assert second.already_disconnected and not second.revoked and not second.channels_stopped
    assert len(emu.requests) == calls, "nothing left to ask Google"
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        assert account is not None and account.status == "disconnected"


def test_channel_already_gone_at_google_counts_as_stopped(runtime: Runtime, emu: Any) -> None:
    emu.create_user(EMAIL)
    account_id = connect(runtime, emu)
    cal = add_calendar(runtime, account_id, EMAIL)
    with transaction(runtime.sessions) as session:
        session.add(
            Channel(
                id="expired-at-google",
                account_id=account_id,
                calendar_id=cal,
                kind="events",
                token_hash="0" * 64,
                resource_id="unknown-resource",
                status="active",
            )
        )
    result = disconnect_account(runtime, account_id)
    assert result.channels_stopped == ["expired-at-google"]
    assert emu.count("calendar.channels.stop") == 1


def test_disconnect_with_a_grant_already_dead_still_disconnects(runtime: Runtime, emu: Any) -> None:
    emu.create_user(EMAIL)
    account_id = connect(runtime, emu)
    cal = add_calendar(runtime, account_id, EMAIL)
    channel_id = watch(runtime, account_id, cal, EMAIL)
    emu.revoke_grant(EMAIL)
    emu.expire_access_tokens()
    result = disconnect_account(runtime, account_id)
    assert result.channels_not_stopped == [channel_id]
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        channel = session.get(Channel, channel_id)
        assert account is not None and account.status == "disconnected"
        assert channel is not None and channel.status == "stopped"


def test_unknown_account_is_not_found(runtime: Runtime) -> None:
    with pytest.raises(NotFoundError):
        disconnect_account(runtime, 424242)


def test_reconnecting_a_disconnected_account_makes_it_active_again(runtime: Runtime, emu: Any) -> None:
    emu.create_user(EMAIL)
    account_id = connect(runtime, emu)
    cal = add_calendar(runtime, account_id, EMAIL)
    disconnect_account(runtime, account_id)
    assert connect(runtime, emu) == account_id
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        calendar = session.get(Calendar, cal)
        assert account is not None and account.status == "active"
        assert calendar is not None and calendar.due_at is not None
        assert load_credentials(runtime, account).refresh_token


def test_operator_disconnect_endpoint(client: Any, runtime: Runtime, emu: Any, api_headers: dict[str, str]) -> None:
    emu.create_user(EMAIL)
    connect(runtime, emu)
    resp = client.post(f"/api/accounts/{EMAIL}/disconnect", headers=api_headers)
    assert resp.status_code == 200
    assert resp.get_json() == {
        "account": EMAIL,
        "status": "disconnected",
        "revoked": True,
        "channels_stopped": [],
        "channels_not_stopped": [],
    }
    again = client.post(f"/api/accounts/{EMAIL}/disconnect", headers=api_headers)
    assert again.status_code == 200 and again.get_json()["status"] == "disconnected"
    with runtime.sessions() as session:
        assert session.scalar(select(Account.status).where(Account.email == EMAIL)) == "disconnected"


def test_a_channel_left_stopping_by_a_crash_is_stopped_at_google_by_a_disconnect(runtime: Runtime, emu: Any) -> None:
    """`stopping` is not a live channel (the receiver refuses it, renewal ignores it), but Google may
    still serve it: a disconnect must stop it there too."""
    emu.create_user(EMAIL)
    account_id = connect(runtime, emu)
    cal = add_calendar(runtime, account_id, EMAIL)
    live = watch(runtime, account_id, cal, EMAIL)
    half_stopped = watch(runtime, account_id, cal, EMAIL)
    with transaction(runtime.sessions) as session:  # as a crash inside channels.stop leaves it
        session.get_one(Channel, half_stopped).status = ChannelStatus.STOPPING
    assert {c["id"] for c in emu.channels()} == {live, half_stopped}

    result = disconnect_account(runtime, account_id)

    assert sorted(result.channels_stopped) == sorted([live, half_stopped])
    assert emu.channels() == []
    with runtime.sessions() as session:
        assert session.get_one(Channel, half_stopped).status == "stopped"


@pytest.mark.parametrize("limit", ["user", "project"])
def test_a_disconnect_takes_from_the_budget_and_without_room_leaves_channels_to_expire(
    runtime: Runtime, emu: Any, limit: str
) -> None:
    """The stops were paid from the project's budget alone (the user's limit never applied), and
    the budget's wait escaped half-way: the account marked disconnected, its grant not revoked,
    its tokens kept."""
    emu.create_user(EMAIL)
    team = emu.create_calendar(EMAIL, "Team")
    account_id = connect(runtime, emu)
    opened = [
        watch(runtime, account_id, add_calendar(runtime, account_id, EMAIL), EMAIL),
        watch(runtime, account_id, add_calendar(runtime, account_id, team), team),
    ]
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        assert account is not None
        refresh_token = load_credentials(runtime, account).refresh_token
    assert refresh_token
    settings = runtime.settings
    if limit == "user":
        settings = dataclasses.replace(settings, quota_per_user_per_minute=1)
    else:
        settings = dataclasses.replace(settings, quota_per_minute=1)
    tight = Runtime.create(settings, clock=FrozenClock(datetime.now(UTC).replace(microsecond=0)))
    try:
        tight.budget.max_wait = 0.0
        if limit == "project":
            assert tight.budget.try_take(Priority.WRITE, None) == 0.0  # someone else took the minute's one call
        result = disconnect_account(tight, account_id)
    finally:
        tight.close()
    stopped = 1 if limit == "user" else 0  # the user's one call of the minute, or none
    assert len(result.channels_stopped) == stopped and len(result.channels_not_stopped) == 2 - stopped
    assert len(emu.channels()) == 2 - stopped
    assert result.revoked and not refresh_works(runtime, refresh_token)
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        assert account is not None and account.status == "disconnected"
        assert json.loads(runtime.cipher.decrypt_str(account.credentials)) == {}
        assert {c.status for c in session.scalars(select(Channel))} == {"stopped"}
    assert set(result.channels_stopped) | set(result.channels_not_stopped) == set(opened)


def test_an_account_no_key_decrypts_is_still_disconnected(runtime: Runtime, emu: Any) -> None:
    """Its tokens under a key since removed from CALSYNC_TOKEN_KEY: the disconnect was a 500 that
    changed nothing, the account left active. It now stops and wipes what it can without Google."""
    account_id = connect(runtime, emu)
    channel = watch(runtime, account_id, add_calendar(runtime, account_id, EMAIL), EMAIL)
    other_key = Runtime.create(dataclasses.replace(runtime.settings, token_key=Secret(new_key())))
    try:
        result = disconnect_account(other_key, account_id)
    finally:
        other_key.close()
    assert not result.revoked and result.channels_not_stopped == [channel]
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        assert account is not None and account.status == "disconnected"
        assert session.get(Channel, channel).status == "stopped"  # type: ignore[union-attr]


# A disconnect racing the account's own work ----------------------------------------------------
LEASE = timedelta(seconds=60)
PAGE = 2  # events per page, so that a listing of five events takes three


def _feed_after_disconnect(runtime: Runtime, account_id: int) -> list[str]:
    """The types of the account's feed rows from `account.disconnected` on (that row first)."""
    with runtime.sessions() as session:
        rows = list(session.scalars(select(Change).where(Change.account_id == account_id).order_by(Change.seq)))
    types = [str(row.type) for row in rows]
    assert types.count("account.disconnected") == 1, types
    return types[types.index("account.disconnected") :]


def _nothing_leased_or_due(runtime: Runtime, emu: Any, account_id: int) -> None:
    """The account's work is over: no lease, nothing owed, no error recorded for the interrupted
    job, and no channel left open (here or at Google)."""
    with runtime.sessions() as session:
        account = session.get_one(Account, account_id)
        assert account.status == "disconnected"
        assert account.list_lease_owner is None and account.list_lease_until is None
        assert account.list_due_at is None and not account.list_error_count and account.last_error is None
        for cal in session.scalars(select(Calendar).where(Calendar.account_id == account_id)):
            assert cal.lease_owner is None and cal.lease_until is None
            assert cal.due_at is None and cal.retry_at is None
            assert not cal.error_count and cal.sync_state not in ("error", "backoff")
        ours = set(session.scalars(select(Channel.id).where(Channel.account_id == account_id)))
        live = session.scalars(
            select(Channel.id).where(Channel.account_id == account_id, Channel.status.in_(UNSTOPPED_CHANNEL))
        ).all()
    assert not live
    assert not [c["id"] for c in emu.channels() if c["id"] in ours]


@pytest.mark.parametrize("at_page", [2, 3])
def test_a_disconnect_between_a_syncs_pages_writes_nothing_after_account_disconnected(
    runtime: Runtime, emu: Any, monkeypatch: pytest.MonkeyPatch, at_page: int
) -> None:
    """Pages committed after the disconnect put the account's events (and `calendar.synced`) after
    `account.disconnected` in the feed, and left the calendar synced on a disconnected account: an
    app that drops an account's data on that row got some back. The disconnect takes the calendar's
    lease, so the page in flight finds it gone and writes nothing (page 3 of 3 is the last one, which
    carries the sync token and `calendar.synced`)."""
    account_id = connect(runtime, emu)
    for hour in range(5):
        emu.insert_event(
            EMAIL,
            {
                "summary": f"Meeting {hour}",
                "start": {"dateTime": f"2026-12-01T{10 + hour}:00:00Z"},
                "end": {"dateTime": f"2026-12-01T{10 + hour}:30:00Z"},
            },
        )
    refresh_calendar_list(runtime, account_id)
    with transaction(runtime.sessions) as session:
        claim = claim_calendar(session, "w/0", runtime.clock.now(), LEASE)
    assert claim is not None
    with runtime.sessions() as session:
        assert session.get_one(Calendar, claim.id).account_id == account_id
    fetch = GoogleCalendar.events_page_body
    fetched: list[str | None] = []

    def listing(
        self: GoogleCalendar,
        calendar_id: str,
        *,
        sync_token: str | None = None,
        page_token: str | None = None,
        max_results: int = 0,
    ) -> bytes:
        body = fetch(self, calendar_id, sync_token=sync_token, page_token=page_token, max_results=PAGE)
        fetched.append(page_token)
        if len(fetched) == at_page:
            # Fetched ahead while the page before is written: once that one is in, the disconnect.
            wait_for(lambda: len(mirror(runtime, claim.id)) == PAGE * (at_page - 1), what="the page before")
            disconnect_account(runtime, account_id)
        return body

    monkeypatch.setattr(GoogleCalendar, "events_page_body", listing)
    run_calendar_job(runtime, claim)  # the lease gone: the job is dropped, not failed

    assert len(fetched) == at_page
    assert _feed_after_disconnect(runtime, account_id) == ["account.disconnected"]
    assert len(mirror(runtime, claim.id)) == PAGE * (at_page - 1)
    with runtime.sessions() as session:
        assert session.get_one(Calendar, claim.id).sync_state == "pending"  # its first sync never finished
    _nothing_leased_or_due(runtime, emu, account_id)
    listed = emu.count("calendar.events.list")
    assert Worker(runtime, threads=1).run_burst() == 0
    assert emu.count("calendar.events.list") == listed


def test_a_disconnect_during_a_calendar_list_refresh_writes_nothing_after_account_disconnected(
    runtime: Runtime, emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list's commit came after the disconnect: `calendar.added` after `account.disconnected`,
    and calendars owing a first sync on a disconnected account. The disconnect takes the list's lease."""
    account_id = connect(runtime, emu)
    emu.create_calendar(EMAIL, "Team")
    with transaction(runtime.sessions) as session:
        claim = claim_account_list(session, "w/0", runtime.clock.now(), LEASE)
    assert claim is not None and claim.id == account_id
    list_calendars = GoogleCalendar.list_calendars

    def listing(self: GoogleCalendar) -> list[dict[str, Any]]:
        entries = list_calendars(self)
        disconnect_account(runtime, account_id)
        return entries

    monkeypatch.setattr(GoogleCalendar, "list_calendars", listing)
    run_list_job(runtime, claim)  # its channel opened first (and stopped by the disconnect); its commit dropped

    assert _feed_after_disconnect(runtime, account_id) == ["account.disconnected"]
    with runtime.sessions() as session:
        assert not session.scalars(select(Calendar).where(Calendar.account_id == account_id)).all()
    _nothing_leased_or_due(runtime, emu, account_id)


def test_two_disconnects_at_once_announce_it_once(runtime: Runtime, emu: Any) -> None:
    """Two web processes (a double click) each read the account as active, unlocked, and each wrote
    `account.disconnected` on PostgreSQL. (SQLite's transactions take the write lock up front.)"""
    for account_id in [connect(runtime, emu, f"user{i}@example.com") for i in range(3)]:  # rounds: a race of timing
        results = _two_disconnects_at_once(runtime, account_id)
        assert sorted(r.already_disconnected for r in results) == [False, True]
        assert _feed_after_disconnect(runtime, account_id) == ["account.disconnected"]


def _two_disconnects_at_once(runtime: Runtime, account_id: int) -> list[DisconnectResult]:
    barrier = threading.Barrier(2)
    results: list[DisconnectResult] = []
    errors: list[BaseException] = []

    def disconnect() -> None:
        barrier.wait()
        try:
            results.append(disconnect_account(runtime, account_id))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=disconnect) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and len(results) == 2, errors
    return results


def test_a_disconnect_that_deadlocks_with_a_sync_page_tries_again(runtime: Runtime, emu: Any) -> None:
    """A sync page locks its calendar row (its lease), then the account's (a refreshed token); the
    disconnect locks the account, then its calendars. When the two meet, PostgreSQL ends one of
    them (40P01); the disconnect, the one that waited first, was a 500 and is now run again."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite takes the write lock up front: no deadlock")
    account_id = connect(runtime, emu)
    cal = add_calendar(runtime, account_id, EMAIL)
    outcome: list[BaseException | DisconnectResult] = []
    with runtime.engine.connect() as page:
        page.execute(text("SET deadlock_timeout = '10s'"))  # the disconnect's backend finds the cycle
        page.execute(text("UPDATE calendars SET lease_until = lease_until WHERE id = :c"), {"c": cal})

        def disconnect() -> None:
            try:
                outcome.append(disconnect_account(runtime, account_id))
            except BaseException as err:
                outcome.append(err)

        thread = threading.Thread(target=disconnect)
        thread.start()
        wait_for(lambda: _waiting_for_a_lock(runtime), what="the disconnect waiting for the calendar row")
        page.execute(text("UPDATE accounts SET updated_at = updated_at WHERE id = :a"), {"a": account_id})
        page.commit()
        thread.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], DisconnectResult), outcome
    assert _feed_after_disconnect(runtime, account_id) == ["account.disconnected"]
    _nothing_leased_or_due(runtime, emu, account_id)


def _waiting_for_a_lock(runtime: Runtime) -> bool:
    with runtime.engine.connect() as conn:
        waiting = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    return bool(waiting)
