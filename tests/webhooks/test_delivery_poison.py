"""Bytes no database column takes, from an endpoint or in an event: neither stops a subscription.

An endpoint's answer is logged escaped and truncated, on both engines, so every attempt is
recorded, counts towards the retry limit, and never holds the messages behind it back.
"""

from __future__ import annotations

from standardwebhooks import Webhook

from calsync.runtime import Runtime
from calsync.webhooks.delivery import EXCERPT_BYTES
from tests.webhooks.receiver import Answer, Receiver
from tests.webhooks.support import (
    attempts,
    clock,
    deliver,
    deliveries,
    event,
    make_calendar,
    subscribe,
    subscription,
    write_change,
)


def test_an_answer_holding_nul_and_bytes_that_are_not_utf8_is_recorded_escaped(
    runtime: Runtime, receiver: Receiver
) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    receiver.script(Answer(500, b"\x00bad\xff\xfe" + b"\x00" * 1000), Answer(200, b"ok\x00"))
    first = write_change(runtime, cal, event_id="ev1")
    second = write_change(runtime, cal, event_id="ev2")

    assert deliver(runtime) == 2  # the failed first message did not hold the second back
    by_seq = {d.change_seq: d for d in deliveries(runtime, sub_id)}
    assert (by_seq[first].state, by_seq[first].attempts, by_seq[first].last_status) == ("pending", 1, 500)
    assert (by_seq[second].state, by_seq[second].attempts) == ("delivered", 1)
    (failed,) = attempts(runtime, by_seq[first].id)
    assert failed.response_excerpt is not None
    assert failed.response_excerpt.startswith("\\x00bad\\xff\\xfe\\x00")
    assert len(failed.response_excerpt) == EXCERPT_BYTES
    (ok,) = attempts(runtime, by_seq[second].id)
    assert ok.response_excerpt == "ok\\x00"

    clock(runtime).set(by_seq[first].next_attempt_at or runtime.clock.now())
    assert deliver(runtime) == 1  # the retry goes out on time, and succeeds
    assert [d.state for d in deliveries(runtime, sub_id)] == ["delivered", "delivered"]
    assert subscription(runtime, sub_id).status == "active"


def test_a_change_holding_nul_and_lone_surrogates_is_sent_signed(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    standard_id, secret = subscribe(runtime, receiver.url)
    slack_id, _ = subscribe(runtime, receiver.url, format="slack")
    after = event("nul\x00 and \ud800 lone", description="\udfff\x00")
    write_change(runtime, cal, after=after, fields=["description", "summary"])

    assert deliver(runtime) == 2
    assert [d.state for d in deliveries(runtime, standard_id) + deliveries(runtime, slack_id)] == ["delivered"] * 2
    standard = next(p for p in receiver.posts() if b'"type"' in p.body)
    message = Webhook(secret).verify(standard.body, standard.headers)
    assert message["data"]["after"]["summary"] == "nul\x00 and \ud800 lone"
    assert message["data"]["after"]["description"] == "\udfff\x00"
