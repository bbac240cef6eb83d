"""Lifecycle rows on the dashboard's feed and in `calsync changes`: what happened, in words, with the ref."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from calsync import create_app
from calsync.cli.changes import changes
from calsync.config import Secret, Settings
from calsync.feed.append import append_changes
from calsync.feed.lifecycle import account_change, calendar_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account
from calsync.store.states import ChangeType
from tests.web.dashboard_support import PASSWORD, add_account, add_calendar, add_change, sign_in


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(dataclasses.replace(settings, admin_password=Secret(PASSWORD)))
    yield rt
    rt.close()


@pytest.fixture
def feed(runtime: Runtime) -> dict[str, int]:
    """An account of the app's user `crm-7`: connected, one calendar added and synced with an event, then
    needing consent again."""
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@group.calendar.google.com", "Work")
    with transaction(runtime.sessions) as session:
        session.execute(update(Account).where(Account.id == ann).values(ref="crm-7"))
        append_changes(
            session,
            [
                account_change(ChangeType.ACCOUNT_CONNECTED, ann),
                *calendar_changes(session, ChangeType.CALENDAR_ADDED, [work]),
            ],
            runtime.clock.now(),
        )
    add_change(runtime, work, "ev1", "created", None, {"id": "ev1", "summary": "Quarterly planning"})
    with transaction(runtime.sessions) as session:
        append_changes(
            session,
            [
                *calendar_changes(session, ChangeType.CALENDAR_SYNCED, [work]),
                account_change(ChangeType.ACCOUNT_REAUTH_REQUIRED, ann, reason="invalid_grant"),
            ],
            runtime.clock.now(),
        )
    return {"account": ann, "calendar": work}


def test_the_dashboard_feed_shows_lifecycle_rows_among_the_event_rows(runtime: Runtime, feed: dict[str, int]) -> None:
    admin = create_app(runtime=runtime).test_client()
    sign_in(admin)
    page = admin.get("/dashboard/changes").text
    order = [
        "account.reauth_required",
        "Calendar &#34;Work&#34; synced in full for the first time",
        "Quarterly planning",
        "Calendar &#34;Work&#34; added",
        "Account connected",
    ]
    positions = [page.index(text) for text in order]
    assert positions == sorted(positions), "newest first, in seq order"
    assert "Account needs consent again" in page and page.count('<span class="mono">crm-7</span>') == 4
    only_work = admin.get(f"/dashboard/changes?calendar={feed['calendar']}").text
    assert "Quarterly planning" in only_work and "Calendar &#34;Work&#34; added" in only_work
    assert "Account connected" not in only_work
    fragment = admin.get("/dashboard/changes/fragment?after=0")
    assert fragment.status_code == 200 and "Account connected" in fragment.text


def test_calsync_changes_prints_lifecycle_rows_in_words(
    runtime: Runtime, feed: dict[str, int], monkeypatch: Any
) -> None:
    monkeypatch.setenv("CALSYNC_DATABASE_URL", runtime.settings.database_url)
    out = CliRunner().invoke(changes, ["--after", "0"], terminal_width=200)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == 5
    assert "ann@example.com  account.connected  Account connected  ref crm-7" in lines[0]
    assert (
        'ann@example.com / work@group.calendar.google.com  calendar.added  Calendar "Work" added  ref crm-7' in lines[1]
    )
    assert "Quarterly planning" in lines[2]
    assert "calendar.synced" in lines[3] and "account.reauth_required  Account needs consent again" in lines[4]
