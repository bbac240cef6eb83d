"""Connect sessions: which `return_to` URLs an allow-list admits (compared by scheme, host, port and
path segments, after the path is resolved the way a browser or a server resolves it), and how long
a used or expired session is kept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from calsync.accounts.connect_sessions import KEEP_EXPIRED, LINK_TTL, check_return_to
from calsync.config import Settings
from calsync.errors import InvalidConnectSession
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import ConnectSession
from calsync.work.scheduler import prune

FOLDER = Settings(return_urls=("https://app.example.test/calendar/",))
PAGE = Settings(return_urls=("https://app.example.test/calendar/done",))
ORIGIN = Settings(return_urls=("http://127.0.0.1:8080/",))


@pytest.mark.parametrize(
    ("settings", "url", "kept"),
    [
        (FOLDER, "https://app.example.test/calendar/", "https://app.example.test/calendar/"),
        (FOLDER, "https://app.example.test/calendar/done?x=1", "https://app.example.test/calendar/done?x=1"),
        (FOLDER, "https://app.example.test/calendar/a/b/../c", "https://app.example.test/calendar/a/c"),
        (FOLDER, "https://app.example.test/cal%65ndar/x", "https://app.example.test/cal%65ndar/x"),
        (PAGE, "https://app.example.test/calendar/done", "https://app.example.test/calendar/done"),
        (PAGE, "https://app.example.test/calendar/done/sub", "https://app.example.test/calendar/done/sub"),
        (ORIGIN, "http://127.0.0.1:8080/anything/at/all", "http://127.0.0.1:8080/anything/at/all"),
        (ORIGIN, "http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
    ],
)
def test_a_url_under_an_entry_is_kept_with_its_dot_segments_resolved(settings: Settings, url: str, kept: str) -> None:
    assert check_return_to(url, settings) == kept


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        (FOLDER, "https://app.example.test/calendar"),  # the folder's entry admits what is inside it
        (FOLDER, "https://app.example.test/calendarx/"),
        (FOLDER, "https://app.example.test/calendar/../admin"),
        (FOLDER, "https://app.example.test/calendar/%2e%2e/admin"),
        (FOLDER, "https://app.example.test/calendar/%2E%2E%2Fadmin"),
        (FOLDER, "https://app.example.test/calendar/a/%2e%2E/%2E./admin"),
        (FOLDER, "https://app.example.test/calendar/..%2fadmin"),
        (FOLDER, "https://app.example.test/calendar/%252e%252e/admin"),
        (FOLDER, "https://app.example.test/calendar/..;/admin"),
        (FOLDER, "https://app.example.test/calendar\\..\\admin"),
        (FOLDER, "https://app.example.test/calendar//evil.example/"),
        (FOLDER, "https://app.example.test@evil.example/calendar/"),
        (FOLDER, "https://evil.example\\@app.example.test/calendar/"),
        (FOLDER, "https://evil.example#@app.example.test/calendar/"),
        (FOLDER, "http://app.example.test/calendar/"),
        (FOLDER, "https://app.example.test:444/calendar/"),
        (PAGE, "https://app.example.test/calendar/done-not"),
        (PAGE, "https://app.example.test/calendar/done/../../admin"),
        (ORIGIN, "http://127.0.0.1:8081/"),
        (ORIGIN, "http://127.0.0.1.evil.example:8080/"),
        (ORIGIN, "http://127.0.0.1:8080/\tx"),
        # urlsplit's own ValueError (a 500): a host that NFKC turns into `/` or `@`, a bracket left open
        (FOLDER, "https://app.example.test\uff0f@evil.example/calendar/"),
        (FOLDER, "https://[app.example.test/calendar/"),
        (FOLDER, "https://app.example.test]/calendar/"),
    ],
)
def test_a_url_that_leads_outside_every_entry_is_refused(settings: Settings, url: str) -> None:
    with pytest.raises(InvalidConnectSession) as caught:
        check_return_to(url, settings)
    assert caught.value.field == "return_to"


def test_the_scheduler_pass_forgets_sessions_a_week_past_their_expiry(runtime: Runtime) -> None:
    """Forgotten only when an app made a new session, they stayed for good once it stopped making them.
    A row that still holds a connection's tokens waits for the pass that revokes them."""
    now = runtime.clock.now()

    def session_row(name: str, expired_ago: timedelta, credentials: bytes | None = None) -> ConnectSession:
        expires_at = now - expired_ago
        return ConnectSession(
            token_hash=name,
            ref="user-1",
            return_to="https://app.example.test/calendar/",
            created_at=expires_at - LINK_TTL,
            expires_at=expires_at,
            credentials=credentials,
        )

    with transaction(runtime.sessions) as session:
        session.add_all(
            [
                session_row("old", KEEP_EXPIRED + timedelta(minutes=1)),
                session_row("old-with-tokens", KEEP_EXPIRED + timedelta(minutes=1), b"encrypted"),
                session_row("recent", KEEP_EXPIRED - timedelta(minutes=1)),
            ]
        )
    with transaction(runtime.sessions) as session:
        prune(session, runtime, now)
    with runtime.sessions() as session:
        assert set(session.scalars(select(ConnectSession.token_hash))) == {"old-with-tokens", "recent"}
