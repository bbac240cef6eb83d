"""The Calendar client: resources shared by the process, requests sent with each user's credentials."""

from __future__ import annotations

import fcntl
import resource
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httplib2
import pytest
from googleapiclient.errors import HttpError

from calsync.clock import day_ends
from calsync.errors import AuthRevoked, BackendError, CalendarUsageLimited, Forbidden, RateLimited, SyncTokenExpired
from calsync.google.calendar import Connections, GoogleCalendar, drop_closed, map_http_error
from tests.emulator.conftest import credentials_for


def _client(emu: Any, email: str) -> GoogleCalendar:
    tokens = emu.issue_tokens(emu.create_user(email, email.split("@")[0]))
    return GoogleCalendar(credentials_for(emu, tokens), emu.api_url + "calendar/v3/")


def test_clients_share_the_built_api_but_each_speaks_for_its_own_user(emu: Any) -> None:
    ann, bob = _client(emu, "ann@example.com"), _client(emu, "bob@example.com")
    assert ann._api is bob._api  # built once per process and endpoint
    emu.insert_event(
        "ann@example.com",
        {
            "summary": "ann's",
            "start": {"dateTime": "2026-03-01T09:00:00Z"},
            "end": {"dateTime": "2026-03-01T10:00:00Z"},
        },
    )
    for _ in range(2):  # interleaved, through the same resources
        assert ann.get_calendar("primary")["id"] == "ann@example.com"
        assert bob.get_calendar("primary")["id"] == "bob@example.com"
        assert [e["summary"] for e in ann.list_events_page("primary")["items"]] == ["ann's"]
        assert bob.list_events_page("primary")["items"] == []


def test_one_users_revoked_grant_does_not_touch_another(emu: Any) -> None:
    ann, bob = _client(emu, "ann@example.com"), _client(emu, "bob@example.com")
    emu.revoke_grant("ann@example.com")
    with pytest.raises(AuthRevoked):
        ann.list_calendars()
    assert [c["id"] for c in bob.list_calendars()] == ["bob@example.com"]


def test_an_expired_sync_token_is_its_own_error(emu: Any) -> None:
    ann = _client(emu, "ann@example.com")
    token = ann.list_events_page("primary")["nextSyncToken"]
    emu.invalidate_sync_tokens("ann@example.com")
    with pytest.raises(SyncTokenExpired):
        ann.list_events_page("primary", sync_token=token)


def test_clients_lent_one_connection_in_turn_speak_for_their_own_users_and_never_share_it(emu: Any) -> None:
    """Writes borrow a kept-alive connection (httplib2 keeps it open where the server allows, as
    Google does): no new TCP and TLS handshake per call, and never two threads on one connection."""
    pool = Connections()
    ann_creds = credentials_for(emu, emu.issue_tokens(emu.create_user("ann@example.com", "ann")))
    bob_creds = credentials_for(emu, emu.issue_tokens(emu.create_user("bob@example.com", "bob")))
    lent = []
    for creds, email in ((ann_creds, "ann@example.com"), (bob_creds, "bob@example.com")) * 2:
        with pool.lend() as http:
            client = GoogleCalendar(creds, emu.api_url + "calendar/v3/", http=http)
            assert client.get_calendar("primary")["id"] == email  # each call speaks for its own user
            lent.append(http)
    assert all(http is lent[0] for http in lent)
    with pool.lend() as first, pool.lend() as second:
        assert first is not second  # lent at once: one connection each


def _local_port(http: Any) -> int:
    (conn,) = http.connections.values()
    return int(conn.sock.getsockname()[1])


def test_a_lent_connection_stays_open_for_the_next_call(emu: Any) -> None:
    """Google keeps a connection open between calls, and so does the emulator: the second call goes
    over the first one's TCP connection."""
    pool = Connections()
    creds = credentials_for(emu, emu.issue_tokens(emu.create_user("ann@example.com", "ann")))
    ports = []
    for _ in range(2):
        with pool.lend() as http:
            GoogleCalendar(creds, emu.api_url + "calendar/v3/", http=http).get_calendar("primary")
            ports.append(_local_port(http))
    assert ports[0] == ports[1]


