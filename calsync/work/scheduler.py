"""The scheduler only finds due work and marks it; workers do the work.

Every pass is a few indexed updates, safe to run from any number of worker processes at once:
channels near expiry make their calendar (or calendar list) due, and the whole job — new channel,
stop the old one, sync across the seam — runs under that calendar's lease.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Select,
    case,
    delete,
    exists,
    select,
    update,
)
from sqlalchemy.orm import Session

from calsync.accounts.connect_sessions import purge_expired
from calsync.feed.retention import trim_changes
from calsync.push.channels import renewal_due_at
from calsync.push.intake_sql import trim_log
from calsync.runtime import Runtime
from calsync.store.db import rows_affected
from calsync.store.models import Account, Calendar, Channel, WorkerHeartbeat
from calsync.store.owed import at_most, due_unless_backing_off, list_due_unless_backing_off
from calsync.store.states import AccountStatus, ChannelKind, ChannelStatus, Priority
from calsync.sync.idempotency import prune_keys

HEARTBEAT_RETENTION = timedelta(days=1)
RENEW_RETRY = timedelta(minutes=5)  # after a watch tried for a calendar (or list), before the next renewal


def schedule_renewals(session: Session, now: datetime, renew_before: timedelta) -> int:
    """Make due every calendar or calendar list whose active channel wants its successor
    (`renewal_due_at`), unless a watch for it was tried within `RENEW_RETRY`.

    Reads `ix_channels_status_expires_at`, so the cost follows the number of due channels. A watch
    that failed at renewal leaves the old channel in its window while the sync succeeds: the next
    pass made it due again, one `watch` and one `list` every pass until the channel expired.
    """
    due = [
        r
        for r in session.execute(due_channels(now + renew_before)).all()
        if r.expires_at is not None and renewal_due_at(r.expires_at, r.created_at, renew_before) <= now
    ]
    calendar_ids = {r.calendar_id for r in due if r.kind == ChannelKind.EVENTS and r.calendar_id is not None}
    account_ids = {r.account_id for r in due if r.kind == ChannelKind.CALENDAR_LIST}
    calendar_ids -= _tried_lately(session, ChannelKind.EVENTS, Channel.calendar_id, calendar_ids, now)
    account_ids -= _tried_lately(session, ChannelKind.CALENDAR_LIST, Channel.account_id, account_ids, now)
    return _make_calendars_due(session, calendar_ids, now) + _make_lists_due(session, account_ids, now)


def due_channels(horizon: datetime) -> Select[str, int | None, int, datetime | None, datetime | None]:
    """Active channels expiring by `horizon`: a range read of `ix_channels_status_expires_at`."""
    return select(Channel.kind, Channel.calendar_id, Channel.account_id, Channel.expires_at, Channel.created_at).where(
        Channel.status == ChannelStatus.ACTIVE, Channel.expires_at <= horizon
    )


def _tried_lately(session: Session, kind: ChannelKind, owner: Any, ids: set[int], now: datetime) -> set[int]:
    """Of `ids`, the calendars (or accounts) for which a channel was opened or tried since `RENEW_RETRY`."""
    if not ids:
        return set()
    found = session.scalars(
        select(owner).where(Channel.kind == kind, owner.in_(ids), Channel.created_at > now - RENEW_RETRY).distinct()
    )
    return set(found)


def schedule_missing_channels(session: Session, now: datetime, renew_before: timedelta) -> int:
    """At start: synced calendars and active accounts without a channel that outlasts the window.

    This covers channels that expired while calsync was down; it scans calendars, so it runs once
    per worker start, not every pass (each sync also checks its own calendar's channel).
    """
    horizon = now + renew_before
    live_events = exists().where(
        Channel.calendar_id == Calendar.id,
        Channel.kind == ChannelKind.EVENTS,
        Channel.status == ChannelStatus.ACTIVE,
        Channel.expires_at > horizon,
    )
    calendar_ids = set(
        session.scalars(
            select(Calendar.id)
            .join(Account, Account.id == Calendar.account_id)
            .where(
                Account.status == AccountStatus.ACTIVE,
                Calendar.removed_at.is_(None),
                Calendar.baseline_done.is_(True),
                ~live_events,
            )
        )
    )
    live_list = exists().where(
        Channel.account_id == Account.id,
        Channel.kind == ChannelKind.CALENDAR_LIST,
        Channel.status == ChannelStatus.ACTIVE,
        Channel.expires_at > horizon,
    )
    account_ids = set(session.scalars(select(Account.id).where(Account.status == AccountStatus.ACTIVE, ~live_list)))
    return _make_calendars_due(session, calendar_ids, now) + _make_lists_due(session, account_ids, now)


def expire_lapsed_channels(session: Session, now: datetime) -> int:
    """Channels whose expiry passed while nobody renewed them (or while their stop was put off) are
    just dead: say so."""
    return rows_affected(
        session.execute(
            update(Channel)
            .where(Channel.status.in_((ChannelStatus.ACTIVE, ChannelStatus.STOPPING)), Channel.expires_at <= now)
            .values(status=ChannelStatus.EXPIRED)
        )
    )


def prune(session: Session, runtime: Runtime, now: datetime) -> None:
    """Keep the notification log bounded, forget long-gone workers, day-old idempotency keys and
    connect sessions a week past their expiry, and apply feed retention.

    Retention deletes one small batch per pass, inside the pass's own short transaction: a large
    backlog goes over many passes, and the receiver and running syncs never wait for long.
    """
    trim_log(session, runtime.settings.notification_log_size)
    purge_expired(session, now)
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - HEARTBEAT_RETENTION))
    prune_keys(session, now)
    if runtime.settings.changes_retention:
        trim_changes(session, now - runtime.settings.changes_retention)


# The bounded notification log: ids increase, so keeping the newest `keep` rows is one range delete.
# Also run by the receiver's writer on its driver cursor ({p} is the driver's placeholder).
# Helpers ---------------------------------------------------------------------------------------
def _make_calendars_due(session: Session, ids: set[int], now: datetime) -> int:
    """Due now at the renewal's class. A calendar already due keeps its time but moves up to that
    class: due as a reconciliation, it waited with the reconciliations the budget held back, and its
    channel expired."""
    if not ids:
        return 0
    not_yet = (Calendar.due_at.is_(None)) | (Calendar.due_at > now)
    urgent = Calendar.due_priority > Priority.RENEWAL
    return rows_affected(
        session.execute(
            update(Calendar)
            .where(Calendar.id.in_(ids), not_yet | urgent)
            .values(
                due_at=case((not_yet, due_unless_backing_off(now)), else_=Calendar.due_at),
                due_priority=at_most(Priority.RENEWAL),
            )
        )
    )


def _make_lists_due(session: Session, ids: set[int], now: datetime) -> int:
    """Owed, as a notification's refresh is: a routine refresh is claimed only when the budget admits
    reconciliations and no calendar is waiting, and the list's channel expired meanwhile."""
    if not ids:
        return 0
    return rows_affected(
        session.execute(
            update(Account)
            .where(
                Account.id.in_(ids),
                Account.status == AccountStatus.ACTIVE,
                Account.list_requested <= Account.list_done,  # owed already: the claim will renew it
            )
            .values(list_requested=Account.list_requested + 1, list_due_at=list_due_unless_backing_off(now))
        )
    )
