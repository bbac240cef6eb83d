"""Helpers for the dashboard's tests: seed rows as the other parts of calsync would, sign in."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change, Channel, Notification
from calsync.store.states import NotificationOutcome

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client: Any, password: str = PASSWORD) -> str:
    """Sign in through the login form like a browser; returns the session's CSRF token."""
    page = client.get("/dashboard/login")
    assert page.status_code == 200, page.text
    resp = client.post("/dashboard/login", data={"csrf_token": csrf_from(page.text), "password": password})
    assert resp.status_code == 302, resp.text
    return csrf_from(client.get("/dashboard/").text)


def add_account(runtime: Runtime, email: str, *, status: str = "active", last_error: str | None = None) -> int:
    with transaction(runtime.sessions) as session:
        account = Account(
            email=email,
            credentials=runtime.cipher.encrypt_str("{}"),
            scopes=[],
            status=status,
            last_error=last_error,
            created_at=runtime.clock.now() - timedelta(hours=2),
        )
        session.add(account)
        session.flush()
        return account.id


def add_calendar(runtime: Runtime, account_id: int, google_id: str, summary: str, **values: Any) -> int:
    with transaction(runtime.sessions) as session:
        cal = Calendar(account_id=account_id, google_id=google_id, summary=summary, **values)
        session.add(cal)
        session.flush()
        return cal.id


def add_channel(
    runtime: Runtime,
    account_id: int,
    calendar_id: int | None,
    channel_id: str,
    expires_at: datetime,
    *,
    status: str = "active",
) -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            Channel(
                id=channel_id,
                account_id=account_id,
                calendar_id=calendar_id,
                kind="events" if calendar_id else "calendar_list",
                token_hash="0" * 64,
                resource_id="res-" + channel_id,
                expires_at=expires_at,
                status=status,
            )
        )


def add_change(
    runtime: Runtime,
    calendar_id: int,
    event_id: str,
    kind: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    **values: Any,
) -> int:
    fields = (
        sorted(k for k in set(before or {}) | set(after or {}) if (before or {}).get(k) != (after or {}).get(k))
        if kind == "updated"
        else []
    )
    with transaction(runtime.sessions) as session:
        change = Change(
            calendar_id=calendar_id, event_id=event_id, kind=kind, fields=fields, before=before, after=after, **values
        )
        append_changes(session, [change], runtime.clock.now())
        return change.seq


def add_notification(
    runtime: Runtime,
    channel_id: str,
    state: str,
    number: int,
    outcome: NotificationOutcome,
    headers: dict[str, str] | None = None,
) -> int:
    with transaction(runtime.sessions) as session:
        note = Notification(
            channel_id=channel_id,
            resource_state=state,
            message_number=number,
            resource_id="res-" + channel_id,
            outcome=outcome,
            headers=headers
            or {"X-Goog-Channel-ID": channel_id, "X-Goog-Resource-State": state, "X-Goog-Message-Number": str(number)},
            received_at=runtime.clock.now(),
        )
        session.add(note)
        session.flush()
        return note.id


def add_snapshot(runtime: Runtime, calendar_id: int, count: int, prefix: str = "snap") -> list[int]:
    """`count` snapshot rows in one transaction, as one page of a first full sync writes them."""
    with transaction(runtime.sessions) as session:
        rows = [
            Change(
                calendar_id=calendar_id,
                event_id=f"{prefix}{n}",
                kind="snapshot",
                fields=[],
                before=None,
                after={"id": f"{prefix}{n}", "summary": f"Snapshot event {prefix}{n}"},
            )
            for n in range(count)
        ]
        return [c.seq for c in append_changes(session, rows, runtime.clock.now())]
