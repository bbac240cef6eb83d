"""The delivery worker against a real subscriber on loopback, on both engines, with a frozen clock."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from standardwebhooks import Webhook

from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.crypto import new_key
from calsync.store.db import transaction
from calsync.store.liveness import WORKER_ALIVE
from calsync.store.models import Change, Delivery, WebhookSubscription
from calsync.webhooks import delivery
from calsync.webhooks.claimcheck import replay
from calsync.webhooks.delivery import run_due_deliveries
from calsync.webhooks.outbox import FILL_BATCH
from calsync.webhooks.schedule import RETRY_DELAYS
from calsync.webhooks.subscriptions import get_subscription, rotate_secret, set_status
from calsync.webhooks.transport import exchange
from calsync.work.liveness import Heartbeat
from tests.push_support import wait_for
from tests.webhooks.receiver import Answer, Receiver
from tests.webhooks.support import (
    attempts,
    clock,
    deliver,
    deliveries,
    event,
    exhaust_all,
    make_calendar,
    make_runtime,
    subscribe,
    subscription,
    with_settings,
    write_change,
)
from tests.work_support import idle_worker


def next_offset(runtime: Runtime, sub_id: str) -> float:
    (delivery,) = [d for d in deliveries(runtime, sub_id) if d.state == "pending"]
    assert delivery.next_attempt_at is not None
    return (delivery.next_attempt_at - runtime.clock.now()).total_seconds()


def seqs_posted(receiver: Receiver) -> list[int]:
    return [r.json()["data"]["seq"] for r in receiver.posts()]


# Signed messages ---------------------------------------------------------------------------------
def test_a_change_arrives_signed_with_the_whole_change(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    sub_id, secret = subscribe(runtime, receiver.url)
    seq = write_change(runtime, cal)

    assert deliver(runtime) == 1
    (post,) = receiver.posts()
    message = Webhook(secret).verify(post.body, post.headers)
    assert message["type"] == "event.updated"
    assert message["data"]["seq"] == seq and message["data"]["account"] == "alice@example.com"
    assert message["data"]["calendar_id"] == "team@group.calendar.google.com"
    assert message["data"]["fields"] == ["end", "start"] and message["data"]["change"] == "updated"
    assert message["data"]["after"]["start"]["dateTime"] == "2026-12-03T10:30:00+01:00"
    assert post.headers["Webhook-Id"] == f"msg_{sub_id}_{seq}"
    assert post.headers["Content-Type"] == "application/json"

    (delivery,) = deliveries(runtime, sub_id)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert delivery.delivered_at == runtime.clock.now()
    (attempt,) = attempts(runtime, delivery.id)
    assert attempt.status_code == 200 and attempt.response_excerpt == "ok" and attempt.latency_ms is not None
    assert subscription(runtime, sub_id).last_success_at == runtime.clock.now()
    assert deliver(runtime) == 0


def test_during_rotation_both_secrets_verify_the_message(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    sub_id, old = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:
        new = rotate_secret(runtime.cipher, get_subscription(session, sub_id), runtime.clock.now(), 600)
    write_change(runtime, cal)
    deliver(runtime)
    (post,) = receiver.posts()
    assert Webhook(old).verify(post.body, post.headers) == Webhook(new).verify(post.body, post.headers)


def test_slack_subscriptions_get_a_one_line_summary(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    subscribe(runtime, receiver.url, format="slack")
    write_change(runtime, cal)
    deliver(runtime)
    (post,) = receiver.posts()
    assert post.json() == {"text": 'Team calendar: "Standup" moved 10:00 → 10:30 (Thu 3 Dec)'}


def test_an_event_at_the_edge_of_the_calendar_does_not_hold_up_any_delivery(
    runtime: Runtime, receiver: Receiver
) -> None:
    """Year 1 in a zone east of UTC is before year 1 in UTC: building its Slack line raised
    OverflowError inside the claim, which rolled back, and every later pass met it first."""
    cal = make_calendar(runtime)
    slack_id, _ = subscribe(runtime, receiver.url, format="slack")
    plain_id, _ = subscribe(runtime, receiver.url)
    edge = event(id="edge", start="0001-01-01T00:30:00+01:00", end="0001-01-01T01:30:00+01:00")
    write_change(runtime, cal, "created", event_id="edge", after=edge)
    write_change(runtime, cal, event_id="ok")
    for _ in range(3):
        deliver(runtime)
    assert {d.state for sub in (slack_id, plain_id) for d in deliveries(runtime, sub)} == {"delivered"}
    assert len(receiver.posts()) == 4


def test_a_batch_stops_before_its_lease_could_run_out_mid_send(
    runtime: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One claim leases a batch; sent one by one to a slow endpoint it outlived its lease, and another
    worker took the rest and sent each again, the older message after the newer."""
    slow = with_settings(runtime, lease=timedelta(seconds=120), webhook_timeout=timedelta(seconds=15))
    cal = make_calendar(slow)
    subs = [subscribe(slow, receiver.url)[0] for _ in range(3)]
    write_change(slow, cal)

    def answered_late(*args: Any, **kwargs: Any) -> Any:  # each answer takes 50 s of the worker's clock
        clock(slow).advance(50)
        return exchange(*args, **kwargs)

    monkeypatch.setattr(delivery, "exchange", answered_late)
    assert run_due_deliveries(slow, "A", 50) == 2  # a third would start at 100 s, and could end past 120 s
    assert run_due_deliveries(slow, "B", 50) == 0  # A's lease still holds the third
    clock(slow).advance(21)
    assert run_due_deliveries(slow, "B", 50) == 1
    sent = [post.headers["Webhook-Id"] for post in receiver.posts()]
    assert len(sent) == len(set(sent)) == 3, "a message was sent twice"
    assert {d.state for sub in subs for d in deliveries(slow, sub)} == {"delivered"}


