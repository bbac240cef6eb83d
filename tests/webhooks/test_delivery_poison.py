"""Bytes no database column takes, from an endpoint or in an event: neither stops a subscription.

An endpoint's answer is logged escaped and truncated, on both engines, so every attempt is
recorded, counts towards the retry limit, and never holds the messages behind it back.
"""

from __future__ import annotations

from sqlalchemy import text
from standardwebhooks import Webhook

from calsync.runtime import Runtime
from calsync.webhooks.delivery import EXCERPT_BYTES
from calsync.webhooks.schedule import MAX_ATTEMPTS
from tests.webhooks.receiver import Answer, Receiver
from tests.webhooks.support import (
    attempts,
    clock,
    deliver,
    deliveries,
    event,
    exhaust_all,
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


def _refuse_answers_holding(runtime: Runtime, word: str) -> None:
    """A database that refuses to record some answers, whatever their form: a trigger of its own."""
    with runtime.engine.begin() as conn:
        if runtime.engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_answer() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.response_excerpt LIKE '%{word}%' THEN "
                    "RAISE EXCEPTION 'answer refused' USING ERRCODE = '22000'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_answer BEFORE INSERT ON delivery_attempts "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_answer()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_answer BEFORE INSERT ON delivery_attempts "
                    f"WHEN NEW.response_excerpt LIKE '%{word}%' BEGIN SELECT RAISE(ABORT, 'answer refused'); END"
                )
            )


def test_an_attempt_the_database_refuses_to_record_counts_and_its_retries_end(
    runtime: Runtime, receiver: Receiver
) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    _refuse_answers_holding(runtime, "POISON")
    receiver.default = Answer(500, b"POISON")
    first = write_change(runtime, cal, event_id="ev1")
    second = write_change(runtime, cal, event_id="ev2")

    assert deliver(runtime) == 2  # neither message holds the other back
    for delivery in deliveries(runtime, sub_id):
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, 500)
        (attempt,) = attempts(runtime, delivery.id)
        assert attempt.response_excerpt is None and "answer not recordable" in (attempt.error or "")
    exhaust_all(runtime)  # every retry meets the same refusal, and each one still counts
    done = {d.change_seq: d for d in deliveries(runtime, sub_id)}
    assert [(done[s].state, done[s].attempts) for s in (first, second)] == [("failed", MAX_ATTEMPTS)] * 2
    assert len(receiver.posts()) == 2 * MAX_ATTEMPTS  # bounded: not one POST more than the schedule
