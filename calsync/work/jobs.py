"""The worker's jobs: sync one calendar, refresh one account's calendar list.

Each job gets a Claim (ids and the lease owner, never ORM objects), uses short sessions, and is
idempotent: running it twice costs at most a few calls, never a duplicate change. Errors are
sorted here into backoff (rate limits, 5xx), long retries (forbidden), re-consent (dead grant),
"not yet" (no room in the quota budget: put off, not counted as a failure) and "someone else has
it" (lease lost); the broad `except` is only at the top of a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from calsync.accounts.connected import mark_reauth_required
from calsync.clock import at_least, utc
from calsync.errors import (
    AuthRevoked,
    ChannelNotWanted,
    GoogleApiError,
    GoogleNotFound,
    LeaseLost,
    QuotaWait,
    TransientGoogleError,
)
from calsync.google.calendar import PUSH_NOT_SUPPORTED
from calsync.push.channels import (
    live_channels,
    needs_new_channel,
    replace_channel,
    stop_channel,
    stop_channels_locally,
    stop_leftover_channels,
)
from calsync.runtime import Runtime
from calsync.store.db import transaction, when_back
from calsync.store.models import Account, Calendar
from calsync.store.owed import owe_list_refresh, owe_sync
from calsync.store.states import AccountStatus, ChannelKind, Priority, SyncState
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from calsync.sync.state import Activity
from calsync.work.backoff import backoff_delay
from calsync.work.leases import (
    FINISHED,
    Claim,
    account_list_error_count,
    calendar_error_count,
    defer_account_list,
    defer_calendar,
    fail_account_list,
    fail_calendar,
    finish_account_list,
    finish_calendar,
    finish_params,
    release_account_list,
    release_calendar,
)
from calsync.work.quota import next_reconcile

log = logging.getLogger(__name__)

# Asked again after this long: Google may come to support push for a calendar it refused.
WATCH_REFUSED_RETRY = timedelta(days=1)


def run_calendar_job(runtime: Runtime, claim: Claim) -> None:
    """Renew the calendar's channel if due, sync it, and record the outcome on its queue fields."""
    try:
        _sync_with_channel(runtime, claim)
    except LeaseLost:
        log.info("calendar %s: lease lost to another worker; dropping the job", claim.id)
    except QuotaWait as err:
        with transaction(runtime.sessions) as session:
            defer_calendar(session, claim, runtime.clock.now() + at_least(err.wait))
        runtime.wakeup.wake_in(err.wait)
        log.info("calendar %s: %s; put off", claim.id, err)
    except AuthRevoked as err:
        _account_revoked(runtime, _account_of(runtime, claim.id), str(err))
        with transaction(runtime.sessions) as session:
            release_calendar(session, claim)
    except TransientGoogleError as err:
        _fail(runtime, claim, err, state=SyncState.BACKOFF, retry_after=err.retry_after)
    except GoogleNotFound as err:
        # Gone from Google: the calendar list will say so; until then, do not keep asking.
        _request_list_refresh(runtime, _account_of(runtime, claim.id))
        _fail(runtime, claim, err, state=SyncState.ERROR, floor=runtime.settings.reconcile_every)
    except GoogleApiError as err:
        _fail(runtime, claim, err, state=SyncState.ERROR, floor=runtime.settings.reconcile_every)
    except Exception as err:
        log.exception("calendar %s: sync failed unexpectedly", claim.id)
        _fail(runtime, claim, err, state=SyncState.BACKOFF)


def run_list_job(runtime: Runtime, claim: Claim) -> None:
    """Keep the account's calendar-list channel alive, refresh the list, stop removed calendars' channels."""
    try:
        _refresh_with_channel(runtime, claim)
    except LeaseLost:
        log.info("account %s: calendar-list lease lost to another worker; dropping the job", claim.id)
    except QuotaWait as err:
        with transaction(runtime.sessions) as session:
            defer_account_list(session, claim, runtime.clock.now() + at_least(err.wait))
        runtime.wakeup.wake_in(err.wait)
    except AuthRevoked as err:
        _account_revoked(runtime, claim.id, str(err))
        with transaction(runtime.sessions) as session:
            release_account_list(session, claim)
    except Exception as err:
        if not isinstance(err, GoogleApiError):
            log.exception("account %s: calendar-list refresh failed unexpectedly", claim.id)
        transient = isinstance(err, TransientGoogleError) or not isinstance(err, GoogleApiError)
        retry_after, error = getattr(err, "retry_after", None), describe(err)

        def record(session: Session) -> float:
            count = account_list_error_count(session, claim.id) + 1
            delay = backoff_delay(count, retry_after=retry_after)
            if not transient:
                delay = max(delay, runtime.settings.reconcile_every.total_seconds())
            fail_account_list(session, claim, runtime.clock.now(), delay=delay, error=error)
            return delay

        record_failure(runtime, record)


