"""Prometheus metrics shared by every part of the process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

GOOGLE_CALLS = Counter("calsync_google_calls_total", "Calls to Google APIs", ["method", "status"])
NOTIFICATIONS = Counter("calsync_notifications_total", "Push notifications received", ["state", "outcome"])
NOTIFICATION_BATCH = Histogram(
    "calsync_notification_batch_size",
    "Notifications committed in one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
SYNCS = Counter("calsync_syncs_total", "Calendar syncs run", ["kind", "outcome"])
CHANGES = Counter("calsync_changes_total", "Changes written to the diff log", ["kind"])
CHANGES_TRIMMED = Counter("calsync_changes_trimmed_total", "Feed rows deleted by retention")
EVENTS_SKIPPED = Counter(
    "calsync_events_skipped_total", "Listed events a sync could not apply (left for the next sync)"
)
SYNC_SECONDS = Histogram("calsync_sync_seconds", "Duration of one calendar sync", ["kind"])
QUOTA_WAITS = Counter(
    "calsync_quota_waits_total", "Jobs put off because the quota budget had no room for them yet", ["priority"]
)
DELIVERIES = Counter("calsync_webhook_deliveries_total", "Outgoing webhook attempts", ["outcome"])
