"""Shared helpers of the webhook tests: settings for a loopback subscriber, calendars and changes
written through the real append_changes, subscriptions made through the real register()."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import (
    Account,
    Calendar,
    Change,
    Delivery,
    DeliveryAttempt,
    WebhookSubscription,
)
from calsync.webhooks.delivery import run_due_deliveries
from calsync.webhooks.outbox import fill
from calsync.webhooks.subscriptions import parse_spec, register

OWNER = "test-worker"


def loopback_settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        webhook_allow_http=True,
        webhook_allow_private=True,
        webhook_timeout=timedelta(seconds=1),
        webhook_verify_timeout=timedelta(seconds=0.5),
    )


def make_runtime(settings: Settings) -> Runtime:
    start = datetime.now(UTC).replace(microsecond=0)
    return Runtime.create(settings, clock=FrozenClock(start))


def clock(runtime: Runtime) -> FrozenClock:
    assert isinstance(runtime.clock, FrozenClock)
    return runtime.clock


def make_calendar(
    runtime: Runtime,
    google_id: str = "team@group.calendar.google.com",
    *,
    email: str = "alice@example.com",
    summary: str = "Team calendar",
    time_zone: str = "Europe/Berlin",
) -> int:
    """An account (if new) and one of its calendars, as the sync engine would have stored them."""
    with transaction(runtime.sessions) as session:
        account = session.scalars(select(Account).where(Account.email == email)).one_or_none()
        if account is None:
            account = Account(email=email, credentials=runtime.cipher.encrypt_str("{}"), scopes=[])
            session.add(account)
            session.flush()
        cal = Calendar(
            account_id=account.id,
            google_id=google_id,
            summary=summary,
            time_zone=time_zone,
            baseline_done=True,
            sync_state="synced",
        )
        session.add(cal)
        session.flush()
        return cal.id


def event(
    summary: str = "Standup",
    start: str = "2026-12-03T10:00:00+01:00",
    end: str = "2026-12-03T10:30:00+01:00",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": extra.pop("id", "ev1"),
        "status": "confirmed",
        "summary": summary,
        "start": {"dateTime": start, "timeZone": "Europe/Berlin"},
        "end": {"dateTime": end, "timeZone": "Europe/Berlin"},
        **extra,
    }


def write_change(
    runtime: Runtime,
    calendar_id: int,
    kind: str = "updated",
    *,
    event_id: str = "ev1",
    fields: list[str] | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    origin: str = "google",
) -> int:
    """One Change committed through append_changes, as the sync engine (or a write, `origin="api"`)
    writes it, then the worker's pass that queues it for the subscriptions; returns its seq."""
    if kind == "created":
        before, after = None, after or event(id=event_id)
    elif kind == "deleted":
        before, after = before or event(id=event_id), None
    else:
        before = before or event(id=event_id)
        after = after or event(id=event_id, start="2026-12-03T10:30:00+01:00", end="2026-12-03T11:00:00+01:00")
        fields = fields if fields is not None else ["end", "start"]
    with transaction(runtime.sessions) as session:
        change = Change(
            calendar_id=calendar_id,
            event_id=event_id,
            kind=kind,
            fields=fields or [],
            before=before,
            after=after,
            origin=origin,
        )
        append_changes(session, [change], runtime.clock.now())
    fill_outbox(runtime)
    return change.seq


def fill_outbox(runtime: Runtime) -> int:
    """The worker's first step: move the subscriptions' cursors over the feed, queuing deliveries."""
    with transaction(runtime.sessions) as session:
        return fill(session, runtime.clock.now())


def subscribe(runtime: Runtime, url: str, events: list[str] | None = None, **fields: Any) -> tuple[str, str]:
    """A verified subscription made the way the API makes it; returns (id, whsec_ secret)."""
    spec = parse_spec({"url": url, "events": events or ["*"], **fields}, runtime.settings)
    sub, secret = register(runtime, spec)
    return sub.id, secret


def deliver(runtime: Runtime, limit: int = 50) -> int:
    return run_due_deliveries(runtime, OWNER, limit)


def deliveries(runtime: Runtime, sub_id: str) -> list[Delivery]:
    with runtime.sessions() as session:
        return list(
            session.scalars(select(Delivery).where(Delivery.subscription_id == sub_id).order_by(Delivery.change_seq))
        )


def attempts(runtime: Runtime, delivery_id: int) -> list[DeliveryAttempt]:
    with runtime.sessions() as session:
        return list(
            session.scalars(
                select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id).order_by(DeliveryAttempt.id)
            )
        )


def subscription(runtime: Runtime, sub_id: str) -> WebhookSubscription:
    with runtime.sessions() as session:
        sub = session.get(WebhookSubscription, sub_id)
        assert sub is not None
        return sub


def exhaust_all(runtime: Runtime) -> None:
    """Run the worker at each retry time until no delivery is pending (the clock moves)."""
    while True:
        with runtime.sessions() as session:
            due = session.scalar(
                select(Delivery.next_attempt_at)
                .where(Delivery.state == "pending")
                .order_by(Delivery.next_attempt_at)
                .limit(1)
            )
        if due is None:
            return
        clock(runtime).set(max(runtime.clock.now(), due))
        assert deliver(runtime) >= 1


def with_settings(runtime: Runtime, **changes: Any) -> Runtime:
    """The same runtime (database, clock, cipher) under changed settings."""
    return dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, **changes))