# Retries -----------------------------------------------------------------------------------------
def test_failures_follow_the_schedule_with_jitter_then_the_delivery_is_kept_failed(
    runtime: Runtime, receiver: Receiver
) -> None:
    receiver.default = Answer(500, b"boom " * 200)
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, cal)

    assert deliver(runtime) == 1
    for step in RETRY_DELAYS:
        offset = next_offset(runtime, sub_id)
        assert step * 0.8 <= offset <= step * 1.2
        clock(runtime).advance(offset - 1)
        assert deliver(runtime) == 0  # not due yet
        clock(runtime).advance(1)
        assert deliver(runtime) == 1

    (delivery,) = deliveries(runtime, sub_id)
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == ("failed", 8, None)
    assert delivery.last_error == "HTTP 500"
    logged = attempts(runtime, delivery.id)
    assert [a.status_code for a in logged] == [500] * 8
    assert all(len(a.response_excerpt or "") == 500 for a in logged)  # the first 500 bytes only
    assert {r.headers["Webhook-Id"] for r in receiver.posts()} == {delivery.message_id}
    assert subscription(runtime, sub_id).status == "active"  # 27.6 h of failures is not 5 days


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(429, headers={"Retry-After": "120"}), 120),
        (Answer(503), 60),
        (Answer(429, headers={"Retry-After": "1"}), 60),
        (Answer(502), 60),
    ],
)
def test_overloaded_endpoints_get_at_least_a_minute_and_their_retry_after(
    runtime: Runtime, receiver: Receiver, answer: Answer, expected: float
) -> None:
    receiver.script(answer)
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, make_calendar(runtime))
    deliver(runtime)
    assert next_offset(runtime, sub_id) == expected


def test_a_redirect_is_a_failure_and_is_not_followed(runtime: Runtime, receiver: Receiver) -> None:
    receiver.script(Answer(301, headers={"Location": receiver.base + "/moved"}))
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, make_calendar(runtime))
    deliver(runtime)
    assert [r.path for r in receiver.posts()] == ["/hook"]
    (delivery,) = deliveries(runtime, sub_id)
    assert delivery.state == "pending" and delivery.last_status == 301
    assert "redirects are not followed" in (delivery.last_error or "")


def test_a_timeout_is_logged_and_retried(runtime: Runtime, receiver: Receiver) -> None:
    fast = with_settings(runtime, webhook_timeout=timedelta(seconds=0.2))
    receiver.script(Answer(delay=1.0))
    sub_id, _ = subscribe(fast, receiver.url)
    write_change(fast, make_calendar(fast))
    deliver(fast)
    (delivery,) = deliveries(fast, sub_id)
    (attempt,) = attempts(fast, delivery.id)
    assert attempt.status_code is None and attempt.error == "timed out after 0.2 s"
    assert attempt.latency_ms is not None and attempt.latency_ms >= 200
    assert delivery.state == "pending" and 4 <= next_offset(fast, sub_id) <= 6


