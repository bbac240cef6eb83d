"""Creating, verifying, pausing, disabling and rotating subscriptions on both engines."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from calsync.errors import InvalidSubscription, UnsafeURLError, VerificationFailed
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Delivery, WebhookSubscription
from calsync.webhooks.signing import signature_headers
from calsync.webhooks.subscriptions import (
    disable,
    get_subscription,
    parse_spec,
    rotate_secret,
    set_status,
    signing_secrets,
)
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import (
    clock,
    deliveries,
    make_calendar,
    subscribe,
    with_settings,
    write_change,
)


def count_subscriptions(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookSubscription)) or 0)


def test_a_verified_endpoint_becomes_an_active_subscription(runtime: Runtime, receiver: Receiver) -> None:
    sub_id, secret = subscribe(runtime, receiver.url, ["event.updated"], calendars=["team@group"])
    with runtime.sessions() as session:
        sub = get_subscription(session, sub_id)
        assert (sub.status, sub.events, sub.calendars, sub.format) == (
            "active",
            ["event.updated"],
            ["team@group"],
            "standard",
        )
        assert secret.encode() not in sub.secret  # stored encrypted
        assert runtime.cipher.decrypt_str(sub.secret) == secret
    assert len(receiver.verifications()) == 1


@pytest.mark.parametrize("mode", ["wrong", "status:500", "sleep:2", "redirect"])
def test_a_failed_verification_stores_nothing(runtime: Runtime, receiver: Receiver, mode: str) -> None:
    receiver.verify_mode = mode
    with pytest.raises(VerificationFailed):
        subscribe(runtime, receiver.url)
    assert count_subscriptions(runtime) == 0


def test_an_unsafe_url_stores_nothing_and_calls_nobody(runtime: Runtime, receiver: Receiver) -> None:
    strict = with_settings(runtime, webhook_allow_private=False)
    with pytest.raises(UnsafeURLError, match="loopback"):
        subscribe(strict, receiver.url)
    assert count_subscriptions(runtime) == 0 and receiver.requests == []


def test_slack_subscriptions_skip_the_handshake(runtime: Runtime, receiver: Receiver) -> None:
    subscribe(runtime, receiver.url, format="slack")
    assert receiver.verifications() == [] and count_subscriptions(runtime) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://example.com/h", "events": ["event.moved"]}, "events"),
        ({"url": "https://example.com/h", "events": []}, "events"),
        ({"url": "https://example.com/h", "events": "event.created"}, "events"),
        ({"url": "https://example.com/h"}, "events"),
        ({"events": ["*"]}, "url"),
        ({"url": "https://example.com/h", "events": ["*"], "format": "xml"}, "format"),
        ({"url": "https://example.com/h", "events": ["*"], "calendars": "x"}, "calendars"),
        ({"url": "https://example.com/h", "events": ["*"], "colour": "red"}, "colour"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, object], field: str) -> None:
    from calsync.config import Settings

    with pytest.raises(InvalidSubscription) as info:
        parse_spec(body, Settings(database_url="sqlite://"))
    assert info.value.field == field


def test_resume_re_enables_a_disabled_subscription(runtime: Runtime, receiver: Receiver) -> None:
    sub_id, _ = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:
        sub = get_subscription(session, sub_id)
        set_status(sub, "paused")
    with transaction(runtime.sessions) as session:
        sub = get_subscription(session, sub_id)
        assert sub.status == "paused"
        disable(session, sub, "testing", runtime.clock.now())
    with transaction(runtime.sessions) as session:
        sub = get_subscription(session, sub_id)
        assert (sub.status, sub.disabled_reason) == ("disabled", "testing")
        set_status(sub, "active")
    with runtime.sessions() as session:
        sub = get_subscription(session, sub_id)
        assert (sub.status, sub.disabled_reason, sub.failing_since) == ("active", None, None)


def test_disabling_stops_waiting_deliveries_but_keeps_them(runtime: Runtime, receiver: Receiver) -> None:
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, make_calendar(runtime))
    with transaction(runtime.sessions) as session:
        assert disable(session, get_subscription(session, sub_id), "gone", runtime.clock.now()) == 1
    (delivery,) = deliveries(runtime, sub_id)
    assert delivery.state == "failed" and "subscription disabled" in (delivery.last_error or "")


def test_rotation_signs_with_both_secrets_until_the_grace_ends(runtime: Runtime, receiver: Receiver) -> None:
    sub_id, old = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:
        new = rotate_secret(runtime.cipher, get_subscription(session, sub_id), runtime.clock.now(), 3600)
    assert new != old and new.startswith("whsec_")
    with runtime.sessions() as session:
        keys = signing_secrets(get_subscription(session, sub_id), runtime.cipher, runtime.clock.now())
    assert keys == [new, old]
    headers = signature_headers("msg_x", runtime.clock.now(), "{}", keys)
    Webhook(old).verify("{}", headers)
    Webhook(new).verify("{}", headers)
    clock(runtime).advance(3601)
    with runtime.sessions() as session:
        assert signing_secrets(get_subscription(session, sub_id), runtime.cipher, runtime.clock.now()) == [new]


def test_deleting_a_subscription_removes_its_deliveries(runtime: Runtime, receiver: Receiver) -> None:
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, make_calendar(runtime))
    with transaction(runtime.sessions) as session:
        session.delete(get_subscription(session, sub_id))
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
