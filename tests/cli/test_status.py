"""`calsync status`, `calsync sync` and `calsync channels`, run as the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from calsync.accounts.connected import upsert_account
from calsync.config import Settings
from calsync.google.oauth import credentials_from_json
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Calendar, Channel, Event
from calsync.store.states import ChannelStatus
from tests.web.dashboard_support import add_account, add_calendar, add_channel

CALSYNC = str(Path(sys.executable).with_name("calsync"))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CALSYNC, *args], env=env, capture_output=True, text=True, timeout=120)


def env_for(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """The process environment with only the CALSYNC_* variables of `settings` (and `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env["COLUMNS"] = "200"
    if settings is not None:
        env.update(
            CALSYNC_DATABASE_URL=settings.database_url,
            CALSYNC_GOOGLE_API_URL=settings.google_api_url,
            CALSYNC_GOOGLE_CLIENT_SECRETS=str(settings.google_client_secrets),
            CALSYNC_PUBLIC_URL=settings.public_url,
            CALSYNC_TOKEN_KEY=str(settings.token_key),
            CALSYNC_INSTANCE_PATH=str(settings.instance_path),
        )
    env.update(extra)
    return env


def connect(runtime: Runtime, emu: Any, email: str) -> int:
    """An account stored as the consent would store it, with tokens the emulator accepts."""
    tokens = emu.issue_tokens(email)
    stored = {"token": tokens["access_token"], "refresh_token": tokens["refresh_token"]}
    creds = credentials_from_json(json.dumps(stored), runtime.settings)
    with transaction(runtime.sessions) as session:
        return upsert_account(session, runtime.cipher, email, creds, [], runtime.clock.now()).id


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_status_shows_accounts_calendars_and_channel_expiry(settings: Settings, runtime: Runtime) -> None:
    now = runtime.clock.now()
    ann = add_account(runtime, "ann@example.com")
    add_account(runtime, "dead@example.com", status="reauth_required", last_error="invalid_grant")
    work = add_calendar(
        runtime,
        ann,
        "work-1@group.calendar.google.com",
        "Work",
        sync_state="synced",
        last_synced_at=now - timedelta(minutes=4),
    )
    add_channel(
        runtime, ann, work, "11111111-2222-3333-4444-555555555555", now + timedelta(days=6, hours=23, minutes=30)
    )

    result = run(env_for(settings), "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ann@example.com" in out and "dead@example.com" in out
    assert "reauth_required" in out and "re-consent needed at /connect" in out
    assert "work-1@group.calendar.google.com" in out and "synced" in out and "4 min" in out
    assert "11111111-2222-3333-4444-555555555555" in out and "expires in 6 d 23 h" in out
    assert "Google quota today: 0 calls, projected 0 of 900,000 · reconcile every 1 h" in out


@pytest.mark.slow
def test_sync_by_title_shows_the_result_full_then_incremental(settings: Settings, runtime: Runtime, emu: Any) -> None:
    emu.create_user("ann@example.com")
    cal_id = emu.create_calendar("ann@example.com", "Work")
    emu.bulk_insert_events(
        cal_id,
        [
            {
                "summary": f"Meeting {n}",
                "start": {"dateTime": f"2026-02-{n + 1:02d}T10:00:00Z"},
                "end": {"dateTime": f"2026-02-{n + 1:02d}T11:00:00Z"},
            }
            for n in range(12)
        ],
    )
    account_id = connect(runtime, emu, "ann@example.com")
    add_calendar(runtime, account_id, cal_id, "Work")
    env = env_for(settings)

    first = run(env, "sync", "work")
    assert first.returncode == 0, first.stderr
    assert "Work (ann@example.com): full sync" in first.stdout and "12 event(s) seen" in first.stdout
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 12
        assert session.scalar(select(Calendar.sync_state).where(Calendar.google_id == cal_id)) == "synced"
        assert session.scalar(select(Calendar.lease_owner).where(Calendar.google_id == cal_id)) is None

    event_id = emu.events(cal_id)[0]["id"]
    emu.patch_event(cal_id, event_id, {"summary": "Meeting, moved"})
    second = run(env, "sync", cal_id, "--account", "ann@example.com")
    assert second.returncode == 0, second.stderr
    assert "incremental sync" in second.stdout and "1 updated" in second.stdout


def test_sync_refuses_while_a_worker_holds_the_lease(settings: Settings, runtime: Runtime, emu: Any) -> None:
    emu.create_user("ann@example.com")
    account_id = connect(runtime, emu, "ann@example.com")
    cal = add_calendar(
        runtime,
        account_id,
        "ann@example.com",
        "Ann",
        lease_owner="worker-1",
        lease_until=runtime.clock.now() + timedelta(minutes=2),
    )
    result = run(env_for(settings), "sync", "Ann")
    assert result.returncode != 0 and "being synced by a worker" in result.stderr
    with runtime.sessions() as session:
        assert session.get(Calendar, cal).lease_owner == "worker-1"  # type: ignore[union-attr]


@pytest.mark.slow
def test_channels_renew_then_stop(settings: Settings, runtime: Runtime, emu: Any, live_server: str) -> None:
    emu.create_user("ann@example.com")
    account_id = connect(runtime, emu, "ann@example.com")
    add_calendar(runtime, account_id, "ann@example.com", "Ann")
    env = env_for(settings)

    renewed = run(env, "channels", "renew", "Ann")
    assert renewed.returncode == 0, renewed.stderr
    with runtime.sessions() as session:
        live = list(session.scalars(select(Channel).where(Channel.status == ChannelStatus.ACTIVE)))
    assert len(live) == 1 and live[0].expires_at is not None
    assert live[0].id in renewed.stdout

    again = run(env, "channels", "renew", "Ann")
    assert again.returncode == 0, again.stderr
    with runtime.sessions() as session:
        states = dict(session.execute(select(Channel.id, Channel.status)).all())
    assert states[live[0].id] == ChannelStatus.STOPPED and list(states.values()).count(ChannelStatus.ACTIVE) == 1

    new_id = next(cid for cid, state in states.items() if state == ChannelStatus.ACTIVE)
    # Google does not take the stop: it said "stopped" with the channel open, and refused a second try.
    emu.fail_next(1, status=503, reason="backendError", method="calendar.channels.stop")
    put_off = run(env, "channels", "stop", new_id)
    assert put_off.returncode == 1 and "stopped channel" not in put_off.stdout
    assert "next list refresh" in put_off.stderr and new_id in [c["id"] for c in emu.channels()]
    stopped = run(env, "channels", "stop", new_id)
    assert stopped.returncode == 0 and f"stopped channel {new_id}" in stopped.stdout
    with runtime.sessions() as session:
        assert session.get(Channel, new_id).status == "stopped"  # type: ignore[union-attr]
    assert new_id not in [c["id"] for c in emu.channels()]


def test_unknown_calendar_is_a_one_line_error(settings: Settings) -> None:
    line = one_line_error(run(env_for(settings), "sync", "No such calendar"))
    assert line == "error: no calendar 'No such calendar' (see `calsync status`)"


@pytest.mark.parametrize("case", ["missing client secrets", "unreachable database", "malformed URL", "no database"])
def test_configuration_problems_are_one_line_errors(case: str, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    env = env_for(CALSYNC_DATABASE_URL=f"sqlite:///{db}", CALSYNC_INSTANCE_PATH=str(tmp_path))
    if case != "no database":
        assert run(env, "db", "upgrade").returncode == 0
    command = ["status"]
    if case == "missing client secrets":
        command = ["sync", "Work"]
    elif case == "unreachable database":
        env["CALSYNC_DATABASE_URL"] = "postgresql+psycopg://calsync@127.0.0.1:1/calsync"
    elif case == "malformed URL":
        env["CALSYNC_PUBLIC_URL"] = "not a url"
    expected = {
        "missing client secrets": "CALSYNC_GOOGLE_CLIENT_SECRETS is not set",
        "unreachable database": "the database cannot be reached",
        "malformed URL": "CALSYNC_PUBLIC_URL: not an http(s) URL",
        "no database": "no database at",
    }[case]
    assert expected in one_line_error(run(env, *command))
