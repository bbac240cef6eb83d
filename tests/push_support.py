"""Helpers shared by the push tests: connected accounts, notifications as Google sends them, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from sqlalchemy import func, select

from calsync.push.intake_sql import Push
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change, Channel
from tests.sync_support import connect_account as connect_account  # re-exported for the push tests


def add_calendar_row(runtime: Runtime, account_id: int, google_id: str, **values: Any) -> int:
    """A Calendar row as the calendar-list refresh would write it (for tests below the worker)."""
    with transaction(runtime.sessions) as session:
        cal = Calendar(
            account_id=account_id, google_id=google_id, summary=google_id, due_at=runtime.clock.now(), **values
        )
        session.add(cal)
        session.flush()
        return cal.id


def calendar_row(runtime: Runtime, calendar_id: int) -> Calendar:
    with runtime.sessions() as session:
        cal = session.get(Calendar, calendar_id)
        assert cal is not None
        return cal


def calendar_id_of(runtime: Runtime, google_id: str) -> int:
    with runtime.sessions() as session:
        found = session.scalar(select(Calendar.id).where(Calendar.google_id == google_id))
        assert found is not None, f"no calendar row for {google_id}"
        return found


def account_row(runtime: Runtime, account_id: int) -> Account:
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        assert account is not None
        return account


def channels_of(runtime: Runtime, *, calendar_id: int | None = None, account_id: int | None = None) -> list[Channel]:
    with runtime.sessions() as session:
        stmt = select(Channel).order_by(Channel.created_at)
        if calendar_id is not None:
            stmt = stmt.where(Channel.calendar_id == calendar_id)
        if account_id is not None:
            stmt = stmt.where(Channel.account_id == account_id)
        return list(session.scalars(stmt))


def changes_for(runtime: Runtime, calendar_id: int | None = None) -> list[Change]:
    """The event rows of the feed (accounts' and calendars' lifecycle rows left out)."""
    with runtime.sessions() as session:
        stmt = select(Change).where(Change.event_id.is_not(None)).order_by(Change.seq)
        if calendar_id is not None:
            stmt = stmt.where(Change.calendar_id == calendar_id)
        return list(session.scalars(stmt))


def change_count(runtime: Runtime) -> int:
    """How many event rows the feed holds."""
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Change).where(Change.event_id.is_not(None))) or 0)


def push_headers(
    channel: dict[str, Any], state: str = "exists", number: int = 2, **override: str | None
) -> dict[str, str]:
    """The headers Google sends, built from the emulator's view of a channel (which knows the token)."""
    headers = {
        "X-Goog-Channel-ID": str(channel["id"]),
        "X-Goog-Channel-Token": str(channel["token"]),
        "X-Goog-Message-Number": str(number),
        "X-Goog-Resource-ID": str(channel["resource_id"]),
        "X-Goog-Resource-State": state,
        "X-Goog-Resource-URI": str(channel["resource_uri"]),
    }
    merged: dict[str, str | None] = {**headers, **override}
    return {k: v for k, v in merged.items() if v is not None}


def push_of(channel: dict[str, Any], number: int, state: str = "exists", token: str | None = None) -> Push:
    """The parsed headers of a notification for `channel` (what the receiver hands its intake)."""
    return Push(
        channel_id=str(channel["id"]),
        state=state,
        message_number=number,
        resource_id=str(channel["resource_id"]),
        token=token if token is not None else str(channel["token"]),
    )


def emu_channel(emu: Any, channel_id: str) -> dict[str, Any]:
    for channel in emu.channels():
        if channel["id"] == channel_id:
            return channel  # type: ignore[no-any-return]
    raise AssertionError(f"emulator has no live channel {channel_id}")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def post_notification(base_url: str, headers: dict[str, str], session: requests.Session | None = None) -> int:
    http = session or requests
    resp = http.post(base_url + "/notifications", headers=headers, data=b"", timeout=10)
    return resp.status_code
