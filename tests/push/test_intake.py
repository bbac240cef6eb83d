"""The receiver's group commit: notifications waiting together share one transaction, and each
still gets the outcome it would have had alone."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, text

from calsync.push import intake as intake_module
from calsync.push.intake import Intake, IntakeUnavailable
from calsync.push.intake_sql import Item, record_batch
from calsync.runtime import Runtime
from calsync.store.db import statements_alone, transaction
from calsync.store.models import Calendar, Channel, Notification
from calsync.store.states import NotificationOutcome
from tests.push_support import calendar_row, push_of


def _log(runtime: Runtime) -> list[Notification]:
    with runtime.sessions() as session:
        statements_alone(session)  # no transaction: it may look while a writer holds its turn
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def test_a_batch_decides_in_arrival_order_and_owes_one_sync(runtime: Runtime, watched: dict[str, Any]) -> None:
    ch = watched["channel"]
    batch = [Item(push_of(ch, n), {}, runtime.clock.now()) for n in (9, 9, 4, 12)]
    batch.append(Item(push_of(ch, 13, token="forged"), {}, runtime.clock.now()))
    batch.append(Item(None, {"X-Goog-Channel-ID": "x"}, runtime.clock.now()))
    conn = runtime.engine.raw_connection()
    try:
        cursor = conn.cursor()
        if runtime.engine.dialect.name == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        record_batch(cursor, runtime.engine.dialect, batch, runtime.clock.now())
        conn.commit()
    finally:
        conn.close()
    assert [i.outcome for i in batch] == [
        NotificationOutcome.QUEUED,
        NotificationOutcome.DUPLICATE,
        NotificationOutcome.DUPLICATE,
        NotificationOutcome.QUEUED,
        NotificationOutcome.BAD_TOKEN,
        NotificationOutcome.MALFORMED,
    ]
    assert [(n.message_number, n.outcome) for n in _log(runtime)] == [
        (9, NotificationOutcome.QUEUED),
        (9, NotificationOutcome.DUPLICATE),
        (4, NotificationOutcome.DUPLICATE),
        (12, NotificationOutcome.QUEUED),
        (13, NotificationOutcome.BAD_TOKEN),
        (None, NotificationOutcome.MALFORMED),
    ]
    cal = calendar_row(runtime, watched["calendar_id"])
    assert (cal.sync_requested, cal.sync_done) == (2, 1)  # one more sync owed for the whole batch
    with runtime.sessions() as session:
        assert session.get_one(Channel, str(ch["id"])).last_message_number == 12  # the forged 13 is not seen


def _record(runtime: Runtime, batch: list[Item]) -> bool:
    conn = runtime.engine.raw_connection()
    try:
        cursor = conn.cursor()
        if runtime.engine.dialect.name == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        newly_owed = record_batch(cursor, runtime.engine.dialect, batch, runtime.clock.now())
        conn.commit()
        return newly_owed
    finally:
        conn.close()


def test_only_a_batch_that_makes_work_owed_wakes_a_worker(runtime: Runtime, watched: dict[str, Any]) -> None:
    """Work already owed is known to the workers: waking one per batch of a burst made every batch
    cost an empty claim, a write transaction that the next batch then waited for."""
    ch, cal_id = watched["channel"], watched["calendar_id"]
    now = runtime.clock.now()
    assert _record(runtime, [Item(push_of(ch, 5), {}, now)]) is True  # the calendar owed nothing
    assert _record(runtime, [Item(push_of(ch, 6), {}, now), Item(push_of(ch, 7), {}, now)]) is False
    assert _record(runtime, [Item(push_of(ch, 7), {}, now), Item(push_of(ch, 9, token="x"), {}, now)]) is False
    cal = calendar_row(runtime, cal_id)
    assert (cal.sync_requested, cal.sync_done) == (3, 1)  # one per batch that queued
    with runtime.engine.begin() as conn:  # a worker synced it: nothing owed any more
        conn.execute(text("UPDATE calendars SET sync_done = sync_requested WHERE id = :id"), {"id": cal_id})
    assert _record(runtime, [Item(push_of(ch, 8), {}, now)]) is True

    intake = Intake(runtime)
    woken = runtime.wakeup.generation()
    # Owed again by the previous batch: no wake-up.
    assert intake.record(push_of(ch, 10), {}) == NotificationOutcome.QUEUED
    assert runtime.wakeup.generation() == woken
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE calendars SET sync_done = sync_requested WHERE id = :id"), {"id": cal_id})
    assert intake.record(push_of(ch, 11), {}) == NotificationOutcome.QUEUED
    assert runtime.wakeup.generation() == woken + 1


def test_notifications_waiting_together_share_a_transaction(runtime: Runtime, watched: dict[str, Any]) -> None:
    intake, ch = Intake(runtime), watched["channel"]
    outcomes: list[str] = []
    blocker = runtime.engine.connect()
    blocker.begin()  # on SQLite, BEGIN IMMEDIATE: the writer's first batch now waits for the write lock
    if runtime.engine.dialect.name == "postgresql":  # there, for the channel's row lock
        blocker.execute(select(Channel.id).where(Channel.id == str(ch["id"])).with_for_update())
    threads = [
        threading.Thread(target=lambda n=n: outcomes.append(intake.record(push_of(ch, n), {}))) for n in range(2, 42)
    ]
    for t in threads:
        t.start()
    threading.Event().wait(0.5)
    blocker.rollback()
    blocker.close()
    for t in threads:
        t.join(15)
    assert (
        len(outcomes) == 40
        and set(outcomes) <= {NotificationOutcome.QUEUED, NotificationOutcome.DUPLICATE}
        and NotificationOutcome.QUEUED in outcomes
    )
    assert len(_log(runtime)) == 40
    assert intake.committed_batches <= 3, f"{intake.committed_batches} transactions for 40 notifications"
    with runtime.sessions() as session:
        assert session.get_one(Channel, str(ch["id"])).last_message_number == 41
    assert 1 <= calendar_row(runtime, watched["calendar_id"]).sync_requested - 1 <= intake.committed_batches


def test_two_processes_writing_one_channel_never_lose_the_newest_message(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """Two intakes with their own engines stand for two web processes; row locks keep them exact."""
    ch = watched["channel"]
    other = Runtime.create(runtime.settings)
    try:
        intakes = [Intake(runtime), Intake(other)]
        outcomes: list[str] = []
        errors: list[BaseException] = []

        def send(k: int) -> None:
            try:
                for n in range(k + 2, 402, 8):  # 8 threads, disjoint increasing message numbers
                    outcomes.append(intakes[k % 2].record(push_of(ch, n), {}))
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert len(outcomes) == 400 and len(_log(runtime)) == 400
        assert [n.message_number for n in _log(runtime)].count(401) == 1
        with runtime.sessions() as session:
            assert session.get_one(Channel, str(ch["id"])).last_message_number == 401
        # each queued outcome was newer than every message committed before it, so at least one
        # and never more than there were notifications
        assert 1 <= outcomes.count(NotificationOutcome.QUEUED) <= 400
        assert calendar_row(runtime, watched["calendar_id"]).sync_requested >= 2
    finally:
        other.close()


def test_the_writer_thread_ends_when_idle_and_comes_back(
    runtime: Runtime, watched: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "IDLE_EXIT", 0.05)
    intake, ch = Intake(runtime), watched["channel"]
    assert intake.record(push_of(ch, 5), {}) == NotificationOutcome.QUEUED
    threading.Event().wait(0.3)
    assert not [
        t
        for t in threading.enumerate()
        if t.name == "calsync-intake" and t.is_alive() and getattr(t, "_target", None) == intake._run
    ]
    assert intake.record(push_of(ch, 6), {}) == NotificationOutcome.QUEUED
    assert [n.outcome for n in _log(runtime)] == [NotificationOutcome.QUEUED, NotificationOutcome.QUEUED]


def test_a_writer_whose_connection_the_server_ended_records_on_a_new_one(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """The writer keeps its connection between batches, unpinged: after a killed backend (or a
    restart) the next batch met the dead connection and its notifications were answered 503, though
    the database could record them."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("a SQLite connection is a file, not a server's process")
    intake, ch = Intake(runtime), watched["channel"]
    assert intake.record(push_of(ch, 5), {}) == NotificationOutcome.QUEUED
    with runtime.engine.connect() as admin:
        killed = admin.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    assert killed
    assert intake.record(push_of(ch, 6), {}) == NotificationOutcome.QUEUED
    assert [n.message_number for n in _log(runtime)] == [5, 6]