def record_failure(runtime: Runtime, record: Callable[[Session], float]) -> float:
    """Record a failed job (which releases its lease), waiting for the database if it is away; `record`
    says in how many seconds the job is tried again, and this process looks then. Those seconds.

    A job the database failed under could record nothing while it was away; left at that, its
    calendar stayed leased for the whole lease period after the return, and every change made
    meanwhile waited that long. Retried until the lease would have run out anyway, the release
    lands within moments of the database's return.
    """
    delay = when_back(runtime.sessions, record, give_up_after=runtime.settings.lease)
    runtime.wakeup.wake_in(delay)
    return delay


def describe(err: BaseException) -> str:
    """What an operator needs in `last_error`: the kind, Google's status and reason, the message."""
    status, reason = getattr(err, "status", None), getattr(err, "reason", None)
    detail = " ".join(str(x) for x in (status, reason) if x)
    return f"{type(err).__name__}" + (f" ({detail})" if detail else "") + f": {err}"


# Helpers ---------------------------------------------------------------------------------------
def _watch(
    runtime: Runtime, *, calendar_id: int | None = None, account_id: int | None = None, priority: Priority
) -> bool:
    """A new channel (the old ones stopped); False when Google refused it, and the job goes on.

    The watch came before the sync, and its error failed the job: a calendar Google will not watch
    (`pushNotSupportedForRequestedResource`, as for its public holiday calendars) or a long run of
    errors on `watch` alone stopped every sync of it, notifications' and reconciliations' alike, the
    mirror frozen. Without a channel the reconciliation still syncs it, and the next job watches
    again, unless Google said it never will (`PUSH_NOT_SUPPORTED`): that is remembered, and no watch
    is asked for again until `WATCH_REFUSED_RETRY` has passed. A dead grant still fails the job: the
    sync would meet it too, and it must be recorded.
    """
    try:
        replace_channel(runtime, calendar_id=calendar_id, account_id=account_id, priority=priority)
    except AuthRevoked:
        raise
    except ChannelNotWanted as err:
        log.info("%s", err)
        return False
    except GoogleApiError as err:
        what = f"calendar {calendar_id}" if calendar_id is not None else f"the calendar list of account {account_id}"
        log.warning("%s: Google refused a channel, syncing without one: %s", what, describe(err))
        if calendar_id is not None and err.reason == PUSH_NOT_SUPPORTED:
            with transaction(runtime.sessions) as session:
                session.execute(
                    update(Calendar).where(Calendar.id == calendar_id).values(watch_refused_at=runtime.clock.now())
                )
        return False
    return True


def _sync_with_channel(runtime: Runtime, claim: Claim) -> None:
    settings = runtime.settings
    start = claim.calendar
    priority = claim.priority
    renewal = min(priority, Priority.RENEWAL)  # a channel's calls go before first syncs and reconciliations
    if start is not None and start.channel_ok:
        baseline_before, channel_ok = start.baseline_done, True
    else:
        # The claim's hint compares expiries with the window alone; a channel Google granted for less
        # than the window is not due until halfway through its life (`renewal_due_at`).
        with transaction(runtime.sessions) as session:
            now = runtime.clock.now()
            done, refused_at = session.execute(
                select(Calendar.baseline_done, Calendar.watch_refused_at).where(Calendar.id == claim.id)
            ).one()
            baseline_before = bool(done)
            refused = utc(refused_at)
            channel_ok = (
                not needs_new_channel(live_channels(session, calendar_id=claim.id), now, settings.renew_before)
                or (refused is not None and refused > now - WATCH_REFUSED_RETRY)  # Google will not watch it
            )
    if baseline_before and not channel_ok:
        # New channel first, old one stopped; the sync below covers the seam between them.
        _watch(runtime, calendar_id=claim.id, priority=renewal)
        start = None  # the watch may have refreshed the account's token: read it again
        priority = renewal  # the sync across the seam belongs to the renewal
    if baseline_before:
        # Nothing follows the sync: the lease is released and owed work settled with its last page.
        def finish(now: datetime, activity: Activity) -> tuple[dict[str, Any], dict[str, Any]]:
            reconcile = _reconcile_in(runtime, claim, now, activity)
            return FINISHED, finish_params(claim, now, reconcile, settings.sync_min_interval)

        sync_calendar(runtime, claim.id, lease_owner=claim.owner, start=start, finish=finish, priority=priority)
        return
    sync_calendar(runtime, claim.id, lease_owner=claim.owner, start=start, priority=priority)
    # The first full sync is the baseline; only now is the calendar worth watching (at once, not
    # after the rest of a queue of first syncs). Changes made between the last page and the watch
    # are caught by one more (incremental) sync, owed like a notification's.
    watched = _watch(runtime, calendar_id=claim.id, priority=renewal)
    with transaction(runtime.sessions) as session:
        now = runtime.clock.now()
        if watched:
            session.execute(update(Calendar).where(Calendar.id == claim.id).values(**owe_sync(now)))
        runtime.wakeup.notify_after_commit(session)
        if not finish_calendar(session, claim, now, _reconcile_in(runtime, claim, now)):
            log.info("calendar %s: synced, but the lease had passed to another worker", claim.id)


