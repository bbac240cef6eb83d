"""The channel that serves a calendar (or a calendar list), on both engines."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Channel
from calsync.store.serving import serving_channels
from calsync.store.states import ChannelKind, ChannelStatus

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_IDS = (f"ch-{n}" for n in itertools.count())


def _account(runtime: Runtime) -> tuple[int, int, int]:
    """An account with two calendars."""
    with transaction(runtime.sessions) as session:
        account = Account(email=f"{next(_IDS)}@example.com", credentials=b"", scopes=[])
        session.add(account)
        session.flush()
        calendars = [Calendar(account_id=account.id, google_id=g, created_at=NOW) for g in ("primary", "team")]
        session.add_all(calendars)
        session.flush()
        return account.id, calendars[0].id, calendars[1].id


def _channel(
    runtime: Runtime,
    account_id: int,
    calendar_id: int | None,
    status: str = ChannelStatus.ACTIVE,
    *,
    expires_in: float | None = 3600,
    age: float = 0,
) -> str:
    channel_id = next(_IDS)
    with transaction(runtime.sessions) as session:
        session.add(
            Channel(
                id=channel_id,
                account_id=account_id,
                calendar_id=calendar_id,
                kind=ChannelKind.EVENTS if calendar_id is not None else ChannelKind.CALENDAR_LIST,
                token_hash="x",
                status=status,
                created_at=NOW - timedelta(seconds=age),
                expires_at=None if expires_in is None else NOW + timedelta(seconds=expires_in),
            )
        )
    return channel_id


def _serving(runtime: Runtime, calendar_ids: list[int] | None = None) -> tuple[dict[int, str], dict[int, str]]:
    with runtime.sessions() as session:
        serving = serving_channels(session, calendar_ids=calendar_ids)
        return {k: c.id for k, c in serving.calendars.items()}, {k: c.id for k, c in serving.lists.items()}


def test_the_active_channel_that_expires_last_serves(runtime: Runtime) -> None:
    account, cal, other = _account(runtime)
    _channel(runtime, account, cal, expires_in=600, age=0)  # newer, but replaced soon
    kept = _channel(runtime, account, cal, expires_in=7200, age=60)
    _channel(runtime, account, cal, ChannelStatus.STOPPED, expires_in=9000)
    _channel(runtime, account, cal, ChannelStatus.STOPPING, expires_in=9000)
    _channel(runtime, account, cal, ChannelStatus.PENDING, expires_in=None)
    _channel(runtime, account, other, ChannelStatus.PENDING, expires_in=None)  # a watch in flight serves nothing yet
    old_list = _channel(runtime, account, None, expires_in=60, age=120)
    new_list = _channel(runtime, account, None, expires_in=60, age=0)  # same expiry: the newer
    assert _serving(runtime) == ({cal: kept}, {account: new_list})
    assert old_list != new_list


def test_an_active_channel_whose_expiry_is_not_written_yet_serves_only_alone(runtime: Runtime) -> None:
    account, cal, other = _account(runtime)
    dated = _channel(runtime, account, cal, expires_in=60)
    _channel(runtime, account, cal, expires_in=None, age=-1)  # turned active by Google's `sync` message
    undated = _channel(runtime, account, other, expires_in=None)
    assert _serving(runtime)[0] == {cal: dated, other: undated}


def test_only_the_calendars_asked_for(runtime: Runtime) -> None:
    account, cal, other = _account(runtime)
    first = _channel(runtime, account, cal)
    _channel(runtime, account, other)
    _channel(runtime, account, None)
    assert _serving(runtime, [cal]) == ({cal: first}, {})
    assert _serving(runtime, []) == ({}, {})