def test_a_batch_that_cannot_commit_fails_whole_and_keeps_nothing(runtime: Runtime, watched: dict[str, Any]) -> None:
    ch, intake = watched["channel"], Intake(runtime)
    with runtime.sessions() as session:
        seen_before = session.get_one(Channel, str(ch["id"])).last_message_number
    with runtime.engine.begin() as conn:  # the log insert, last in the transaction, now fails
        conn.execute(text("ALTER TABLE notifications RENAME TO notifications_away"))
    try:
        with pytest.raises(IntakeUnavailable):
            intake.record(push_of(ch, 7), {})
    finally:
        with runtime.engine.begin() as conn:
            conn.execute(text("ALTER TABLE notifications_away RENAME TO notifications"))
    assert _log(runtime) == []
    with runtime.sessions() as session:  # the channel and calendar writes rolled back with it
        assert session.get_one(Channel, str(ch["id"])).last_message_number == seen_before
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 1
    assert intake.record(push_of(ch, 7), {}) == NotificationOutcome.QUEUED  # Google's retry then succeeds


def test_sqlite_writers_of_several_processes_take_turns_on_a_lock_file(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """While one process's writer holds its turn, another's batch waits for it, then commits at once
    (no sleeping retry on SQLite's lock); PostgreSQL takes no turn."""
    ch = watched["channel"]
    first, second = Intake(runtime), Intake(runtime)
    if runtime.engine.dialect.name != "sqlite":
        assert first.turn.path is None
        assert second.record(push_of(ch, 5), {}) == NotificationOutcome.QUEUED
        return
    assert first.turn.path == f"{runtime.engine.url.database}-intake.lock"
    answered: list[str] = []
    with first.turn:
        sender = threading.Thread(target=lambda: answered.append(second.record(push_of(ch, 5), {})))
        sender.start()
        sender.join(0.5)
        assert sender.is_alive() and answered == [] and _log(runtime) == []  # waiting for its turn
    sender.join(10)
    assert answered == [NotificationOutcome.QUEUED] and [n.message_number for n in _log(runtime)] == [5]
    first.turn.close()
    second.turn.close()


def test_no_other_sqlite_transaction_starts_while_an_intake_writer_waits_or_writes(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """Every other transaction on the file (a worker's claim, a page of a sync) waits while a writer
    holds its turn, so a batch of notifications waits at most for the transaction already running;
    PostgreSQL's writers queue on the server and pass no gate."""
    intake = Intake(runtime)
    began: list[float] = []

    def other_transaction() -> None:
        with transaction(runtime.sessions) as session:
            session.execute(select(Calendar.id)).all()
            began.append(time.monotonic())

    if runtime.engine.dialect.name != "sqlite":
        with intake.turn:
            other_transaction()
        assert began
        return
    with intake.turn:
        other = threading.Thread(target=other_transaction)
        other.start()
        other.join(0.5)
        assert other.is_alive() and began == []  # not even begun
        released = time.monotonic()
    other.join(10)
    assert began and began[0] >= released
    with intake.turn:  # the same process's writer: its own open file, so still a separate lock
        pass
    other_transaction()  # no writer: straight in
    assert len(began) == 2
    intake.turn.close()


def test_what_queues_while_the_writer_waits_for_the_lock_rides_in_its_batch(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """The writer takes its batch once the write lock is held: on SQLite a notification that arrives
    while another transaction holds the lock is committed with the one already waiting, so no request
    waits for a second transaction's turn."""
    if runtime.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's batch is one statement, with no lock to wait for first")
    ch = watched["channel"]
    intake = Intake(runtime)
    answered: list[NotificationOutcome] = []

    def send(number: int) -> threading.Thread:
        sender = threading.Thread(target=lambda: answered.append(intake.record(push_of(ch, number), {})))
        sender.start()
        return sender

    holder = runtime.engine.raw_connection()  # another writer (the worker's page, say) holds the lock
    cursor = holder.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    try:
        first = send(5)
        time.sleep(0.3)  # the writer is waiting for the lock now
        second = send(6)
        time.sleep(0.3)
        assert answered == [] and intake.committed_batches == 0
    finally:
        holder.rollback()
        holder.close()
    first.join(10)
    second.join(10)
    assert sorted(answered) == [NotificationOutcome.QUEUED] * 2
    assert intake.committed_batches == 1  # one transaction for both
    assert [n.message_number for n in _log(runtime)] == [5, 6]
    intake.turn.close()


def test_other_processes_are_woken_only_for_work_not_owed_before(runtime: Runtime, watched: dict[str, Any]) -> None:
    """A NOTIFY for the first notification that makes a calendar owe a sync, none for the ones that
    find it already owed: PostgreSQL serialises notifying commits, and the workers already know."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    import psycopg

    from calsync.wakeup import CHANNEL

    ch, intake = watched["channel"], Intake(runtime)
    url = runtime.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")

        def notifies() -> int:
            return len(list(listener.notifies(timeout=0.5, stop_after=10)))

        assert intake.record(push_of(ch, 5), {}) == NotificationOutcome.QUEUED
        assert notifies() == 1
        assert [intake.record(push_of(ch, n), {}) for n in (6, 7)] == [
            NotificationOutcome.QUEUED,
            NotificationOutcome.QUEUED,
        ]
        assert notifies() == 0
        assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 4
        with runtime.engine.begin() as conn:  # a worker caught up: the next notification owes anew
            conn.execute(text("UPDATE calendars SET sync_done = sync_requested"))
        assert intake.record(push_of(ch, 8), {}) == NotificationOutcome.QUEUED
        assert notifies() == 1


def test_a_request_that_gave_up_does_not_strand_the_rest_of_its_batch(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """Each request wakes the next of its batch; one that stopped waiting (and answered 503) is passed
    by, so the requests after it are answered when the batch commits, not at their own time-out."""
    ch, intake = watched["channel"], Intake(runtime)
    results: dict[int, Any] = {}
    finished: dict[int, float] = {}

    def send(number: int, timeout: float) -> None:
        try:
            results[number] = intake.record(push_of(ch, number), {}, timeout=timeout)
        except IntakeUnavailable as err:
            results[number] = err
        finished[number] = time.monotonic()

    blocker = runtime.engine.connect()  # another writer holds the database: the intake's batches wait
    if runtime.engine.dialect.name == "sqlite":
        blocker.exec_driver_sql("SELECT 1")  # the engine begins every transaction IMMEDIATE: the write lock
    else:
        blocker.exec_driver_sql("LOCK TABLE notifications IN EXCLUSIVE MODE")
    threads = [threading.Thread(target=send, args=(n, t)) for n, t in ((5, 30.0), (6, 30.0), (7, 0.3), (8, 30.0))]
    try:
        for t in threads:
            t.start()
            time.sleep(0.05)  # in this order: 5 alone in the first batch, 6, 7 and 8 queued behind it
        time.sleep(0.6)
        assert isinstance(results.get(7), IntakeUnavailable)  # gave up while the database was held
    finally:
        blocker.rollback()
        blocker.close()
    released = time.monotonic()
    for t in threads:
        t.join(20)
    assert [results[n] for n in (5, 6, 8)] == [
        NotificationOutcome.QUEUED,
        NotificationOutcome.QUEUED,
        NotificationOutcome.QUEUED,
    ]
    assert max(finished[n] for n in (5, 6, 8)) - released < 5  # well before their 30 s time-out
    assert sorted(n.message_number or -1 for n in _log(runtime)) == [5, 6, 7, 8]  # 7 was recorded all the same


def test_submitted_notifications_share_a_batch_with_waiting_ones_and_are_handed_back_once_per_batch(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    """A caller that cannot block (the web server's event loop) submits; its items ride in the same
    transaction as the waiting requests' and come back together, each with its own outcome."""
    intake, ch = Intake(runtime), watched["channel"]
    handed_back: list[list[Item]] = []
    blocker = runtime.engine.connect()
    blocker.begin()  # the writer's first batch waits (see test_notifications_waiting_together_share_a_transaction)
    if runtime.engine.dialect.name == "postgresql":
        blocker.execute(select(Channel.id).where(Channel.id == str(ch["id"])).with_for_update())
    outcomes: list[str] = []
    waiting = [threading.Thread(target=lambda n=n: outcomes.append(intake.record(push_of(ch, n), {}))) for n in (2, 4)]
    for t in waiting:
        t.start()
    for n in (3, 3, 5):
        intake.submit(push_of(ch, n), {}, handed_back.append, tag=n)
    intake.submit(push_of({**ch, "token": "forged"}, 6), {}, handed_back.append, tag=6)
    threading.Event().wait(0.5)
    blocker.rollback()
    blocker.close()
    for t in waiting:
        t.join(15)
    deadline = time.monotonic() + 15
    while sum(map(len, handed_back)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(outcomes) == 2 and intake.committed_batches <= 2
    assert 1 <= len(handed_back) <= intake.committed_batches  # once per batch, not once per item
    items = [item for batch in handed_back for item in batch]
    assert [item.tag for item in items] == [3, 3, 5, 6]  # in the order submitted
    assert not any(item.failed for item in items)
    by_tag = [(item.tag, item.outcome) for item in items]
    assert by_tag[1] == (3, NotificationOutcome.DUPLICATE) and by_tag[3] == (6, NotificationOutcome.BAD_TOKEN)
    with runtime.sessions() as session:
        assert session.get_one(Channel, str(ch["id"])).last_message_number == 5


def test_submitted_notifications_of_a_batch_that_cannot_commit_come_back_failed(
    runtime: Runtime, watched: dict[str, Any]
) -> None:
    ch, intake = watched["channel"], Intake(runtime)
    handed_back: list[list[Item]] = []
    with runtime.engine.begin() as conn:  # the log insert, last in the transaction, now fails
        conn.execute(text("ALTER TABLE notifications RENAME TO notifications_away"))
    try:
        intake.submit(push_of(ch, 7), {}, handed_back.append, tag=None)
        deadline = time.monotonic() + 15
        while not handed_back and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        with runtime.engine.begin() as conn:
            conn.execute(text("ALTER TABLE notifications_away RENAME TO notifications"))
    [[item]] = handed_back
    assert item.failed  # what its batch had decided was never committed
    assert _log(runtime) == []
