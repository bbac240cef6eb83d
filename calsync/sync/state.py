"""What a sync run starts from, as the worker's claim reads it.

Its own module, so the claim (in `calsync.work.leases`) can name it without importing the sync run
and, through it, prometheus-client: `calsync web` must set up prometheus-client's multiprocess
mode before anything imports it, and the CLI imports every command's modules first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class CalendarState:
    """What a sync of a claimed calendar starts from, returned by the claim statement itself.

    Read under the lease, so nobody else moves the sync token before the run does; the run need
    not read the row again.
    """

    account_id: int
    google_id: str
    sync_token: str | None
    baseline_done: bool
    credentials: bytes  # as stored: encrypted
    # An active channel outlasts the renewal window (None: not asked, look it up).
    channel_ok: bool | None = None
    # How active the calendar is (calsync.store.activity): a sync that finds a change moves it on.
    created_at: datetime | None = None
    last_changed_at: datetime | None = None
    activity: float | None = None
    # The feed's newest seq when the claim was made, before any listing: writes through calsync
    # committed after it may be newer than what the listing shows (None: read it before listing).
    feed_seq: int | None = None


@dataclass(frozen=True)
class Activity:
    """The calendar's activity as a sync leaves it: what its next reconciliation is planned from."""

    last_changed_at: datetime | None
    activity: float | None
