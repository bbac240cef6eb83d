"""`GET /metrics`: the counters of every web process, plus gauges read from the database at scrape time.

Under several gunicorn processes, the counters are summed from prometheus-client's shared folder
(multiprocess mode, set up by `calsync.web.server`), so a scrape does not depend on which process answers.

The gauges (next channel expiry, sync lag, calendars by state, accounts by status) describe the
whole deployment, not this process, so they are computed from the shared database on each scrape
by a collector bound to this app's runtime.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from calsync.readmodels import overview
from calsync.runtime import Runtime
from calsync.store.db import reading
from calsync.store.states import AccountStatus, ChannelStatus, SyncState
from calsync.web.api_token import bearer_matches
from calsync.web.app import runtime
from calsync.work.quota import outlook

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    expected = runtime().settings.metrics_token
    if expected is not None and not bearer_matches((expected,)):
        # The web tier is reachable from the internet (Google must reach /notifications); its
        # counters and the deployment's gauges are for the operator's scraper only.
        return Response(
            "metrics need CALSYNC_METRICS_TOKEN as a bearer token\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="calsync metrics"'},
        )
    database = CollectorRegistry(auto_describe=False)
    database.register(DatabaseCollector(runtime()))
    body = generate_latest(_counters()) + generate_latest(database)
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0], content_type=CONTENT_TYPE_LATEST)


def _counters() -> CollectorRegistry:
    """This process's registry, or every process's counters in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class DatabaseCollector(Collector):
    """Gauges computed from the shared database when scraped."""

    def __init__(self, rt: Runtime) -> None:
        self.runtime = rt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("calsync_database_up", "1 when the database answered this scrape")
        try:
            families = list(self._families())
        except SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        now = self.runtime.clock.now()
        with reading(self.runtime.sessions) as session:
            read = overview.gauges(session)
            quota = outlook(session, self.runtime.settings, now)

        expiry = GaugeMetricFamily(
            "calsync_channel_next_expiry_seconds", "Seconds until the soonest active channel expires (absent when none)"
        )
        if read.next_channel_expiry is not None:
            expiry.add_metric([], (read.next_channel_expiry - now).total_seconds())
        yield expiry

        lag = GaugeMetricFamily(
            "calsync_sync_lag_seconds", "Age of the oldest owed sync (0 when none is owed or it is not due yet)"
        )
        oldest_owed = read.oldest_owed_sync
        lag.add_metric([], max(0.0, (now - oldest_owed).total_seconds()) if oldest_owed is not None else 0.0)
        yield lag

        calendars = GaugeMetricFamily("calsync_calendars", "Calendars by sync state", labels=["sync_state"])
        _fill(calendars, read.calendars_by_state, tuple(SyncState))
        yield calendars

        accounts = GaugeMetricFamily("calsync_accounts", "Accounts by status", labels=["status"])
        _fill(accounts, read.accounts_by_status, tuple(AccountStatus))
        yield accounts

        chans = GaugeMetricFamily("calsync_channels", "Push channels by status", labels=["status"])
        _fill(chans, read.channels_by_status, tuple(ChannelStatus))
        yield chans

        calls = GaugeMetricFamily("calsync_quota_calls_today", "Google API calls in the current quota day (Pacific)")
        calls.add_metric([], quota.calls_today)
        yield calls
        projected = GaugeMetricFamily(
            "calsync_quota_projected_calls", "Calls the quota day is projected to end with, under the current plan"
        )
        projected.add_metric([], quota.projected)
        yield projected
        budget = GaugeMetricFamily("calsync_quota_per_day", "CALSYNC_QUOTA_PER_DAY (0: no daily limit)")
        budget.add_metric([], quota.budget)
        yield budget
        interval = GaugeMetricFamily(
            "calsync_reconcile_interval_seconds",
            "The current reconcile interval: for a calendar that changed lately, and for one quiet for a week",
            labels=["calendars"],
        )
        interval.add_metric(["active"], quota.interval_busy)
        interval.add_metric(["quiet"], quota.interval_idle)
        yield interval


def _fill(family: GaugeMetricFamily, found: Mapping[str, int], known: tuple[str, ...]) -> None:
    """One sample per known label value (zeros included, so dashboards see them), plus any other."""
    counts = dict.fromkeys(known, 0)
    counts.update(found)
    for key, value in sorted(counts.items()):
        family.add_metric([key], value)
