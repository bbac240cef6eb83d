"""The outbox is filled from the feed: each subscription's cursor passes every committed row once,
queuing a delivery for the rows it wants, in seq order."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from calsync.errors import InvalidSubscription
from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Change, Delivery
from calsync.store.states import SubscriptionStatus
from calsync.webhooks import outbox
from calsync.webhooks.outbox import fill
from calsync.webhooks.subscriptions import get_subscription, parse_spec, set_status
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import (
    deliveries,
    event,
    fill_outbox,
    make_calendar,
    subscribe,
    write_change,
)


def count(runtime: Runtime, model: type) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_one_delivery_per_matching_subscription_and_change(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    a, _ = subscribe(runtime, receiver.url)
    b, _ = subscribe(runtime, receiver.url, ["event.created", "event.updated"])
    seq = write_change(runtime, cal)
    for sub_id in (a, b):
        (delivery,) = deliveries(runtime, sub_id)
        assert (delivery.change_seq, delivery.state, delivery.attempts) == (seq, "pending", 0)
        assert delivery.message_id == f"msg_{sub_id}_{seq}"
        assert delivery.next_attempt_at == runtime.clock.now()


def test_filters_by_event_type(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    created_only, _ = subscribe(runtime, receiver.url, ["event.created"])
    deleted_only, _ = subscribe(runtime, receiver.url, ["event.deleted"])
    created = write_change(runtime, cal, "created", event_id="e1")
    write_change(runtime, cal, "updated", event_id="e1")
    deleted = write_change(runtime, cal, "deleted", event_id="e1")
    assert [d.change_seq for d in deliveries(runtime, created_only)] == [created]
    assert [d.change_seq for d in deliveries(runtime, deleted_only)] == [deleted]


def test_snapshot_rows_go_only_to_subscriptions_that_name_them(runtime: Runtime, receiver: Receiver) -> None:
    """A first sync writes a snapshot row per event: `*` must not turn that into a flood."""
    cal = make_calendar(runtime)
    everything, _ = subscribe(runtime, receiver.url, ["*"])
    snapshots, _ = subscribe(runtime, receiver.url, ["event.snapshot"])
    both, _ = subscribe(runtime, receiver.url, ["event.snapshot", "event.created"])
    # `*` beside `event.snapshot` was stored as `*` alone: the snapshots asked for never came.
    all_of_it, _ = subscribe(runtime, receiver.url, ["*", "event.snapshot"])
    first = [write_change(runtime, cal, "snapshot", event_id=f"e{i}") for i in range(3)]
    created = write_change(runtime, cal, "created", event_id="e9")
    assert [d.change_seq for d in deliveries(runtime, everything)] == [created]
    assert [d.change_seq for d in deliveries(runtime, snapshots)] == first
    assert [d.change_seq for d in deliveries(runtime, both)] == [*first, created]
    assert [d.change_seq for d in deliveries(runtime, all_of_it)] == [*first, created]


def test_filters_by_calendar(runtime: Runtime, receiver: Receiver) -> None:
    team = make_calendar(runtime, "team@group")
    other = make_calendar(runtime, "other@group")
    sub_id, _ = subscribe(runtime, receiver.url, calendars=["team@group"])
    wanted = write_change(runtime, team)
    write_change(runtime, other)
    assert [d.change_seq for d in deliveries(runtime, sub_id)] == [wanted]


def test_a_subscription_for_origin_google_leaves_out_the_apps_own_writes(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    others, _ = subscribe(runtime, receiver.url, ["*"], origin="google")
    everything, _ = subscribe(runtime, receiver.url, ["*"])
    own = write_change(runtime, cal, "created", event_id="e1", origin="api")
    found = write_change(runtime, cal, "updated", event_id="e1")
    with transaction(runtime.sessions) as session:
        [lifecycle] = append_changes(
            session, [Change(type="calendar.removed", calendar_id=cal, after={"summary": "Team"})], runtime.clock.now()
        )
    fill_outbox(runtime)
    assert [d.change_seq for d in deliveries(runtime, others)] == [found, lifecycle.seq]
    assert [d.change_seq for d in deliveries(runtime, everything)] == [own, found, lifecycle.seq]
    with pytest.raises(InvalidSubscription) as refused:
        parse_spec({"url": receiver.url, "events": ["*"], "origin": "app"}, runtime.settings)
    assert refused.value.field == "origin"


def test_paused_subscriptions_collect_deliveries_and_disabled_ones_do_not(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    paused, _ = subscribe(runtime, receiver.url)
    disabled, _ = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:
        set_status(get_subscription(session, paused), "paused")
        get_subscription(session, disabled).status = SubscriptionStatus.DISABLED
    write_change(runtime, cal)
    assert len(deliveries(runtime, paused)) == 1
    assert deliveries(runtime, disabled) == []


def test_the_feed_writer_queues_nothing_and_the_cursor_queues_each_row_once(
    runtime: Runtime, receiver: Receiver
) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:
        batch = [
            Change(calendar_id=cal, event_id=f"e{i}", kind="created", fields=[], before=None, after=event(id=f"e{i}"))
            for i in range(3)
        ]
        append_changes(session, batch, runtime.clock.now())
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0  # a sync's commit writes none
    assert fill_outbox(runtime) == 3
    assert fill_outbox(runtime) == 0  # the cursor has passed them
    assert [d.change_seq for d in deliveries(runtime, sub_id)] == [c.seq for c in batch]
    with runtime.sessions() as session:
        assert get_subscription(session, sub_id).cursor_seq == batch[-1].seq


def test_a_rolled_back_transaction_leaves_nothing_to_queue(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    subscribe(runtime, receiver.url)
    with pytest.raises(RuntimeError), transaction(runtime.sessions) as session:
        append_changes(
            session,
            [Change(calendar_id=cal, event_id="e1", kind="created", fields=[], before=None, after=event())],
            runtime.clock.now(),
        )
        raise RuntimeError("the sync page failed before its commit")
    assert fill_outbox(runtime) == 0
    assert count(runtime, Change) == 0 and count(runtime, Delivery) == 0


def test_a_new_subscription_hears_only_of_later_changes(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    write_change(runtime, cal, event_id="before")
    sub_id, _ = subscribe(runtime, receiver.url)
    later = write_change(runtime, cal, event_id="after")
    assert [d.change_seq for d in deliveries(runtime, sub_id)] == [later]


def test_a_long_backlog_is_queued_in_batches_in_seq_order(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url, ["event.created"])
    with transaction(runtime.sessions) as session:
        rows = [
            Change(calendar_id=cal, event_id=f"e{i}", kind="created" if i % 2 else "updated", after=event(id=f"e{i}"))
            for i in range(7)
        ]
        append_changes(session, rows, runtime.clock.now())
    queued = []
    for _ in range(4):
        with transaction(runtime.sessions) as session:
            queued.append(fill(session, runtime.clock.now(), limit=2))
    assert queued == [1, 1, 1, 0]  # two rows a pass, one of each pair wanted; the fourth pass sees one unwanted row
    assert [d.change_seq for d in deliveries(runtime, sub_id)] == [c.seq for c in rows if c.kind == "created"]


def test_a_pass_queues_a_bounded_number_of_deliveries_however_many_subscriptions(
    runtime: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows × subscriptions per transaction: 300 subscriptions made 300,000 deliveries in one pass."""
    monkeypatch.setattr(outbox, "FILL_DELIVERIES", 6)
    cal = make_calendar(runtime)
    subs = [subscribe(runtime, receiver.url, ["event.created"])[0] for _ in range(3)]
    with transaction(runtime.sessions) as session:
        rows = [Change(calendar_id=cal, event_id=f"e{i}", kind="created", after=event(id=f"e{i}")) for i in range(7)]
        append_changes(session, rows, runtime.clock.now())
    queued = []
    for _ in range(5):
        with transaction(runtime.sessions) as session:
            queued.append(fill(session, runtime.clock.now()))
    assert queued == [6, 6, 6, 3, 0]  # two rows a pass for three subscriptions, then the last row
    for sub_id in subs:
        assert [d.change_seq for d in deliveries(runtime, sub_id)] == [c.seq for c in rows]