@pytest.mark.parametrize("lent", [True, False], ids=["lent", "own"])
def test_a_connection_google_closed_while_it_sat_idle_is_not_written_to(lent: bool) -> None:
    """A kept-alive connection that the server closed while it was idle is replaced before the next
    call, whether lent to a write or a client's own (a sync that waited for the budget): written to,
    a creation's body met a broken pipe, and the write failed as if Google were down."""
    from calsync.emulator import Emulator

    emu = Emulator(keep_alive=1).start()
    try:
        pool = Connections()
        writer = ("https://www.googleapis.com/auth/calendar",)
        creds = credentials_for(emu, emu.issue_tokens(emu.create_user("ann@example.com", "ann"), scopes=writer))
        own = GoogleCalendar(creds, emu.api_url + "calendar/v3/")
        made = []
        for n in range(3):
            with pool.lend() as http:
                client = GoogleCalendar(creds, emu.api_url + "calendar/v3/", http=http) if lent else own
                body = {"summary": f"n{n}", "start": {"dateTime": "2026-03-01T09:00:00Z"}}
                body["end"] = {"dateTime": "2026-03-01T10:00:00Z"}
                made.append(client.insert_event("primary", body)["id"])
            time.sleep(2.5)  # the emulator closes the idle connection meanwhile (idle 1 s, looked at every 0.5 s)
        assert len(set(made)) == 3
        assert sorted(e["summary"] for e in emu.events("ann@example.com")) == ["n0", "n1", "n2"]
    finally:
        emu.stop()


def test_an_open_connection_on_a_descriptor_past_1024_is_kept_and_a_closed_one_dropped() -> None:
    """A busy process holds more than 1,024 descriptors. select() cannot look at one past that, and the
    check before each call then dropped every such connection, open or not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("needs 1,200 open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    ours, server = socket.socketpair()
    try:
        high = socket.socket(fileno=fcntl.fcntl(ours.fileno(), fcntl.F_DUPFD, 1100))
        ours.close()
        assert high.fileno() >= 1024
        http = httplib2.Http()
        conn = httplib2.HTTPConnectionWithTimeout("calendar.example")
        conn.sock = high
        http.connections["http:calendar.example"] = conn
        drop_closed(http)
        assert conn.sock is high  # idle and open: kept
        server.close()
        drop_closed(http)
        assert conn.sock is None  # closed by the other end: dropped
    finally:
        server.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("reason", ["dailyLimitExceeded", "rateLimitExceeded", "userRateLimitExceeded"])
def test_a_403_of_usage_limits_is_a_rate_limit_whatever_its_reason(emu: Any, reason: str) -> None:
    """`dailyLimitExceeded` was a plain Forbidden: the budget never slowed, the job failed as if
    waiting could not help."""
    ann = _client(emu, "ann@example.com")
    emu.fail_next(1, status=403, reason=reason, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        ann.get_calendar("primary")
    assert caught.value.reason == reason and caught.value.retry_after == 7


def test_googles_calendar_usage_limits_are_the_users_and_not_a_rate() -> None:
    """403 `quotaExceeded` is "Calendar usage limits exceeded": the user's calendar takes no changes
    for hours. As a RateLimited it slowed the whole project and was retried a second later."""
    body = b'{"error": {"code": 403, "message": "Calendar usage limits exceeded.", "errors":'
    body += b' [{"domain": "usageLimits", "reason": "quotaExceeded", "message": "Calendar usage limits exceeded."}]}}'
    err = map_http_error(HttpError(httplib2.Response({"status": "403"}), body))
    assert isinstance(err, CalendarUsageLimited) and not isinstance(err, RateLimited)
    assert err.retry_after == 3600
    given = map_http_error(HttpError(httplib2.Response({"status": "403", "retry-after": "120"}), body))
    assert given.retry_after == 120  # type: ignore[attr-defined]


def test_the_daily_limit_is_waited_out_until_the_quota_day_ends() -> None:
    """Without a Retry-After, `dailyLimitExceeded` was retried a second later, all day long."""
    body = b'{"error": {"code": 403, "message": "Daily Limit Exceeded", "errors":'
    body += b' [{"domain": "usageLimits", "reason": "dailyLimitExceeded", "message": "Daily Limit Exceeded"}]}}'
    err = map_http_error(HttpError(httplib2.Response({"status": "403"}), body))
    now = datetime.now(UTC)
    assert isinstance(err, RateLimited) and err.retry_after is not None
    assert abs(err.retry_after - (day_ends(now) - now).total_seconds()) < 5


def test_a_403_of_another_domain_is_forbidden(emu: Any) -> None:
    ann = _client(emu, "ann@example.com")
    emu.fail_next(1, status=403, reason="forbidden")
    with pytest.raises(Forbidden):
        ann.get_calendar("primary")


def test_retry_after_as_an_http_date_is_read() -> None:
    """RFC 9110 lets Retry-After be a date; it was read as no Retry-After at all."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    body = b'{"error": {"code": 503, "message": "busy", "errors": [{"domain": "global", "reason": "backendError"}]}}'
    err = map_http_error(HttpError(httplib2.Response({"status": "503", "retry-after": when}), body))
    assert isinstance(err, BackendError) and err.retry_after is not None and 85 <= err.retry_after <= 90
