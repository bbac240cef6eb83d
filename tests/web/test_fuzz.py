"""Bad input never breaks calsync: fuzzed notification headers and API parameters get 2xx/4xx, never 5xx,
and a rejected request writes nothing (only the bounded notification log may note the rejection)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change, Channel, Event, Notification
from calsync.sync.changelog import append_changes

TOKEN = "the-right-token"
CHANNEL_ID = "0b7c1e2a-5f0e-4b7a-9d54-fuzzchannel01"
RESOURCE_ID = "fuzz-resource-id"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
# Tables a rejected request must leave exactly as they were (the notification log is checked apart).
GUARDED = ("accounts", "calendars", "channels", "events", "changes", "webhook_subscriptions", "deliveries")


@pytest.fixture
def world(runtime: Runtime) -> dict[str, Any]:
    """One account, a calendar with an event, a change in the log and a live channel with a known token."""
    now = runtime.clock.now()
    with transaction(runtime.sessions) as session:
        account = Account(email="fuzz@example.com", credentials=runtime.cipher.encrypt_str("{}"), scopes=[],
                          status="active", list_requested=0, list_done=0)
        session.add(account)
        session.flush()
        cal = Calendar(account_id=account.id, google_id="fuzz@example.com", baseline_done=True, sync_requested=1,
                       sync_done=1, sync_state="synced", due_at=now + timedelta(hours=1))
        session.add(cal)
        session.flush()
        data = {"id": "ev1", "summary": "Fuzz", "status": "confirmed"}
        session.add(Event(calendar_id=cal.id, google_id="ev1", status="confirmed", data=data))
        session.add(Channel(id=CHANNEL_ID, account_id=account.id, calendar_id=cal.id, kind="events",
                            token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(), resource_id=RESOURCE_ID,
                            status="active", expires_at=now + timedelta(days=7), created_at=now))
        append_changes(session, [Change(calendar_id=cal.id, event_id="ev1", kind="created", fields=[],
                                        before=None, after=data)], now)
    return {"calendar": "fuzz@example.com"}


def _header_text() -> st.SearchStrategy[str]:
    """What a server can receive: any bytes (here UTF-8 of any text, NUL included) read as latin-1, no line breaks."""
    raw = st.one_of(st.text(max_size=80), st.text(max_size=5000), st.integers(5_000, 20_000).map(lambda n: "x" * n),
                    st.integers(-2**70, 2**70).map(str), st.just(""), st.just(" "))
    return raw.map(lambda s: s.encode("utf-8").decode("latin-1")).map(
        lambda s: s.replace("\r", "").replace("\n", ""))


def _maybe(values: st.SearchStrategy[str], *known: str) -> st.SearchStrategy[str | None]:
    options = [st.none(), values] + ([st.sampled_from(known)] if known else [])
    return st.one_of(*options)


notification_headers = st.fixed_dictionaries({}, optional={
    "X-Goog-Channel-ID": _maybe(_header_text(), CHANNEL_ID, "unknown-channel"),
    "X-Goog-Channel-Token": _maybe(_header_text(), TOKEN, ""),
    "X-Goog-Resource-ID": _maybe(_header_text(), RESOURCE_ID),
    "X-Goog-Resource-State": _maybe(_header_text(), "sync", "exists", "not_exists", "EXISTS"),
    "X-Goog-Message-Number": _maybe(_header_text(), "1", "2", "99999999999999999999", "-3", "1e9", "٣"),
    "X-Goog-Resource-URI": _maybe(_header_text()),
    "X-Goog-Channel-Expiration": _maybe(_header_text(), "Tue, 19 Nov 2013 01:13:52 GMT"),
    "Content-Type": _maybe(_header_text(), "application/json"),
})


def _snapshot(runtime: Runtime) -> dict[str, Any]:
    with runtime.engine.connect() as conn:
        state = {t: sorted(map(repr, conn.execute(text(f"SELECT * FROM {t}")).all())) for t in GUARDED}
    return state


def _log(runtime: Runtime) -> list[Notification]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


@settings(FUZZ, max_examples=200)
@given(headers=notification_headers, body=st.one_of(st.just(b""), st.binary(max_size=2000)))
@example(headers={"X-Goog-Channel-ID": CHANNEL_ID, "X-Goog-Channel-Token": TOKEN, "X-Goog-Resource-ID": RESOURCE_ID,
                  "X-Goog-Resource-State": "exists", "X-Goog-Message-Number": "7"}, body=b"")
@example(headers={"X-Goog-Channel-ID": CHANNEL_ID, "X-Goog-Channel-Token": TOKEN + "x",
                  "X-Goog-Resource-ID": RESOURCE_ID, "X-Goog-Resource-State": "exists", "X-Goog-Message-Number": "8"},
         body=b"")
def test_fuzzed_notifications_get_2xx_or_4xx_and_rejected_ones_write_nothing(client: FlaskClient, runtime: Runtime,
                                                                             world: dict[str, Any], headers: Any,
                                                                             body: Any) -> None:
    before, log_before = _snapshot(runtime), len(_log(runtime))
    resp = client.post("/notifications", headers={k: v for k, v in headers.items() if v is not None}, data=body)
    assert resp.status_code < 500, (resp.status_code, headers)
    log = _log(runtime)
    assert len(log) <= log_before + 1
    if resp.status_code >= 400:
        assert _snapshot(runtime) == before, headers
        assert all(n.outcome not in {"queued", "sync", "duplicate"} for n in log[log_before:])
    else:
        after = _snapshot(runtime)
        for table in ("accounts", "events", "changes", "webhook_subscriptions", "deliveries"):
            assert after[table] == before[table], table


query_value = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "1", "1000", "1001", "-1", " 5", "5 ", "0x10", "1e3", "٣", "fuzz@example.com"]),
)


@settings(FUZZ, max_examples=150)
@given(path=st.sampled_from(["/api/changes", "/api/events", "/api/calendars", "/api/webhooks"]),
       params=st.fixed_dictionaries({}, optional={"after": query_value, "limit": query_value, "calendar": query_value,
                                                  "account": query_value, "pageToken": query_value}),
       auth=st.sampled_from(["Bearer test-api-token", "Bearer wrong", "", "Basic dGVzdDp0ZXN0", "Bearer "]))
def test_fuzzed_api_queries_get_2xx_or_4xx_and_write_nothing(
    client: FlaskClient, runtime: Runtime, world: dict[str, Any], path: Any, params: Any, auth: Any
) -> None:
    before = _snapshot(runtime)
    query = {k: v for k, v in params.items() if v is not None}
    resp = client.get(path, query_string=query, headers={"Authorization": auth} if auth else {})
    assert resp.status_code < 500, (resp.status_code, path, query)
    if resp.status_code == 200:
        assert resp.is_json
    assert _snapshot(runtime) == before


json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                    st.text(max_size=20)),
                          lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                  st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
# URLs that can never reach the network here: plain http (refused by default), private addresses
# (refused by default), or junk; so no case waits on DNS or a connection.
webhook_url = st.one_of(st.text(max_size=30), st.sampled_from([
    "http://example.com/hook", "https://127.0.0.1/hook", "https://10.0.0.1/x", "https://[::1]/x", "ftp://x",
    "https://169.254.169.254/latest", "javascript:alert(1)", ""]))
webhook_body = st.one_of(
    json_value.map(json.dumps),
    st.fixed_dictionaries({"url": webhook_url}, optional={
        "events": st.one_of(json_value, st.lists(st.sampled_from(["event.created", "event.updated", "event.deleted",
                                                                  "bogus", ""]), max_size=4)),
        "calendars": json_value, "format": st.one_of(st.sampled_from(["standard", "slack", "x"]), json_value),
    }).map(json.dumps),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(FUZZ, max_examples=100)
@given(body=webhook_body, content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_fuzzed_webhook_subscriptions_get_4xx_and_write_nothing(
    client: FlaskClient,
    runtime: Runtime,
    world: dict[str, Any],
    api_headers: dict[str, str],
    body: Any,
    content_type: Any,
) -> None:
    before = _snapshot(runtime)
    headers = dict(api_headers)
    if content_type:
        headers["Content-Type"] = content_type
    resp = client.post("/api/webhooks", data=body.encode("utf-8"), headers=headers)
    assert 400 <= resp.status_code < 500, (resp.status_code, body)
    assert _snapshot(runtime) == before


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_fuzzed_paths_under_api_never_fail(client: FlaskClient, runtime: Runtime, world: dict[str, Any],
                                           api_headers: dict[str, str], data: Any) -> None:
    """Ids in paths (subscriptions, accounts) are just as hostile as parameters."""
    segment = data.draw(st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s and "?" not in s
                                                                and "#" not in s))
    method, path = data.draw(st.sampled_from([
        ("GET", "/api/webhooks/{}"), ("DELETE", "/api/webhooks/{}"), ("GET", "/api/webhooks/{}/deliveries"),
        ("POST", "/api/webhooks/{}/replay"), ("POST", "/api/webhooks/{}/rotate-secret"),
        ("POST", "/api/accounts/{}/disconnect")]))
    before = _snapshot(runtime)
    resp = client.open(path.format(segment), method=method, headers=api_headers)
    assert resp.status_code < 500, (resp.status_code, method, path, segment)
    assert _snapshot(runtime) == before