def test_subscriptions_that_queue_nothing_and_rows_nobody_wants_do_not_shorten_a_pass(
    runtime: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound counts deliveries as they are queued: counted as rows × subscriptions, 199 disabled
    subscriptions beside one active made a pass of 5 rows, and a first sync's snapshot rows (which
    `*` does not take) made passes that queued nothing, each followed by a wait."""
    monkeypatch.setattr(outbox, "FILL_DELIVERIES", 6)
    cal = make_calendar(runtime)
    active = [subscribe(runtime, receiver.url, ["*"])[0] for _ in range(3)]
    for _ in range(3):
        sub_id, _ = subscribe(runtime, receiver.url, ["*"])
        with transaction(runtime.sessions) as session:
            get_subscription(session, sub_id).status = SubscriptionStatus.DISABLED  # as failures leave it
    with transaction(runtime.sessions) as session:
        snapshots = [
            Change(calendar_id=cal, event_id=f"s{i}", kind="snapshot", after=event(id=f"s{i}")) for i in range(5)
        ]
        created = [Change(calendar_id=cal, event_id=f"e{i}", kind="created", after=event(id=f"e{i}")) for i in range(2)]
        append_changes(session, [*snapshots, *created], runtime.clock.now())
    with transaction(runtime.sessions) as session:
        assert fill(session, runtime.clock.now()) == 6  # the whole backlog in one pass
    for sub_id in active:
        assert [d.change_seq for d in deliveries(runtime, sub_id)] == [c.seq for c in created]


def test_a_subscription_disabled_meanwhile_moves_on_and_hears_only_later_changes_once_resumed(
    runtime: Runtime, receiver: Receiver
) -> None:
    cal = make_calendar(runtime)
    sub_id, _ = subscribe(runtime, receiver.url)
    with transaction(runtime.sessions) as session:
        get_subscription(session, sub_id).status = SubscriptionStatus.DISABLED
    write_change(runtime, cal, event_id="while-disabled")
    with transaction(runtime.sessions) as session:
        set_status(get_subscription(session, sub_id), SubscriptionStatus.ACTIVE)
    later = write_change(runtime, cal, event_id="after")
    assert [d.change_seq for d in deliveries(runtime, sub_id)] == [later]


def test_workers_filling_at_once_queue_each_message_once(runtime: Runtime, receiver: Receiver) -> None:
    cal = make_calendar(runtime)
    subs = [subscribe(runtime, receiver.url)[0] for _ in range(3)]
    with transaction(runtime.sessions) as session:
        rows = [Change(calendar_id=cal, event_id=f"e{i}", kind="created", after=event(id=f"e{i}")) for i in range(40)]
        append_changes(session, rows, runtime.clock.now())
    errors: list[BaseException] = []

    head = rows[-1].seq

    def caught_up() -> bool:
        with runtime.sessions() as session:
            return all(get_subscription(session, sub_id).cursor_seq == head for sub_id in subs)

    def worker() -> None:
        try:
            for _ in range(500):  # a pass may find every subscription taken by another worker
                with transaction(runtime.sessions) as session:
                    fill(session, runtime.clock.now(), limit=7)
                if caught_up():
                    return
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert caught_up()
    for sub_id in subs:
        assert [d.change_seq for d in deliveries(runtime, sub_id)] == [c.seq for c in rows]
