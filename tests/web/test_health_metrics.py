"""/healthz (database and a fresh worker heartbeat) and /metrics (counters and database gauges)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calsync import create_app
from calsync.clock import FrozenClock
from calsync.config import Secret, Settings
from calsync.runtime import Runtime
from calsync.store.liveness import HEARTBEAT_SECONDS
from calsync.work.worker import Worker
from tests.push_support import connect_account


@pytest.fixture
def rt(settings: Settings) -> Any:
    runtime = Runtime.create(settings, clock=FrozenClock(datetime.now(UTC).replace(microsecond=0)))
    yield runtime
    runtime.close()


@pytest.fixture
def web(rt: Any) -> Any:
    return create_app(runtime=rt).test_client()


def test_healthz_fails_until_a_worker_has_reported(web: Any, rt: Any) -> None:
    resp = web.get("/healthz")
    assert resp.status_code == 503
    assert resp.json["database"] == "ok" and "no worker" in resp.json["worker"]
    Worker(rt, threads=1).tick()
    resp = web.get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {
        "status": "ok",
        "database": "ok",
        "worker": "ok",
        "worker_seen_at": resp.json["worker_seen_at"],
    }
    assert resp.json["worker_seen_at"].startswith(rt.clock.now().strftime("%Y-%m-%dT%H:%M:%S"))


def test_healthz_fails_when_the_heartbeat_is_stale(web: Any, rt: Any) -> None:
    Worker(rt, threads=1).tick()
    rt.clock.advance(3 * HEARTBEAT_SECONDS - 1)
    assert web.get("/healthz").status_code == 200
    rt.clock.advance(2)
    resp = web.get("/healthz")
    assert resp.status_code == 503 and resp.json["worker"].startswith("stale")


def test_healthz_reports_an_unreachable_database(settings: Settings, tmp_path: Path) -> None:
    broken = Runtime.create(Settings(**{**settings.__dict__, "database_url": f"sqlite:///{tmp_path}/no/such/dir.db"}))
    try:
        resp = create_app(runtime=broken).test_client().get("/healthz")
        assert resp.status_code == 503 and resp.json is not None and resp.json["database"].startswith("unreachable")
    finally:
        broken.close()


def _scrape(web: Any) -> dict[str, list[Any]]:
    resp = web.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    return {f.name: f.samples for f in text_string_to_metric_families(resp.get_data(as_text=True))}


def test_metrics_expose_the_named_series(web: Any, rt: Any, emu: Any) -> None:
    connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    web.post(
        "/notifications",
        headers={"X-Goog-Channel-ID": "nope", "X-Goog-Resource-State": "exists", "X-Goog-Message-Number": "2"},
    )
    families = _scrape(web)
    for name in (
        "calsync_notifications",
        "calsync_syncs",
        "calsync_google_calls",
        "calsync_changes",
        "calsync_channel_next_expiry_seconds",
        "calsync_sync_lag_seconds",
        "calsync_calendars",
        "calsync_accounts",
        "calsync_channels",
        "calsync_database_up",
    ):
        assert name in families, name
    refused = [
        s
        for s in families["calsync_notifications"]
        if s.labels == {"state": "exists", "outcome": "unknown_channel"} and s.name.endswith("_total")
    ]
    assert refused and refused[0].value >= 1
    assert any(
        s.labels.get("method") == "events.list" and s.labels.get("status") == "200"
        for s in families["calsync_google_calls"]
    )
    gauges = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f}
    assert gauges[("calsync_calendars", (("sync_state", "synced"),))] == 1
    assert gauges[("calsync_accounts", (("status", "active"),))] == 1
    assert gauges[("calsync_channels", (("status", "active"),))] == 2
    expiry = gauges[("calsync_channel_next_expiry_seconds", ())]
    assert abs(expiry - 7 * 86400) < 120  # the granted week, counted on calsync's clock
    assert gauges[("calsync_sync_lag_seconds", ())] == 0
    # The day's quota: every call of the connect and first sync counted, the projection, the interval.
    served = sum(1 for r in emu.requests if r.api_method.startswith("calendar.") and r.status < 400)
    assert gauges[("calsync_quota_calls_today", ())] == served >= 4
    assert gauges[("calsync_quota_projected_calls", ())] >= served
    assert gauges[("calsync_quota_per_day", ())] == rt.settings.quota_per_day
    assert (
        gauges[("calsync_reconcile_interval_seconds", (("calendars", "active"),))]
        == rt.settings.reconcile_every.total_seconds()
    )


def test_sync_lag_is_the_age_of_the_oldest_owed_sync(web: Any, rt: Any, emu: Any) -> None:
    from calsync.store.db import transaction
    from calsync.store.owed import request_calendar_sync
    from tests.push_support import calendar_id_of

    connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    with transaction(rt.sessions) as session:
        request_calendar_sync(session, calendar_id_of(rt, "ann@example.com"), rt.clock.now())
    rt.clock.advance(42)
    lag = [s.value for s in _scrape(web)["calsync_sync_lag_seconds"]]
    assert lag == [42]
    rt.clock.advance(timedelta(days=1).total_seconds())
    assert _scrape(web)["calsync_channel_next_expiry_seconds"][0].value < 6 * 86400


def test_metrics_want_the_metrics_token_when_one_is_set(settings: Settings) -> None:
    """The web tier answers the internet (Google must reach /notifications); its counters and the
    deployment's gauges (accounts, calendars by state) were anyone's to read."""
    guarded = Runtime.create(dataclasses.replace(settings, metrics_token=Secret("scrape-me")))
    try:
        web = create_app(runtime=guarded).test_client()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-me"}):
            refused = web.get("/metrics", headers=headers)
            assert refused.status_code == 401 and b"calsync_" not in refused.data
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        scraped = web.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200 and b"calsync_notifications_total" in scraped.data
    finally:
        guarded.close()
    plain = Runtime.create(settings)
    try:
        assert create_app(runtime=plain).test_client().get("/metrics").status_code == 200  # unset: open
    finally:
        plain.close()
