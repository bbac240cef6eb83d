"""Retention on both engines: old feed rows go in short batches, new ones and pending messages stay,
and the receiver and a running sync go on while a large backlog is deleted."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from calsync.config import Settings
from calsync.feed.append import append_changes
from calsync.feed.cursor import trimmed_through
from calsync.feed.retention import BATCH, trim_changes
from calsync.runtime import Runtime
from calsync.store.db import is_postgres, transaction
from calsync.store.models import Change, Delivery, WebhookSubscription
from calsync.store.states import DeliveryState, SubscriptionStatus
from calsync.sync.run import sync_calendar
from calsync.webhooks.outbox import fill
from calsync.work.worker import Worker
from tests.push_support import calendar_row, push_headers

RETENTION = timedelta(days=30)


@pytest.fixture
def retaining(settings: Settings) -> Iterator[Runtime]:
    """calsync with CALSYNC_CHANGES_RETENTION=30d."""
    rt = Runtime.create(dataclasses.replace(settings, changes_retention=RETENTION))
    yield rt
    rt.close()


def seed_changes(runtime: Runtime, calendar_id: int, count: int, at: datetime, prefix: str = "old") -> list[int]:
    """`count` created rows detected at `at`, as the sync engine writes them, then queued for the
    subscriptions as the worker does."""
    seqs: list[int] = []
    for start in range(0, count, 5000):
        with transaction(runtime.sessions) as session:
            rows = [
                Change(
                    calendar_id=calendar_id,
                    event_id=f"{prefix}{n}",
                    kind="created",
                    before=None,
                    after={"id": f"{prefix}{n}", "summary": f"Event {n}"},
                )
                for n in range(start, min(count, start + 5000))
            ]
            seqs.extend(c.seq for c in append_changes(session, rows, at))
    with transaction(runtime.sessions) as session:  # the worker's pass: subscriptions queue theirs
        fill(session, runtime.clock.now(), limit=count + 1)
    return seqs


def seqs_kept(runtime: Runtime) -> list[int]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Change.seq).order_by(Change.seq)))


def a_calendar(runtime: Runtime, emu: Any) -> int:
    from tests.push_support import add_calendar_row, connect_account

    account_id = connect_account(runtime, emu, "ann@example.com")
    return add_calendar_row(runtime, account_id, "ann@example.com", sync_requested=1, sync_done=1)


def test_the_worker_deletes_old_rows_a_batch_per_pass_and_keeps_the_new(retaining: Runtime, emu: Any) -> None:
    cal = a_calendar(retaining, emu)
    now = retaining.clock.now()
    old = seed_changes(retaining, cal, 2500, now - RETENTION - timedelta(hours=1))
    young = seed_changes(retaining, cal, 3, now - RETENTION + timedelta(hours=1), prefix="young")
    late_old = seed_changes(retaining, cal, 2, now - timedelta(days=90), prefix="clock")  # after a young row
    worker = Worker(retaining, threads=1)
    left = []
    for _ in range(4):
        worker.tick()  # one scheduler pass: one batch
        left.append(len(seqs_kept(retaining)))
    assert left == [2505 - BATCH, 2505 - 2 * BATCH, 5, 5]
    # Rows go as a prefix of seq order: the two old rows written after a young one wait for it,
    # so every seq above the mark is still there.
    assert seqs_kept(retaining) == young + late_old
    with retaining.sessions() as session:
        assert trimmed_through(session) == old[-1]


def test_zero_retention_keeps_every_row(runtime: Runtime, emu: Any) -> None:
    assert runtime.settings.changes_retention == timedelta(0)
    cal = a_calendar(runtime, emu)
    seqs = seed_changes(runtime, cal, 10, runtime.clock.now() - timedelta(days=3650))
    Worker(runtime, threads=1).tick()
    assert seqs_kept(runtime) == seqs


def test_a_change_whose_delivery_is_pending_stays_until_it_is_delivered(retaining: Runtime, emu: Any) -> None:
    cal = a_calendar(retaining, emu)
    with transaction(retaining.sessions) as session:  # paused: its messages wait in the outbox
        session.add(
            WebhookSubscription(
                id="wh_paused",
                url="https://crm.example.com/hook",
                events=["event.created"],
                secret=retaining.cipher.encrypt_str("whsec_x"),
                status=SubscriptionStatus.PAUSED,
            )
        )
    old = seed_changes(retaining, cal, 5, retaining.clock.now() - RETENTION - timedelta(days=1))
    with transaction(retaining.sessions) as session:
        session.execute(update(Delivery).where(Delivery.change_seq != old[2]).values(state=DeliveryState.DELIVERED))
    cutoff = retaining.clock.now() - RETENTION
    with transaction(retaining.sessions) as session:
        assert trim_changes(session, cutoff) == 4
    assert seqs_kept(retaining) == [old[2]]
    with retaining.sessions() as session:
        assert trimmed_through(session) == old[-1]  # the feed is trimmed past it all the same
        assert [d.change_seq for d in session.scalars(select(Delivery))] == [old[2]]  # delivered ones cascaded
    with transaction(retaining.sessions) as session:
        session.execute(update(Delivery).values(state=DeliveryState.FAILED))
    with transaction(retaining.sessions) as session:
        assert trim_changes(session, cutoff) == 1
    assert seqs_kept(retaining) == []
    with retaining.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_the_receiver_and_a_sync_complete_while_many_old_rows_are_deleted(
    runtime: Runtime, client: FlaskClient, watched: dict[str, Any], emu: Any
) -> None:
    cal = watched["calendar_id"]
    now = runtime.clock.now()
    old = seed_changes(runtime, cal, 20_000, now - RETENTION - timedelta(days=1))
    cutoff = now - RETENTION
    batches: list[float] = []
    marks_seen: list[int] = []
    actions_done = threading.Event()
    last_batches = len(old) // BATCH - 2

    def trim_everything() -> None:
        while True:
            if len(batches) == last_batches:  # however slow the machine, the last batches wait for the actions
                actions_done.wait(60)
            started = time.monotonic()
            with transaction(runtime.sessions) as session:
                deleted = trim_changes(session, cutoff)
            batches.append(time.monotonic() - started)
            if not deleted:
                return
            time.sleep(0.02)  # the scheduler waits between passes (2 s in a worker)

    trimmer = threading.Thread(target=trim_everything, daemon=True)
    trimmer.start()
    wait = time.monotonic() + 30
    while not batches and time.monotonic() < wait:
        time.sleep(0.005)

    def during(action: Callable[[], Any]) -> tuple[Any, float]:
        with runtime.sessions() as session:
            marks_seen.append(trimmed_through(session))
        assert trimmer.is_alive(), "retention ended before the action began"
        started = time.monotonic()
        return action(), time.monotonic() - started

    emu.insert_event(
        "ann@example.com",
        {
            "summary": "Booked during retention",
            "start": {"dateTime": "2026-05-04T10:00:00Z"},
            "end": {"dateTime": "2026-05-04T11:00:00Z"},
        },
    )
    answer, receiver_seconds = during(lambda: client.post("/notifications", headers=push_headers(watched["channel"])))
    result, sync_seconds = during(lambda: sync_calendar(runtime, cal))
    actions_done.set()
    trimmer.join(timeout=60)
    assert not trimmer.is_alive()

    # Bounds far above a quiet machine's figures (a few ms, tens of ms) and far below waiting for
    # the whole of it, which here cannot end before both actions have.
    assert answer.status_code == 200 and receiver_seconds < 5.0
    assert calendar_row(runtime, cal).sync_requested == 2
    assert result.created == 1 and sync_seconds < 10.0
    assert all(0 < mark < old[-1] for mark in marks_seen), marks_seen  # both ran in the middle of it
    assert len(batches) >= 20 and max(batches) < 2.0, batches  # each batch holds its locks briefly
    with runtime.sessions() as session:  # every old row went, the sync's new change stayed
        kept = session.scalars(select(Change).order_by(Change.seq)).all()
    assert [(c.kind, (c.after or {}).get("summary")) for c in kept] == [("created", "Booked during retention")]
    assert kept[0].seq > old[-1]


@pytest.fixture
def postgres_only(runtime: Runtime) -> None:
    if not is_postgres(runtime.engine):
        pytest.skip("SQLite has one writer at a time: there, each batch is short instead (test above)")


def test_an_uncommitted_batch_blocks_neither_the_receiver_nor_a_sync_commit(
    runtime: Runtime, client: FlaskClient, watched: dict[str, Any], emu: Any, postgres_only: None
) -> None:
    cal = watched["calendar_id"]
    old = seed_changes(runtime, cal, 1500, runtime.clock.now() - RETENTION - timedelta(days=1))
    emu.insert_event(
        "ann@example.com",
        {
            "summary": "Booked while a batch is open",
            "start": {"dateTime": "2026-05-04T10:00:00Z"},
            "end": {"dateTime": "2026-05-04T11:00:00Z"},
        },
    )
    outcome: dict[str, Any] = {}

    def others() -> None:
        outcome["receiver"] = client.post("/notifications", headers=push_headers(watched["channel"])).status_code
        outcome["sync"] = sync_calendar(runtime, cal).created

    with runtime.sessions() as held, held.begin():
        assert trim_changes(held, runtime.clock.now() - RETENTION) == BATCH  # locks held until the commit
        worker = threading.Thread(target=others, daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "the receiver or the sync waited for the open batch"
    assert outcome == {"receiver": 200, "sync": 1}
    kept = seqs_kept(runtime)
    assert kept[0] == old[BATCH] and kept[-1] > old[-1]


def test_a_second_worker_skips_retention_while_another_trims(retaining: Runtime, emu: Any, postgres_only: None) -> None:
    cal = a_calendar(retaining, emu)
    seed_changes(retaining, cal, 10, retaining.clock.now() - RETENTION - timedelta(days=1))
    cutoff = retaining.clock.now() - RETENTION
    with transaction(retaining.sessions) as session:  # the very first batch writes the mark's row
        assert trim_changes(session, cutoff, limit=1) == 1
    with retaining.sessions() as first, first.begin():
        assert trim_changes(first, cutoff, limit=3) == 3
        started = time.monotonic()
        with transaction(retaining.sessions) as second:
            assert trim_changes(second, cutoff) == 0  # no wait on the first one's lock
        assert time.monotonic() - started < 1.0
    with transaction(retaining.sessions) as session:
        assert trim_changes(session, cutoff) == 6
    assert seqs_kept(retaining) == []


def test_rows_a_subscription_has_not_looked_at_yet_are_kept(retaining: Runtime, emu: Any) -> None:
    """Retention never deletes a row above the slowest subscription's cursor: its message would be lost."""
    cal = a_calendar(retaining, emu)
    with transaction(retaining.sessions) as session:
        session.add(
            WebhookSubscription(
                id="wh_behind",
                url="https://crm.example.com/hook",
                events=["*"],
                secret=retaining.cipher.encrypt_str("whsec_x"),
                status=SubscriptionStatus.ACTIVE,
            )
        )
    at = retaining.clock.now() - RETENTION - timedelta(days=1)
    seqs: list[int] = []
    with transaction(retaining.sessions) as session:  # written, and not yet looked at by the worker
        rows = [Change(calendar_id=cal, event_id=f"e{n}", kind="created", after={"id": f"e{n}"}) for n in range(4)]
        seqs.extend(c.seq for c in append_changes(session, rows, at))
    cutoff = retaining.clock.now() - RETENTION
    with transaction(retaining.sessions) as session:
        assert trim_changes(session, cutoff) == 0
    assert seqs_kept(retaining) == seqs
    with transaction(retaining.sessions) as session:
        fill(session, retaining.clock.now(), limit=2)  # the cursor passes the first two rows
    with transaction(retaining.sessions) as session:
        trim_changes(session, cutoff)
    # The two it passed stay while their deliveries are pending; the two ahead of the cursor stay.
    assert seqs_kept(retaining) == seqs
    with transaction(retaining.sessions) as session:
        session.execute(update(Delivery).values(state=DeliveryState.DELIVERED))
    with transaction(retaining.sessions) as session:
        assert trim_changes(session, cutoff) == 2
    assert seqs_kept(retaining) == seqs[2:]