def test_410_disables_the_subscription_at_once(runtime: Runtime, receiver: Receiver) -> None:
    receiver.script(Answer(410, b"gone"))
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, cal)
    write_change(runtime, cal, event_id="ev2")
    assert deliver(runtime) == 1
    sub = subscription(runtime, sub_id)
    assert sub.status == "disabled" and "410" in (sub.disabled_reason or "")
    assert [d.state for d in deliveries(runtime, sub_id)] == ["failed", "failed"]
    assert deliver(runtime) == 0 and len(receiver.posts()) == 1


def test_five_days_without_a_success_disables_the_subscription(runtime: Runtime, receiver: Receiver) -> None:
    receiver.default = Answer(500)
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, cal)
    deliver(runtime)
    first_failure = runtime.clock.now()
    clock(runtime).advance(days=4, hours=23)
    write_change(runtime, cal, event_id="ev2")
    deliver(runtime)
    assert subscription(runtime, sub_id).status == "active"
    clock(runtime).advance(hours=1)
    write_change(runtime, cal, event_id="ev3")
    deliver(runtime)
    sub = subscription(runtime, sub_id)
    assert sub.status == "disabled" and sub.failing_since == first_failure
    assert "no successful delivery ever" in (sub.disabled_reason or "")
    assert {d.state for d in deliveries(runtime, sub_id)} == {"failed"}


def test_a_success_resets_the_failure_clock(runtime: Runtime, receiver: Receiver) -> None:
    receiver.default = Answer(500)
    receiver.script(Answer(500), Answer(200))
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, cal)
    deliver(runtime)  # ev1 fails
    clock(runtime).advance(days=3)
    write_change(runtime, cal, event_id="ev2")
    deliver(runtime)  # the retry of ev1 succeeds, then ev2 fails: failing again from now
    assert subscription(runtime, sub_id).failing_since == runtime.clock.now()
    clock(runtime).advance(days=2, hours=1)  # 5 days after the first failure, 2 after the success
    write_change(runtime, cal, event_id="ev3")
    deliver(runtime)
    assert subscription(runtime, sub_id).status == "active"


# Order -------------------------------------------------------------------------------------------
def test_first_attempts_go_out_in_seq_order_and_a_retry_does_not_block(runtime: Runtime, receiver: Receiver) -> None:
    receiver.script(Answer(500))
    cal = make_calendar(runtime)
    subscribe(runtime, receiver.url)
    seqs = [write_change(runtime, cal, event_id=f"e{i}") for i in range(4)]
    assert deliver(runtime, limit=1) == 1
    assert deliver(runtime) == 3
    assert seqs_posted(receiver) == seqs  # the first one failed, the others went on
    clock(runtime).advance(7)
    assert deliver(runtime) == 1
    assert seqs_posted(receiver) == [*seqs, seqs[0]]


