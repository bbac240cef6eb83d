"""Webhook subscriptions: validated requests, verified endpoints, secrets shown once and kept encrypted.

`register` is what the API and the CLI call: it checks the URL, proves the endpoint belongs to the
subscriber (Strava's hub.challenge), and only then stores anything. The other functions take a
Session and leave the commit to their caller.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from calsync.clock import rfc3339, utc
from calsync.config import Settings
from calsync.errors import ConfigError, InvalidSubscription, NotFoundError
from calsync.runtime import Runtime
from calsync.store.crypto import TokenCipher
from calsync.store.db import rows_affected, transaction
from calsync.store.models import Delivery, WebhookSubscription
from calsync.store.states import ChangeType, DeliveryState, Origin, SubscriptionStatus
from calsync.webhooks.outbox import start_at_head
from calsync.webhooks.safety import check_url, resolve_target
from calsync.webhooks.signing import new_secret
from calsync.webhooks.verification import verify_endpoint

EVENT_TYPES = tuple(t.value for t in ChangeType)
FORMATS = ("standard", "slack")
ORIGINS = tuple(origin.value for origin in Origin)
STATUSES = tuple(status.value for status in SubscriptionStatus)
DEFAULT_GRACE_SECONDS = 24 * 3600.0
MAX_GRACE_SECONDS = 30 * 86400.0
MAX_CALENDARS = 1000


@dataclass(frozen=True)
class SubscriptionSpec:
    """A subscription request whose fields have been checked (the URL's form, not yet its host)."""

    url: str
    events: list[str]
    calendars: list[str] | None
    format: str = "standard"
    verify_token: str | None = None
    origin: Origin | None = None  # only event rows of it (`google`: not the app's own writes)


def parse_spec(data: Any, settings: Settings) -> SubscriptionSpec:
    """Validate a request body; InvalidSubscription names the first bad field."""
    if not isinstance(data, dict):
        raise InvalidSubscription("body", "the body must be a JSON object")
    unknown = sorted(set(data) - {"url", "events", "calendars", "format", "verify_token", "origin"})
    if unknown:
        raise InvalidSubscription(unknown[0], f"{unknown[0]}: unknown field")
    url = data.get("url")
    check_url(url, settings)
    return SubscriptionSpec(
        url=str(url).strip(),
        events=parse_events(data.get("events")),
        calendars=_parse_calendars(data.get("calendars")),
        format=_parse_format(data.get("format")),
        verify_token=_parse_verify_token(data.get("verify_token")),
        origin=_parse_origin(data.get("origin")),
    )


def parse_events(value: Any) -> list[str]:
    """A non-empty list of known event types, or ["*"] (with "event.snapshot" if named too);
    duplicates dropped, order kept."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidSubscription("events", 'events: a non-empty list such as ["event.updated"] or ["*"]')
    bad = [v for v in value if v != "*" and v not in EVENT_TYPES]
    if bad:
        raise InvalidSubscription("events", f"events: unknown event {bad[0]!r}; use {', '.join(EVENT_TYPES)} or *")
    if "*" in value:  # "*" leaves out first-sync snapshots; asked for beside it, they are kept
        snapshot = ChangeType.EVENT_SNAPSHOT.value
        return ["*", snapshot] if snapshot in value else ["*"]
    return list(dict.fromkeys(value))


def register(runtime: Runtime, spec: SubscriptionSpec) -> tuple[WebhookSubscription, str]:
    """Check and verify the endpoint, then store the subscription; returns it and its secret.

    Verification calls the endpoint, so it runs before any transaction is opened: a failed
    check raises (UnsafeURLError, VerificationFailed) and nothing is stored.
    """
    resolve_target(spec.url, runtime.settings)
    if spec.format == "standard":  # a Slack incoming webhook cannot answer a challenge; its URL is its secret
        verify_endpoint(spec.url, runtime.settings, verify_token=spec.verify_token)
    with transaction(runtime.sessions) as session:
        return add_subscription(session, runtime.cipher, spec, runtime.clock.now())


def add_subscription(
    session: Session, cipher: TokenCipher, spec: SubscriptionSpec, now: datetime
) -> tuple[WebhookSubscription, str]:
    """Store an active subscription with a new secret (encrypted); the plain secret is returned once."""
    secret = new_secret()
    sub = WebhookSubscription(
        id="wh_" + secrets.token_hex(8),
        url=spec.url,
        events=spec.events,
        calendars=spec.calendars,
        format=spec.format,
        origin=spec.origin,
        secret=cipher.encrypt_str(secret),
        status=SubscriptionStatus.ACTIVE,
        created_at=now,
    )
    start_at_head(session, sub)
    session.add(sub)
    session.flush()
    return sub, secret


def get_subscription(session: Session, sub_id: str, *, lock: bool = False) -> WebhookSubscription:
    query = select(WebhookSubscription).where(WebhookSubscription.id == sub_id)
    sub = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if sub is None:
        raise NotFoundError(f"no webhook subscription {sub_id!r}")
    return sub


def list_subscriptions(session: Session) -> list[WebhookSubscription]:
    return list(
        session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.created_at, WebhookSubscription.id))
    )


def set_status(sub: WebhookSubscription, status: str) -> WebhookSubscription:
    """Pause or resume; resuming a disabled subscription re-enables it with a clean failure record."""
    if status not in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED):
        raise InvalidSubscription("status", 'status: use "active" or "paused"')
    if status == SubscriptionStatus.ACTIVE:
        sub.disabled_reason = None
        sub.failing_since = None
    sub.status = SubscriptionStatus(status)
    return sub


def disable(session: Session, sub: WebhookSubscription, reason: str, now: datetime) -> int:
    """Stop a subscription: its waiting deliveries become `failed` (kept, replayable). Returns their count."""
    sub.status = SubscriptionStatus.DISABLED
    sub.disabled_reason = reason
    result = session.execute(
        update(Delivery)
        .where(Delivery.subscription_id == sub.id, Delivery.state == DeliveryState.PENDING)
        .values(
            state=DeliveryState.FAILED,
            next_attempt_at=None,
            lease_owner=None,
            lease_until=None,
            last_error=f"not sent: subscription disabled ({reason})",
        )
    )
    return rows_affected(result)


def delete_subscription(session: Session, sub: WebhookSubscription) -> None:
    """Remove the subscription with its deliveries and their attempt log."""
    session.delete(sub)


def rotate_secret(
    cipher: TokenCipher, sub: WebhookSubscription, now: datetime, grace_seconds: float = DEFAULT_GRACE_SECONDS
) -> str:
    """A new secret signs from now on; the current one keeps signing too until the grace ends."""
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise InvalidSubscription("grace_seconds", f"grace_seconds: between 0 and {MAX_GRACE_SECONDS:g}")
    secret = new_secret()
    if grace_seconds > 0:
        sub.previous_secret = sub.secret
        sub.previous_secret_until = now + timedelta(seconds=grace_seconds)
    else:
        sub.previous_secret = None
        sub.previous_secret_until = None
    sub.secret = cipher.encrypt_str(secret)
    return secret


def signing_secrets(sub: WebhookSubscription, cipher: TokenCipher, now: datetime) -> list[str]:
    """The secrets that sign a message sent now: the current one, plus the previous during its grace."""
    keys = [cipher.decrypt_str(sub.secret)]
    until = utc(sub.previous_secret_until)
    if sub.previous_secret is not None and until is not None and now < until:
        with contextlib.suppress(ConfigError):  # encrypted with a key since removed: the new one signs alone
            keys.append(cipher.decrypt_str(sub.previous_secret))
    return keys


def subscription_to_dict(sub: WebhookSubscription) -> dict[str, Any]:
    """The public view of a subscription: never its secret."""
    return {
        "id": sub.id,
        "url": sub.url,
        "events": list(sub.events or []),
        "calendars": list(sub.calendars) if sub.calendars is not None else None,
        "format": sub.format,
        "origin": sub.origin,
        "status": sub.status,
        "disabled_reason": sub.disabled_reason,
        "created_at": rfc3339(sub.created_at),
        "last_success_at": rfc3339(sub.last_success_at),
        "failing_since": rfc3339(sub.failing_since),
        "previous_secret_until": rfc3339(sub.previous_secret_until),
    }


def _parse_calendars(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidSubscription("calendars", "calendars: a list of Google calendar ids, or null for all")
    if len(value) > MAX_CALENDARS:
        raise InvalidSubscription("calendars", f"calendars: at most {MAX_CALENDARS}")
    return list(dict.fromkeys(v.strip() for v in value)) or None


def _parse_format(value: Any) -> str:
    if value is None:
        return "standard"
    if value not in FORMATS:
        raise InvalidSubscription("format", f"format: use {' or '.join(FORMATS)}")
    return str(value)


def _parse_origin(value: Any) -> Origin | None:
    if value is None:
        return None
    if value not in ORIGINS:
        raise InvalidSubscription("origin", f"origin: use {' or '.join(ORIGINS)}, or null for every row")
    return Origin(value)


def _parse_verify_token(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise InvalidSubscription("verify_token", "verify_token: a string of 1 to 200 characters")
    return value