def _refresh_with_channel(runtime: Runtime, claim: Claim) -> None:
    settings = runtime.settings
    with transaction(runtime.sessions) as session:
        renew = needs_new_channel(
            live_channels(session, account_id=claim.id, kind=ChannelKind.CALENDAR_LIST),
            runtime.clock.now(),
            settings.renew_before,
        )
    if renew:
        # Watch first: the refresh below then covers everything since the watch began.
        _watch(runtime, account_id=claim.id, priority=min(claim.priority, Priority.RENEWAL))
    result = refresh_calendar_list(runtime, claim.id, claim.priority, lease_owner=claim.owner)
    if result.removed:
        with transaction(runtime.sessions) as session:
            doomed = [c.id for cal_id in result.removed for c in live_channels(session, calendar_id=cal_id)]
        for channel_id in doomed:
            stop_channel(runtime, channel_id, priority=Priority.NOTIFICATION)
    try:  # stops put off earlier, or cut short by a crash: a cleanup, never the refresh's failure
        stop_leftover_channels(runtime, claim.id)
    except (OperationalError, InterfaceError):
        raise  # the database away: the job's own handling
    except Exception:
        log.exception("account %s: stopping leftover channels failed; tried again at the next refresh", claim.id)
    with transaction(runtime.sessions) as session:
        now = runtime.clock.now()
        if result.added:
            session.execute(
                update(Calendar)
                .where(Calendar.id.in_(list(result.added)), Calendar.due_at.is_(None))
                .values(due_at=now)
            )
            runtime.wakeup.notify_after_commit(session)
        finish_account_list(session, claim, now, _reconcile_in(runtime, claim, now))


def _reconcile_in(runtime: Runtime, claim: Claim, now: datetime, activity: Activity | None = None) -> timedelta:
    """When the safety net next runs for this calendar (or calendar list): spread and stretched."""
    if activity is None:
        activity = Activity(claim.last_changed_at, None)
    seconds = next_reconcile(runtime, claim.id, now, activity.last_changed_at, claim.created_at, activity.activity)
    return timedelta(seconds=seconds)


def _fail(
    runtime: Runtime,
    claim: Claim,
    err: BaseException,
    *,
    state: SyncState,
    retry_after: float | None = None,
    floor: timedelta = timedelta(0),
) -> None:
    def record(session: Session) -> float:
        count = calendar_error_count(session, claim.id) + 1
        delay = max(floor.total_seconds(), backoff_delay(count, retry_after=retry_after))
        fail_calendar(session, claim, runtime.clock.now(), delay=delay, state=state, error=describe(err))
        return delay

    delay = record_failure(runtime, record)
    log.warning("calendar %s: %s; retry in %.1fs", claim.id, describe(err), delay)


def _account_revoked(runtime: Runtime, account_id: int | None, reason: str) -> None:
    """The grant is dead: the account says so, and its channels stop (Google calls would fail anyway)."""
    if account_id is None:
        return
    with transaction(runtime.sessions) as session:
        now = runtime.clock.now()
        status = session.scalar(select(Account.status).where(Account.id == account_id))
        if status == AccountStatus.ACTIVE:
            mark_reauth_required(session, account_id, reason, now)
        stopped = stop_channels_locally(session, now=now, account_id=account_id)
    log.warning("account %s: grant revoked (%s); %d channel(s) stopped", account_id, reason, stopped)


def _request_list_refresh(runtime: Runtime, account_id: int | None) -> None:
    if account_id is None:
        return
    with transaction(runtime.sessions) as session:
        now = runtime.clock.now()
        session.execute(update(Account).where(Account.id == account_id).values(**owe_list_refresh(now, at_once=True)))
        runtime.wakeup.notify_after_commit(session)


def _account_of(runtime: Runtime, calendar_id: int) -> int | None:
    with runtime.sessions() as session:
        return session.scalar(select(Calendar.account_id).where(Calendar.id == calendar_id))