def test_a_newer_message_waits_while_an_older_first_attempt_is_in_flight(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    first, second = write_change(runtime, cal, event_id="a"), write_change(runtime, cal, event_id="b")
    with transaction(runtime.sessions) as session:  # another worker holds the older message's lease
        session.execute(
            update(Delivery)
            .where(Delivery.change_seq == first)
            .values(lease_owner="other-worker", lease_until=runtime.clock.now() + timedelta(seconds=120))
        )
    assert deliver(runtime) == 0
    clock(runtime).advance(121)  # that worker died: its lease runs out and the older message goes first
    assert deliver(runtime) == 2
    assert seqs_posted(receiver) == [first, second]
    assert {d.state for d in deliveries(runtime, sub_id)} == {"delivered"}


def test_a_message_held_by_a_dead_worker_goes_out_as_soon_as_its_heartbeat_is_stale(
    runtime: Runtime, receiver: Receiver
) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    seq = write_change(runtime, cal)
    heartbeat = Heartbeat(runtime, "host:1:other")
    heartbeat.beat()
    with transaction(runtime.sessions) as session:  # one of its threads is sending it
        session.execute(
            update(Delivery).values(
                lease_owner="host:1:other/2", lease_until=runtime.clock.now() + timedelta(seconds=120)
            )
        )
    clock(runtime).advance(WORKER_ALIVE.total_seconds())
    heartbeat.beat()  # alive and slow: the message stays with it
    clock(runtime).advance(WORKER_ALIVE.total_seconds())
    assert deliver(runtime) == 0
    clock(runtime).advance(1)  # silent for longer than the limit: dead, its lease still runs for 107 s
    assert deliver(runtime) == 1
    assert seqs_posted(receiver) == [seq]
    assert {d.state for d in deliveries(runtime, sub_id)} == {"delivered"}


def test_two_workers_send_every_message_exactly_once(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    subs = [subscribe(runtime, receiver.url)[0] for _ in range(3)]
    for i in range(6):
        write_change(runtime, cal, event_id=f"e{i}")
    made: list[int] = []
    workers = [
        threading.Thread(target=lambda n=n: made.append(run_due_deliveries(runtime, f"w{n}", 50))) for n in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ids = [r.headers["Webhook-Id"] for r in receiver.posts()]
    assert sum(made) == 18 and len(ids) == 18 and len(set(ids)) == 18
    for sub_id in subs:
        assert [r.json()["data"]["seq"] for r in receiver.posts() if sub_id in r.headers["Webhook-Id"]] == sorted(
            r.json()["data"]["seq"] for r in receiver.posts() if sub_id in r.headers["Webhook-Id"]
        )


# Pause, replay, safety ---------------------------------------------------------------------------
def test_paused_deliveries_wait_and_go_out_on_resume(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:
        set_status(get_subscription(session, sub_id), "paused")
    write_change(runtime, cal)
    assert deliver(runtime) == 0
    with transaction(runtime.sessions) as session:
        set_status(get_subscription(session, sub_id), "active")
    assert deliver(runtime) == 1 and len(receiver.posts()) == 1


def test_a_replayed_failure_is_sent_again_with_the_same_webhook_id(runtime: Runtime, receiver: Receiver) -> None:
    receiver.default = Answer(500)
    cal = make_calendar(runtime)
    sub_id, _secret = subscribe(runtime, receiver.url)
    write_change(runtime, cal)
    exhaust_all(runtime)
    (failed,) = deliveries(runtime, sub_id)
    assert failed.state == "failed"

    receiver.default = Answer(200)
    with transaction(runtime.sessions) as session:
        assert replay(session, get_subscription(session, sub_id), None, runtime.clock.now()) == [failed.id]
    assert deliver(runtime) == 1
    post = receiver.posts()[-1]
    assert post.headers["Webhook-Id"] == failed.message_id
    (delivered,) = deliveries(runtime, sub_id)
    assert (delivered.state, delivered.attempts) == ("delivered", 1)
    assert len(attempts(runtime, delivered.id)) == 9  # the log keeps every attempt


def test_the_address_is_checked_again_at_send_time(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)  # allowed when it was created
    strict = with_settings(runtime, webhook_allow_private=False)
    write_change(strict, cal)
    assert deliver(strict) == 1
    assert receiver.posts() == []
    (delivery,) = deliveries(strict, sub_id)
    (attempt,) = attempts(strict, delivery.id)
    assert attempt.status_code is None and "not sent" in (attempt.error or "") and "loopback" in (attempt.error or "")
    assert delivery.state == "pending"


def test_a_stored_url_a_stricter_check_refuses_is_a_refused_attempt_and_holds_nobody_up(
    runtime: Runtime, receiver: Receiver
) -> None:
    """A URL stored before the host check grew stricter raised out of the delivery pass: nothing was
    recorded, and its delivery, the oldest, came first in every claim, its batch (another
    subscription's messages) left unsent."""
    cal = make_calendar(runtime)
    stale_id, _ = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:  # a name IDNA 2003 took and IDNA 2008 refuses
        session.execute(
            update(WebhookSubscription)
            .where(WebhookSubscription.id == stale_id)
            .values(url="https://ab\u200dc.example/hook")
        )
    write_change(runtime, cal)
    healthy_id, _ = subscribe(runtime, receiver.url)
    write_change(runtime, cal)
    assert deliver(runtime) == 3  # the stale subscription's two, the healthy one's one
    assert [d.state for d in deliveries(runtime, healthy_id)] == ["delivered"]
    for refused in deliveries(runtime, stale_id):
        (attempt,) = attempts(runtime, refused.id)
        assert "not sent" in (attempt.error or "") and "not a valid host name" in (attempt.error or "")


def test_a_change_whose_subscription_another_fill_held_is_delivered_soon_after(
    runtime: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox's fill passes by a subscription that another worker's fill holds (SKIP LOCKED). That fill
    queues only what it read before the change was committed, and its worker looks again only if it had
    something to send; the wake-up that came with the change was spent on the fill that passed by. The
    worker must look again soon, not at its next poll (slowed here to 30 s)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's: on SQLite a fill waits for the write lock instead")
    import calsync.work.worker
    from calsync.work.worker import Worker

    monkeypatch.setattr(calsync.work.worker, "POLL_SECONDS", 30.0)
    sub_id, _ = subscribe(runtime, receiver.url)
    calendar_id = make_calendar(runtime)
    Worker(runtime, threads=1).run_burst()  # what the worker does first (here: the account's grant found revoked)
    before, posted = len(deliveries(runtime, sub_id)), len(receiver.posts())
    with idle_worker(runtime):
        with runtime.engine.connect() as other_fill, other_fill.begin():
            # Another worker's fill holds the subscription's row until this commit, which queues nothing.
            other_fill.execute(select(WebhookSubscription.id).where(WebhookSubscription.id == sub_id).with_for_update())
            with transaction(runtime.sessions) as session:
                append_changes(session, [_change(calendar_id)], runtime.clock.now())
            runtime.wakeup.notify_local()  # the change's wake-up, spent while the row is held
            time.sleep(0.5)
            assert len(deliveries(runtime, sub_id)) == before  # the fill found the row held
        started = time.monotonic()
        wait_for(lambda: len(receiver.posts()) > posted, timeout=5, what="the delivery after the row was freed")
        assert time.monotonic() - started < 2.0


def _change(calendar_id: int, event_id: str = "ev1", origin: str = "google") -> Change:
    return Change(
        calendar_id=calendar_id,
        event_id=event_id,
        kind="created",
        fields=[],
        before=None,
        after=event(id=event_id),
        origin=origin,
    )


def test_a_change_after_a_whole_batch_of_rows_a_subscription_leaves_out_is_delivered_soon_after(
    runtime: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill looks at `FILL_BATCH` feed rows at a time. When none of them is for the subscription (here the
    app's own writes, to a subscription that takes only Google's changes), it queues nothing and its worker
    had nothing to send; the row after them must not wait for the next poll (slowed here to 30 s)."""
    import calsync.work.worker
    from calsync.work.worker import Worker

    monkeypatch.setattr(calsync.work.worker, "POLL_SECONDS", 30.0)
    subscribe(runtime, receiver.url, origin="google")
    calendar_id = make_calendar(runtime)
    Worker(runtime, threads=1).run_burst()
    posted = len(receiver.posts())
    with idle_worker(runtime):
        own = [_change(calendar_id, f"app{i}", origin="api") for i in range(FILL_BATCH)]
        with transaction(runtime.sessions) as session:
            append_changes(session, [*own, _change(calendar_id, "theirs")], runtime.clock.now())
        started = time.monotonic()
        runtime.wakeup.notify_local()
        wait_for(lambda: len(receiver.posts()) > posted, timeout=5, what="the delivery of the row after the batch")
        assert time.monotonic() - started < 2.0
        assert [post.json()["data"]["event_id"] for post in receiver.posts()[posted:]] == ["theirs"]


def test_a_secret_no_key_decrypts_disables_its_subscription_alone(settings: Any, receiver: Any) -> None:
    """An old key taken out of CALSYNC_TOKEN_KEY: one subscription's secret could not be decrypted,
    which failed the whole batch, every pass, for every subscription (nothing sent at all)."""
    key_a, key_b = new_key(), new_key()
    with_a = make_runtime(dataclasses.replace(settings, token_key=key_a))
    cal = make_calendar(with_a)
    old_sub, _ = subscribe(with_a, receiver.url)  # its secret under key A
    with_a.close()
    both = make_runtime(dataclasses.replace(settings, token_key=f"{key_b},{key_a}"))
    new_sub, _ = subscribe(both, receiver.url)  # under key B
    both.close()
    only_b = make_runtime(dataclasses.replace(settings, token_key=key_b))
    try:
        write_change(only_b, cal)
        assert deliver(only_b) == 1
        assert [d.state for d in deliveries(only_b, new_sub)] == ["delivered"] and len(receiver.posts()) == 1
        old = subscription(only_b, old_sub)
        assert old.status == "disabled" and "rotate its secret" in (old.disabled_reason or "")
        assert [d.state for d in deliveries(only_b, old_sub)] == ["failed"]  # kept, to replay once resumed
    finally:
        only_b.close()
