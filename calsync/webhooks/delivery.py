"""Sending the outbox: the worker fills it from the feed, claims due deliveries with a lease, POSTs
them, and records each attempt.

No transaction is held while a subscriber is called: a claim commits a lease, the HTTP exchange runs,
and a second transaction records the outcome (only if the lease is still ours). First attempts leave
in seq order per subscription; retries never hold newer messages back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import exists, or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, aliased

from calsync.clock import parse_retry_after, rfc3339, utc
from calsync.errors import ConfigError, InvalidSubscription, UnsafeURLError
from calsync.feed.reads import feed_rows
from calsync.metrics import DELIVERIES
from calsync.runtime import Runtime
from calsync.store.db import is_postgres, rows_affected, transaction, when_back
from calsync.store.jsontext import dumps_unicode, printable
from calsync.store.liveness import claiming_as, lease_is_free, stale_before
from calsync.store.models import (
    Calendar,
    Change,
    Delivery,
    DeliveryAttempt,
    WebhookSubscription,
)
from calsync.store.states import DeliveryState, SubscriptionStatus
from calsync.wakeup import RELOOK_SECONDS
from calsync.webhooks import payload
from calsync.webhooks.outbox import fill, still_behind
from calsync.webhooks.safety import resolve_target
from calsync.webhooks.schedule import retry_delay
from calsync.webhooks.signing import signature_headers
from calsync.webhooks.slack import lifecycle_message, slack_message
from calsync.webhooks.subscriptions import disable, signing_secrets
from calsync.webhooks.transport import TransportError, exchange

log = logging.getLogger(__name__)

EXCERPT_BYTES = 500


def run_due_deliveries(runtime: Runtime, owner: str, limit: int = 50) -> int:
    """Queue what the feed has for the subscriptions, then attempt up to `limit` due deliveries;
    returns the number of attempts made."""
    with transaction(runtime.sessions) as session:
        if not fill(session, runtime.clock.now()) and still_behind(session):
            # Nothing queued, and a subscription is behind all the same: another worker's fill held it
            # (PostgreSQL's SKIP LOCKED), and queues only the rows it read before the change's wake-up
            # that was spent here; or a whole batch of rows it does not take, with more after them.
            runtime.wakeup.wake_in(RELOOK_SECONDS)
    made = 0
    while made < limit:
        jobs = _claim(runtime, owner, limit - made)
        if not jobs:
            break
        for n, job in enumerate(jobs):
            if n and not _lease_outlasts_an_attempt(runtime, job):
                break  # the rest of the batch is left to its lease's end, then claimed again: never sent twice
            _attempt(runtime, owner, job)
            made += 1
    return made


def release_held(session: Session, owner: str) -> int:
    """The deliveries leased to `owner`, given back untouched, for a worker thread whose pass failed
    (`calsync.work.leases.release_held`): sent again if their attempt was not recorded."""
    released = session.execute(
        update(Delivery)
        .where(Delivery.lease_owner == owner, Delivery.state == DeliveryState.PENDING)
        .values(lease_owner=None, lease_until=None)
    )
    return rows_affected(released)


def _lease_outlasts_an_attempt(runtime: Runtime, job: _Job) -> bool:
    """Whether the job's lease holds through one more attempt (its timeout, and as much again for a
    slow answer). A batch sent to an endpoint that times out outlived its lease: another worker took
    the rest, and sent each again, the older message after the newer."""
    return runtime.clock.now() + 2 * runtime.settings.webhook_timeout < job.lease_until


@dataclass(frozen=True)
class _Job:
    """What one attempt needs, read in the claim so the HTTP call runs without a transaction."""

    delivery_id: int
    subscription_id: str
    message_id: str
    url: str
    body: str
    keys: list[str]
    lease_until: datetime


@dataclass(frozen=True)
class _Outcome:
    sent_at: datetime
    status: int | None = None
    latency_ms: float | None = None
    excerpt: str | None = None
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _claim(runtime: Runtime, owner: str, limit: int) -> list[_Job]:
    """Lease the due deliveries: retries, and per subscription its oldest untried message only."""
    now = runtime.clock.now()
    older = aliased(Delivery)
    older_untried = exists().where(
        older.subscription_id == Delivery.subscription_id,
        older.state == DeliveryState.PENDING,
        older.attempts == 0,
        older.change_seq < Delivery.change_seq,
    )
    with transaction(runtime.sessions) as session:
        claiming_as(session, owner, now)
        query = (
            select(Delivery)
            .join(WebhookSubscription, WebhookSubscription.id == Delivery.subscription_id)
            .where(
                Delivery.state == DeliveryState.PENDING,
                Delivery.next_attempt_at <= now,
                WebhookSubscription.status == SubscriptionStatus.ACTIVE,
                lease_is_free(Delivery.lease_owner, Delivery.lease_until, now, stale_before(now)),
                or_(Delivery.attempts > 0, ~older_untried),
            )
            .order_by(Delivery.next_attempt_at, Delivery.change_seq)
            .limit(limit)
        )
        if is_postgres(session):
            query = query.with_for_update(skip_locked=True, of=Delivery)
        deliveries = list(session.scalars(query))
        if not deliveries:
            return []
        until = now + runtime.settings.lease
        for delivery in deliveries:
            delivery.lease_owner = owner
            delivery.lease_until = until
        return _jobs(session, runtime, deliveries, now, until)


UNREADABLE_SECRET = (
    "its signing secret cannot be decrypted with CALSYNC_TOKEN_KEY (the key that encrypted it was removed):"
    " rotate its secret, then resume it"
)


def _jobs(
    session: Session, runtime: Runtime, deliveries: list[Delivery], now: datetime, lease_until: datetime
) -> list[_Job]:
    subs = {
        s.id: s
        for s in session.scalars(
            select(WebhookSubscription).where(WebhookSubscription.id.in_({d.subscription_id for d in deliveries}))
        )
    }
    rows = session.execute(
        feed_rows()
        .add_columns(Calendar.summary, Calendar.time_zone)
        .where(Change.seq.in_({d.change_seq for d in deliveries}))
    ).all()
    changes = {row[0].seq: row for row in rows}
    keys: dict[str, list[str]] = {}
    for sub_id, sub in subs.items():
        try:
            keys[sub_id] = signing_secrets(sub, runtime.cipher, now)
        except ConfigError as err:
            # Its secret was encrypted with a key since removed from CALSYNC_TOKEN_KEY. Unsigned it
            # cannot be sent; left as it was, it failed the whole batch, every pass, for every
            # subscription. Disabled alone, with the way back in its reason.
            log.warning("webhook subscription %s disabled: %s", sub_id, err)
            disable(session, sub, UNREADABLE_SECRET, now)
    jobs = []
    for delivery in deliveries:
        sub = subs[delivery.subscription_id]
        if sub.id not in keys:
            continue
        change, email, google_id, summary, time_zone = changes[delivery.change_seq]
        if sub.format == "slack" and change.kind is None:
            body = dumps_unicode(lifecycle_message(change.type, email, (change.after or {}).get("summary")))
        elif sub.format == "slack":
            body = dumps_unicode(
                slack_message(
                    change.kind,
                    list(change.fields or []),
                    change.before,
                    change.after,
                    calendar_name=summary or google_id,
                    time_zone=time_zone,
                    event_id=change.event_id,
                )
            )
        else:
            body = payload.encode(payload.message(change, email, google_id))
        jobs.append(_Job(delivery.id, sub.id, delivery.message_id, sub.url, body, keys[sub.id], lease_until))
    return jobs


def _attempt(runtime: Runtime, owner: str, job: _Job) -> None:
    """One POST; the address is checked again now (DNS may have changed since the subscription)."""
    settings = runtime.settings
    sent_at = runtime.clock.now()
    try:
        target = resolve_target(job.url, settings)
        headers = {"Content-Type": "application/json", **signature_headers(job.message_id, sent_at, job.body, job.keys)}
        resp = exchange(
            target, "POST", headers=headers, body=job.body.encode(), timeout=settings.webhook_timeout.total_seconds()
        )
    except (UnsafeURLError, InvalidSubscription) as err:
        # InvalidSubscription: a URL stored before a stricter check no longer passes it. Refused like
        # an unsafe one: escaping, it recorded nothing and its delivery, the oldest, came first in
        # every claim, holding the rest of the batch (other subscriptions') unsent.
        outcome = _Outcome(sent_at, error=f"not sent: {err}", refused=True)
    except TransportError as err:
        outcome = _Outcome(sent_at, latency_ms=err.latency_ms, error=str(err))
    else:
        error = None
        if 300 <= resp.status < 400:
            error = f"HTTP {resp.status} redirect to {resp.headers.get('Location', '?')} (redirects are not followed)"
        elif not 200 <= resp.status < 300:
            error = f"HTTP {resp.status}"
        outcome = _Outcome(
            sent_at,
            status=resp.status,
            latency_ms=resp.latency_ms,
            excerpt=_excerpt(resp.body),
            error=error,
            retry_after=parse_retry_after(resp.headers.get("Retry-After"), sent_at),
        )
    try:
        _record(runtime, owner, job, outcome)
    except (OperationalError, InterfaceError):
        raise
    except DBAPIError as err:
        # The database refused what the endpoint answered. Recorded without it, the attempt still
        # counts towards the retry limit, and the messages behind it go on.
        log.warning("delivery %s: attempt not recordable as is (%s); recorded without the answer", job.delivery_id, err)
        bare = replace(outcome, excerpt=None, error=f"answer not recordable; error was {ascii(outcome.error)[:300]}")
        _record(runtime, owner, job, bare)


def _record(runtime: Runtime, owner: str, job: _Job, outcome: _Outcome) -> None:
    """The attempt and its consequences; once the database is back if it is away (the lease that
    holds the message goes with it)."""
    when_back(
        runtime.sessions,
        lambda session: _write(session, runtime, owner, job, outcome),
        give_up_after=runtime.settings.lease,
    )


def _write(session: Session, runtime: Runtime, owner: str, job: _Job, outcome: _Outcome) -> None:
    now = runtime.clock.now()
    delivery = session.get(Delivery, job.delivery_id, with_for_update=True)
    if delivery is None:  # the subscription was deleted meanwhile
        return
    session.add(
        DeliveryAttempt(
            delivery_id=delivery.id,
            attempted_at=outcome.sent_at,
            status_code=outcome.status,
            latency_ms=outcome.latency_ms,
            response_excerpt=outcome.excerpt,
            error=outcome.error,
        )
    )
    if delivery.lease_owner != owner:
        log.warning(
            "delivery %s: lease lost to %s; attempt logged, state left to the new owner",
            delivery.id,
            delivery.lease_owner,
        )
        DELIVERIES.labels("lease_lost").inc()
        return
    sub = session.get(WebhookSubscription, delivery.subscription_id, with_for_update=True)
    assert sub is not None  # the delivery's foreign key cascades on delete
    delivery.attempts += 1
    delivery.last_status = outcome.status
    delivery.last_error = outcome.error
    delivery.lease_owner = None
    delivery.lease_until = None
    DELIVERIES.labels(_label(outcome)).inc()
    if outcome.ok:
        delivery.state = DeliveryState.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        sub.last_success_at = now
        sub.failing_since = None
    elif outcome.status == 410:
        _fail(delivery)
        reason = f"the endpoint answered 410 Gone at {rfc3339(now)}"
        log.warning("webhook %s disabled: %s", sub.id, reason)
        disable(session, sub, reason, now)
    else:
        _failed_attempt(session, runtime, sub, delivery, outcome, now)


def _failed_attempt(
    session: Session, runtime: Runtime, sub: WebhookSubscription, delivery: Delivery, outcome: _Outcome, now: datetime
) -> None:
    """Schedule the retry (or give up), and disable a subscription that has failed for too long."""
    failing_since = utc(sub.failing_since) or now
    sub.failing_since = failing_since
    delay = (
        None
        if sub.status == SubscriptionStatus.DISABLED
        else retry_delay(delivery.attempts, status=outcome.status, retry_after=outcome.retry_after)
    )
    if delay is None:
        _fail(delivery)
        DELIVERIES.labels("failed").inc()
    else:
        delivery.next_attempt_at = now + timedelta(seconds=delay)
    failing_for = now - failing_since
    if sub.status != SubscriptionStatus.DISABLED and failing_for >= runtime.settings.webhook_disable_after:
        since = f"since {rfc3339(sub.last_success_at)}" if sub.last_success_at else "ever"
        reason = (
            f"no successful delivery {since}: every attempt failed for {failing_for / timedelta(days=1):.1f} days "
            f"(last: {outcome.error})"
        )
        log.warning("webhook %s disabled: %s", sub.id, reason)
        disable(session, sub, reason, now)


def _fail(delivery: Delivery) -> None:
    delivery.state = DeliveryState.FAILED
    delivery.next_attempt_at = None


def _label(outcome: _Outcome) -> str:
    if outcome.ok:
        return "delivered"
    if outcome.refused:
        return "refused"
    if outcome.status == 410:
        return "gone"
    return "error" if outcome.status is None else "http_error"


def _excerpt(body: bytes) -> str:
    """The answer's first bytes as text any engine stores: bytes that are not UTF-8 and NUL escaped."""
    return printable(body[:EXCERPT_BYTES].decode("utf-8", errors="backslashreplace"))[:EXCERPT_BYTES]
