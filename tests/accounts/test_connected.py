"""Accounts and their encrypted credentials, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.oauth2.credentials import Credentials
from sqlalchemy import select, update

from calsync.accounts.connected import (
    load_credentials,
    mark_reauth_required,
    save_if_refreshed,
    upsert_account,
)
from calsync.google.oauth import client_config
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar
from tests.sync_support import connect_account

READONLY = "https://www.googleapis.com/auth/calendar.readonly"
NOW = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def creds(runtime: Runtime, token: str, refresh: str | None) -> Credentials:
    cfg = client_config(runtime.settings)
    return Credentials(
        token=token,
        refresh_token=refresh,
        token_uri="http://127.0.0.1:1/token",
        client_id=cfg.client_id,
        client_secret=cfg.client_secret,
        scopes=[READONLY],
    )


def upsert(runtime: Runtime, token: str, refresh: str | None, now: datetime = NOW) -> int:
    with transaction(runtime.sessions) as session:
        return upsert_account(
            session, runtime.cipher, "a@example.com", creds(runtime, token, refresh), [READONLY], now
        ).id


def stored(runtime: Runtime, account_id: int) -> Credentials:
    with runtime.sessions() as session:
        return load_credentials(runtime, session.get_one(Account, account_id))


def test_connecting_stores_encrypted_credentials_and_asks_for_the_calendar_list(runtime: Runtime) -> None:
    account_id = upsert(runtime, "access-1", "refresh-1")
    with runtime.sessions() as session:
        account = session.get_one(Account, account_id)
        assert b"refresh-1" not in account.credentials and b"access-1" not in account.credentials
        assert (account.status, account.scopes, account.list_requested, account.list_due_at) == (
            "active",
            [READONLY],
            1,
            NOW,
        )
    loaded = stored(runtime, account_id)
    assert (loaded.token, loaded.refresh_token, loaded.token_uri) == (
        "access-1",
        "refresh-1",
        "http://127.0.0.1:1/token",
    )


def test_reconnecting_never_duplicates_and_keeps_the_refresh_token_google_did_not_resend(runtime: Runtime) -> None:
    first = upsert(runtime, "access-1", "refresh-1")
    with transaction(runtime.sessions) as session:
        session.add(Calendar(account_id=first, google_id="a@example.com", sync_requested=1, sync_done=1, retry_at=NOW))
        mark_reauth_required(session, first, "invalid_grant", NOW)
    later = datetime(2026, 2, 2, tzinfo=UTC)
    second = upsert(runtime, "access-2", None, now=later)
    assert second == first
    loaded = stored(runtime, first)
    assert (loaded.token, loaded.refresh_token) == ("access-2", "refresh-1")
    with runtime.sessions() as session:
        assert len(session.scalars(select(Account)).all()) == 1
        account = session.get_one(Account, first)
        assert (account.status, account.last_error, account.list_requested) == ("active", None, 2)
        cal = session.scalars(select(Calendar)).one()
        assert (cal.sync_requested, cal.due_at, cal.retry_at) == (2, later, None)


def test_only_a_changed_token_is_saved(runtime: Runtime) -> None:
    account_id = upsert(runtime, "access-1", "refresh-1")
    current = stored(runtime, account_id)
    with transaction(runtime.sessions) as session:
        assert save_if_refreshed(session, runtime, account_id, current, "access-1") is False
    current.token = "access-2"
    with transaction(runtime.sessions) as session:
        assert save_if_refreshed(session, runtime, account_id, current, "access-1") is True
    assert stored(runtime, account_id).token == "access-2"


def test_a_dead_grant_is_visible_on_the_account_and_its_calendars(runtime: Runtime) -> None:
    account_id = upsert(runtime, "access-1", "refresh-1")
    with transaction(runtime.sessions) as session:
        session.add(Calendar(account_id=account_id, google_id="a@example.com"))
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).values(sync_state="synced"))
        mark_reauth_required(session, account_id, "Token has been expired or revoked.", NOW)
    with runtime.sessions() as session:
        account = session.get_one(Account, account_id)
        assert (account.status, account.last_error) == ("reauth_required", "Token has been expired or revoked.")
        cal = session.scalars(select(Calendar)).one()
        assert cal.sync_state == "error" and "re-consent" in (cal.last_error or "")


def test_credentials_survive_a_round_trip_through_the_emulator(runtime: Runtime, emu: Any) -> None:
    account_id = connect_account(runtime, emu, "b@example.com")
    loaded = stored(runtime, account_id)
    assert loaded.token_uri == emu.url + "/token" and loaded.refresh_token


def test_a_sync_finishing_after_a_disconnect_neither_revives_nor_rewrites_the_account(runtime: Runtime) -> None:
    account_id = upsert(runtime, "access-1", "refresh-1")
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(status="disconnected", credentials=runtime.cipher.encrypt_str("{}"))
        )
    with transaction(runtime.sessions) as session:
        mark_reauth_required(session, account_id, "invalid_grant", NOW)
        save_if_refreshed(session, runtime, account_id, creds(runtime, "access-9", "refresh-9"), "access-1")
    with runtime.sessions() as session:
        account = session.get_one(Account, account_id)
        assert account.status == "disconnected"
        assert runtime.cipher.decrypt_str(account.credentials) == "{}"
