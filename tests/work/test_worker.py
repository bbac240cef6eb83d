"""The worker: claims under leases, coalescing, reconciliation, channels after the first sync, errors."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, make_url, select, update
from sqlalchemy.exc import OperationalError

from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.push.channels import replace_channel
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Channel, WorkerHeartbeat
from calsync.store.owed import owe_list_refresh, owe_sync, request_calendar_sync
from calsync.work.jobs import run_calendar_job
from calsync.work.leases import claim_calendar
from calsync.work.worker import Worker
from tests.push_support import (
    account_row,
    calendar_id_of,
    calendar_row,
    changes_for,
    channels_of,
    connect_account,
    wait_for,
)
from tests.sync_support import mirror
from tests.work_support import idle_worker

LEASE = timedelta(seconds=60)
EVENT = {
    "summary": "Standup",
    "start": {"dateTime": "2026-12-01T10:00:00Z"},
    "end": {"dateTime": "2026-12-01T10:15:00Z"},
}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def rt(settings: Settings, clock: FrozenClock) -> Any:
    runtime = Runtime.create(settings, clock=clock)
    yield runtime
    runtime.close()


def _connected(rt: Any, emu: Any, email: str = "ann@example.com") -> tuple[int, int]:
    account_id = connect_account(rt, emu, email)
    Worker(rt, threads=1).run_burst()
    return account_id, calendar_id_of(rt, email)


def _request(rt: Any, calendar_id: int, times: int = 1) -> None:
    for _ in range(times):
        with transaction(rt.sessions) as session:
            request_calendar_sync(session, calendar_id, rt.clock.now())


def test_a_new_account_gets_its_calendars_synced_then_watched(rt: Any, emu: Any) -> None:
    account_id = connect_account(rt, emu, "ann@example.com")
    emu.insert_event("ann@example.com", EVENT)
    Worker(rt, threads=1).run_burst()
    cal = calendar_row(rt, calendar_id_of(rt, "ann@example.com"))
    assert cal.baseline_done and cal.sync_state == "synced" and cal.sync_done == cal.sync_requested
    assert cal.lease_owner is None
    kinds = sorted((c.kind, c.status) for c in channels_of(rt, account_id=account_id))
    assert kinds == [("calendar_list", "active"), ("events", "active")]
    assert sorted(c["kind"] for c in emu.channels()) == ["calendarList", "events"]
    # The watch came after the baseline, and one incremental sync covers the seam.
    methods = [r.api_method for r in emu.requests if r.api_method.startswith("calendar.events")]
    assert methods == ["calendar.events.list", "calendar.events.watch", "calendar.events.list"]
    # The first sync is the feed's snapshot: one row per event, nothing else.
    assert [(c.type, (c.after or {}).get("summary")) for c in changes_for(rt)] == [("event.snapshot", EVENT["summary"])]


def test_many_requests_while_waiting_cost_one_sync(rt: Any, emu: Any) -> None:
    _, cal_id = _connected(rt, emu)
    before = emu.count("calendar.events.list", "ann@example.com")
    _request(rt, cal_id, times=50)
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "ann@example.com") == before + 1


def test_requests_during_a_sync_cause_exactly_one_more(rt: Any, emu: Any) -> None:
    _, cal_id = _connected(rt, emu)
    before = emu.count("calendar.events.list", "ann@example.com")
    _request(rt, cal_id)
    with transaction(rt.sessions) as session:
        claim = claim_calendar(session, "w/0", rt.clock.now(), LEASE)
    assert claim is not None and claim.id == cal_id
    _request(rt, cal_id, times=5)  # notifications that arrive while the sync runs
    run_calendar_job(rt, claim)
    cal = calendar_row(rt, cal_id)
    # One more is owed, due once the minimum interval since this sync began has passed.
    assert claim.claimed_at is not None
    follow_up = claim.claimed_at + rt.settings.sync_min_interval
    assert cal.sync_done == claim.requested < cal.sync_requested and cal.due_at == follow_up
    _request(rt, cal_id, times=5)  # more while it waits: still that one sync, still at that time
    assert calendar_row(rt, cal_id).due_at == follow_up
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "ann@example.com") == before + 1
    rt.clock.set(follow_up)
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "ann@example.com") == before + 2
    assert calendar_row(rt, cal_id).sync_done == calendar_row(rt, cal_id).sync_requested


def test_reconciliation_syncs_without_any_notification(rt: Any, emu: Any, clock: FrozenClock) -> None:
    _, cal_id = _connected(rt, emu)
    cal = calendar_row(rt, cal_id)
    assert (
        cal.due_at is not None and clock.now() < cal.due_at <= clock.now() + rt.settings.reconcile_every
    )  # at the calendar's own phase of the period
    emu.insert_event("ann@example.com", EVENT)  # its notification goes nowhere: no receiver runs
    before = emu.count("calendar.events.list", "ann@example.com")
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "ann@example.com") == before
    clock.advance(rt.settings.reconcile_every + timedelta(seconds=1))
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "ann@example.com") == before + 1
    assert [c.kind for c in changes_for(rt, cal_id)] == ["created"]


def test_a_lapsed_lease_is_reclaimed_by_another_worker(rt: Any, emu: Any, clock: FrozenClock) -> None:
    _, cal_id = _connected(rt, emu)
    _request(rt, cal_id)
    with transaction(rt.sessions) as session:
        assert claim_calendar(session, "dead/0", clock.now(), LEASE) is not None
    with transaction(rt.sessions) as session:
        assert claim_calendar(session, "other/0", clock.now(), LEASE) is None
    clock.advance(61)
    with transaction(rt.sessions) as session:
        claim = claim_calendar(session, "other/0", clock.now(), LEASE)
    assert claim is not None and claim.id == cal_id


def test_a_claim_whose_commit_answer_was_lost_is_given_back_by_its_thread(rt: Any, emu: Any) -> None:
    """The claim's COMMIT is made and its answer lost (the connection drops at that moment): the thread
    sees the database away and tries again, while the calendar stays leased to it, its worker beating.
    Nobody took it before the lease ran out (two minutes of changes held back); the thread now gives
    back what a failed pass may have left it holding."""
    _, cal_id = _connected(rt, emu)
    made = emu.insert_event("ann@example.com", EVENT)
    lost: list[bool] = []

    @event.listens_for(rt.sessions, "do_orm_execute")
    def leasing(state: Any) -> None:
        params = state.parameters
        if isinstance(params, dict) and {"owner", "until"} <= params.keys():  # a claim's lease being written
            state.session.info["leased"] = True

    @event.listens_for(rt.sessions, "after_commit")
    def lose_the_answer(session: Any) -> None:
        if session.info.pop("leased", False) and not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    _request(rt, cal_id)
    stop = threading.Event()
    thread = threading.Thread(target=Worker(rt, threads=1).run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: made["id"] in mirror(rt, cal_id), timeout=10, what="the event synced after the lost answer")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert lost == [True] and calendar_row(rt, cal_id).lease_owner is None


def test_a_channel_stop_put_off_is_made_by_the_accounts_next_list_refresh(
    rt: Any, emu: Any, clock: FrozenClock
) -> None:
    account_id, cal_id = _connected(rt, emu)
    [old] = [c.id for c in channels_of(rt, calendar_id=cal_id)]
    emu.fail_next(1, status=503, reason="backendError", method="calendar.channels.stop")
    replace_channel(rt, calendar_id=cal_id)
    assert old in [c["id"] for c in emu.channels()]
    clock.advance(61)  # the user's budget has room again for a cleanup's call
    with transaction(rt.sessions) as session:
        session.execute(update(Account).where(Account.id == account_id).values(**owe_list_refresh(rt.clock.now())))
    Worker(rt, threads=1).run_burst()
    assert old not in [c["id"] for c in emu.channels()]


def test_a_job_whose_lease_was_taken_over_writes_nothing(rt: Any, emu: Any) -> None:
    _, cal_id = _connected(rt, emu)
    emu.insert_event("ann@example.com", EVENT)
    _request(rt, cal_id)
    with transaction(rt.sessions) as session:
        claim = claim_calendar(session, "slow/0", rt.clock.now(), LEASE)
        session.execute(update(Calendar).values(lease_owner="fast/0"))
    assert claim is not None
    run_calendar_job(rt, claim)
    cal = calendar_row(rt, cal_id)
    assert cal.lease_owner == "fast/0" and cal.sync_done < cal.sync_requested
    assert changes_for(rt) == []


def test_concurrent_claims_take_different_calendars(rt: Any, emu: Any) -> None:
    account_id = connect_account(rt, emu, "ann@example.com")
    for i in range(6):
        emu.create_calendar("ann@example.com", f"cal {i}")
    Worker(rt, threads=1).run_burst()
    with rt.sessions() as session:
        ids = list(session.scalars(select(Calendar.id).where(Calendar.account_id == account_id)))
    for cal_id in ids:
        _request(rt, cal_id)
    claims: list[Any] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        while True:
            with transaction(rt.sessions) as session:
                got = claim_calendar(session, f"t/{i}", rt.clock.now(), LEASE)
            if got is None:
                return
            with lock:
                claims.append(got)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.id for c in claims) == sorted(ids)


def test_calendars_of_inactive_accounts_are_not_claimed(rt: Any, emu: Any) -> None:
    account_id, cal_id = _connected(rt, emu)
    _request(rt, cal_id)
    with transaction(rt.sessions) as session:
        session.execute(update(Account).where(Account.id == account_id).values(status="reauth_required"))
        assert claim_calendar(session, "w/0", rt.clock.now(), LEASE) is None


def test_a_calendar_added_in_google_is_synced_and_watched(rt: Any, emu: Any) -> None:
    _account_id, _ = _connected(rt, emu)
    new_google_id = emu.create_calendar("ann@example.com", "Team")
    with transaction(rt.sessions) as session:  # what the calendar-list notification does
        session.execute(update(Account).values(list_requested=Account.list_requested + 1, list_due_at=rt.clock.now()))
    Worker(rt, threads=1).run_burst()
    cal = calendar_row(rt, calendar_id_of(rt, new_google_id))
    assert cal.baseline_done and cal.sync_state == "synced"
    assert [c.status for c in channels_of(rt, calendar_id=cal.id)] == ["active"]
    assert any(c["calendar_id"] == new_google_id for c in emu.channels())


def test_a_calendar_removed_in_google_loses_its_channel_at_once(rt: Any, emu: Any) -> None:
    connect_account(rt, emu, "ann@example.com")
    team = emu.create_calendar("ann@example.com", "Team")
    Worker(rt, threads=1).run_burst()
    team_id = calendar_id_of(rt, team)
    emu.remove_calendar("ann@example.com", team)
    with transaction(rt.sessions) as session:
        session.execute(update(Account).values(list_requested=Account.list_requested + 1, list_due_at=rt.clock.now()))
    Worker(rt, threads=1).run_burst()
    assert calendar_row(rt, team_id).removed_at is not None
    assert [c.status for c in channels_of(rt, calendar_id=team_id)] == ["stopped"]
    assert not any(c["calendar_id"] == team for c in emu.channels())
    assert emu.count("calendar.channels.stop") == 1
    before = emu.count("calendar.events.list", team)
    _request(rt, team_id)
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", team) == before


def test_a_calendar_google_no_longer_knows_asks_for_a_list_refresh(rt: Any, emu: Any) -> None:
    account_id, cal_id = _connected(rt, emu)
    list_before = account_row(rt, account_id).list_requested
    emu.fail_next(1, status=404, reason="notFound", method="calendar.events.list")
    _request(rt, cal_id)
    worker = Worker(rt, threads=1)
    worker.start_up()
    with transaction(rt.sessions) as session:
        claim = claim_calendar(session, "w/0", rt.clock.now(), LEASE)
    assert claim is not None
    run_calendar_job(rt, claim)
    cal = calendar_row(rt, cal_id)
    assert cal.sync_state == "error" and "GoogleNotFound" in (cal.last_error or "")
    assert cal.retry_at is not None and cal.retry_at >= rt.clock.now() + rt.settings.reconcile_every
    assert account_row(rt, account_id).list_requested == list_before + 1


def test_forbidden_is_an_error_with_a_long_retry(rt: Any, emu: Any) -> None:
    _, cal_id = _connected(rt, emu)
    emu.fail_next(1, status=403, reason="forbidden", method="calendar.events.list")
    _request(rt, cal_id)
    Worker(rt, threads=1).run_burst()
    cal = calendar_row(rt, cal_id)
    assert cal.sync_state == "error" and cal.error_count == 1
    assert cal.due_at is not None and cal.due_at >= rt.clock.now() + rt.settings.reconcile_every


def test_a_revoked_grant_stops_that_account_only(rt: Any, emu: Any) -> None:
    ann, ann_cal = _connected(rt, emu, "ann@example.com")
    bob, bob_cal = _connected(rt, emu, "bob@example.com")
    emu.revoke_grant("ann@example.com")
    emu.expire_access_tokens()
    emu.insert_event("bob@example.com", EVENT)
    _request(rt, ann_cal)
    _request(rt, bob_cal)
    Worker(rt, threads=1).run_burst()
    assert account_row(rt, ann).status == "reauth_required"
    assert {c.status for c in channels_of(rt, account_id=ann)} == {"stopped"}
    assert calendar_row(rt, ann_cal).lease_owner is None
    assert account_row(rt, bob).status == "active"
    assert {c.status for c in channels_of(rt, account_id=bob)} == {"active"}
    assert [c.kind for c in changes_for(rt, bob_cal)] == ["created"]
    ann_calls = emu.count("calendar.events.list", "ann@example.com")
    _request(rt, ann_cal)
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "ann@example.com") == ann_calls


def test_heartbeat_is_written_and_removed_on_clean_exit(rt: Any, emu: Any) -> None:
    worker = Worker(rt, name="hb-test", threads=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: _heartbeat(rt, "hb-test"), timeout=5, what="heartbeat row")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert _heartbeat(rt, "hb-test") is None


def _heartbeat(rt: Runtime, name: str) -> WorkerHeartbeat | None:
    with rt.sessions() as session:
        return session.get(WorkerHeartbeat, name)


def test_channel_rows_for_synced_calendars_are_never_left_pending(rt: Any, emu: Any) -> None:
    _connected(rt, emu)
    with rt.sessions() as session:
        assert session.scalars(select(Channel).where(Channel.status == "pending")).all() == []


def test_a_notify_from_another_process_wakes_this_one_at_once(rt: Any) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; on SQLite the host's datagrams do it (tests/test_wakeup.py)")
    import time

    from calsync.wakeup import Wakeup
    from calsync.work.listen import Listener

    here = Wakeup()  # this process's waiters; the NOTIFY below comes from another connection
    stop = threading.Event()
    listener = Listener(rt.engine.url, here, stop)
    listener.start()
    try:
        assert listener.ready.wait(10)
        time.sleep(0.05)
        generation = here.generation()
        started = time.monotonic()
        with transaction(rt.sessions) as session:
            Wakeup().notify_after_commit(session)  # what the receiver does in some web process
        assert here.wait(generation, timeout=5)
        latency = time.monotonic() - started
    finally:
        stop.set()
        listener.join(timeout=5)
    assert latency < 0.5 and not listener.is_alive()


def test_the_claim_says_whether_another_calendar_waits(rt: Any, emu: Any) -> None:
    connect_account(rt, emu, "ann@example.com")
    emu.create_calendar("ann@example.com", "Team")
    Worker(rt, threads=1).run_burst()
    with rt.sessions() as session:
        ids = list(session.scalars(select(Calendar.id)))
    for cal_id in ids:
        _request(rt, cal_id)
    with transaction(rt.sessions) as session:
        first = claim_calendar(session, "w/0", rt.clock.now(), LEASE)
    with transaction(rt.sessions) as session:
        second = claim_calendar(session, "w/1", rt.clock.now(), LEASE)
    assert first is not None and second is not None and first.id != second.id
    assert first.more_due and not second.more_due  # the first is leased by the time of the second


def test_a_thread_that_takes_one_of_several_due_calendars_wakes_another(rt: Any, emu: Any) -> None:
    connect_account(rt, emu, "ann@example.com")
    emu.create_calendar("ann@example.com", "Team")
    worker = Worker(rt, threads=1)
    worker.run_burst()
    with rt.sessions() as session:
        ids = list(session.scalars(select(Calendar.id).order_by(Calendar.id)))
    _request(rt, ids[0])
    before = rt.wakeup.generation()
    assert worker.work_once("w/0") == 1
    assert rt.wakeup.generation() == before  # it was the only one: nobody else is woken for nothing
    for cal_id in ids:
        _request(rt, cal_id)
    assert worker.work_once("w/0") == 1
    assert rt.wakeup.generation() > before  # the other waits: an idle thread is told


def test_an_incremental_sync_job_is_one_transaction_after_its_claim(rt: Any, emu: Any) -> None:
    from sqlalchemy import event

    _, cal_id = _connected(rt, emu)
    emu.insert_event("ann@example.com", EVENT)
    _request(rt, cal_id)
    with transaction(rt.sessions) as session:
        claim = claim_calendar(session, "w/0", rt.clock.now(), LEASE, rt.settings.renew_before)
        assert claim is not None and claim.calendar is not None and claim.calendar.sync_token
        # As the worker does: the job's first call is taken from the quota budget in the claim's transaction.
        assert rt.budget.prepay(session, claim.priority, claim.calendar.account_id) == 0.0
    begun: list[object] = []

    def count(conn: object) -> None:
        begun.append(conn)

    event.listen(rt.engine, "begin", count)
    try:
        run_calendar_job(rt, claim)
    finally:
        event.remove(rt.engine, "begin", count)
    # The claim read the calendar and its channel and paid for the call; the page, its changes, the
    # new token, the lease's release and the owed count commit together.
    assert len(begun) == 1
    cal = calendar_row(rt, cal_id)
    assert cal.lease_owner is None and cal.sync_done == cal.sync_requested and cal.sync_state == "synced"
    assert [c.kind for c in changes_for(rt, cal_id)] == ["created"]


def test_one_wake_up_gets_every_due_calendar_synced_without_polling(
    rt: Any, emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import calsync.work.worker

    monkeypatch.setattr(calsync.work.worker, "POLL_SECONDS", 3600.0)  # only wake-ups can start work
    connect_account(rt, emu, "ann@example.com")
    for i in range(3):
        emu.create_calendar("ann@example.com", f"cal {i}")
    Worker(rt, threads=1).run_burst()
    with rt.sessions() as session:
        rows = session.execute(select(Calendar.id, Calendar.google_id)).all()
    ids = [r.id for r in rows]
    for row in rows:
        emu.insert_event(row.google_id, EVENT)
    worker = Worker(rt, threads=3)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: len(rt.wakeup._cond._waiters) == 3, timeout=10, what="three idle threads")
        with transaction(rt.sessions) as session:
            for cal_id in ids:
                request_calendar_sync(session, cal_id, rt.clock.now())
        rt.wakeup.notify_local()  # one wake-up, as a notification batch gives
        wait_for(
            lambda: all(calendar_row(rt, c).sync_done == calendar_row(rt, c).sync_requested for c in ids),
            timeout=20,
            what="every calendar synced",
        )
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(changes_for(rt)) == len(ids)


def test_on_sqlite_a_worker_with_nothing_to_claim_takes_no_write_lock(rt: Any, emu: Any) -> None:
    """A thread that wakes with nothing due reads, and takes no write transaction: the notification
    intake waits for SQLite's one write lock. With a calendar due it claims and syncs, and does not
    look for a calendar list while it holds the lock; with a list due it takes the list."""
    account_id, cal_id = _connected(rt, emu)
    with transaction(rt.sessions) as session:
        session.execute(update(Account).values(list_due_at=rt.clock.now() + timedelta(hours=1)))
    begun: list[str] = []
    locked: list[str] = []  # statements run while a write transaction is open

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            begun.append(statement)
        elif begun and len(begun) > len(ended):
            locked.append(statement)

    ended: list[None] = []
    event.listen(rt.engine, "before_cursor_execute", seen)
    event.listen(rt.engine, "commit", lambda _conn: ended.append(None) if len(begun) > len(ended) else None)
    worker = Worker(rt, threads=1)
    try:
        assert worker.work_once("w/0") == 0
        empty = len(begun)
        _request(rt, cal_id)
        assert worker.work_once("w/0") == 1
        calendar_claim = list(locked)
        with transaction(rt.sessions) as session:
            session.execute(update(Account).values(list_due_at=rt.clock.now()))
        assert worker.work_once("w/0") == 1
    finally:
        event.remove(rt.engine, "before_cursor_execute", seen)
    with rt.sessions() as session:
        calendar = session.get(Calendar, cal_id)
        account = session.get(Account, account_id)
        assert calendar is not None and calendar.sync_done == calendar.sync_requested
        assert account is not None and account.list_due_at > rt.clock.now()  # the list was refreshed
    if rt.engine.dialect.name == "sqlite":
        assert empty == 0
        assert calendar_claim  # the claim and the sync did write
        assert not [s for s in calendar_claim if "list_due_at" in s]


@pytest.fixture
def live_rt(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A runtime on the real clock, whose worker threads only look when woken: polling every hour."""
    import calsync.work.worker

    monkeypatch.setattr(calsync.work.worker, "POLL_SECONDS", 3600.0)
    runtime = Runtime.create(dataclasses.replace(settings, sync_min_interval=timedelta(seconds=2)))
    yield runtime
    runtime.close()


@contextlib.contextmanager
def _working(rt: Any, threads: int) -> Iterator[Worker]:
    with _working_with(Worker(rt, threads=threads)) as worker:
        yield worker


def test_a_sync_that_failed_is_retried_when_its_backoff_ends_not_at_the_next_poll(live_rt: Any, emu: Any) -> None:
    rt = live_rt
    _, cal_id = _connected(rt, emu)
    emu.fail_next(1, status=503, reason="backendError", retry_after=1, method="calendar.events.list")
    emu.insert_event("ann@example.com", EVENT)
    _request(rt, cal_id)
    started = time.monotonic()
    with _working(rt, threads=1):  # its first pass claims the sync, which fails: retry in 1 to 2 s
        wait_for(lambda: calendar_row(rt, cal_id).error_count == 1, timeout=10, what="the failed sync recorded")
        wait_for(lambda: len(changes_for(rt, cal_id)) == 1, timeout=10, what="the retry's change")
    assert 1.0 <= time.monotonic() - started < 8.0
    assert calendar_row(rt, cal_id).error_count == 0


def test_the_follow_up_of_a_notification_during_a_sync_runs_after_the_minimum_interval(live_rt: Any, emu: Any) -> None:
    """A notification that comes while its calendar syncs owes one more sync, put off to the minimum
    interval after the first began; no wake-up is sent for it (the work was owed already)."""
    rt = live_rt
    _, cal_id = _connected(rt, emu)
    emu.slow_next(1, 0.5, method="calendar.events.list")  # well within the minimum interval (2 s)
    emu.insert_event("ann@example.com", EVENT)
    _request(rt, cal_id)
    lists_before = _event_lists(emu)
    with _working(rt, threads=2):
        wait_for(lambda: calendar_row(rt, cal_id).lease_owner is not None, timeout=10, what="the sync under way")
        _request(rt, cal_id)  # as the receiver owes it: no wake-up for work already owed
        wait_for(lambda: _event_lists(emu) == lists_before + 1, timeout=10, what="the first listing")
        first_done = time.monotonic()
        wait_for(lambda: _event_lists(emu) == lists_before + 2, timeout=10, what="the follow-up listing")
        waited = time.monotonic() - first_done
        wait_for(lambda: _settled(rt, cal_id), timeout=10, what="every request settled")
    assert 0.5 < waited < 4.0, "the follow-up came before its minimum interval, or not when it came due"
    assert len(changes_for(rt, cal_id)) == 1


def _event_lists(emu: Any) -> int:
    return sum(1 for r in emu.requests if r.api_method == "calendar.events.list")


def _settled(rt: Any, cal_id: int) -> bool:
    row = calendar_row(rt, cal_id)
    return bool(row.sync_done == row.sync_requested and row.lease_owner is None)


def test_a_pass_that_failed_is_tried_again_without_waiting_for_another_wake_up(
    settings: Settings, emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up that started a pass is spent when the pass fails (here SQLite's write lock, held
    elsewhere past the busy timeout); the work it woke the thread for is tried again shortly after."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the fault is SQLite's write lock held by another connection")
    import calsync.store.db
    import calsync.work.worker

    monkeypatch.setattr(calsync.work.worker, "POLL_SECONDS", 3600.0)  # only wake-ups can start work
    monkeypatch.setattr(calsync.store.db, "SQLITE_BUSY_TIMEOUT_MS", 300)  # read as each connection opens
    rt = Runtime.create(settings)
    try:
        _, cal_id = _connected(rt, emu)
        emu.insert_event("ann@example.com", EVENT)
        due = rt.clock.now() + timedelta(seconds=2)
        with transaction(rt.sessions) as session:  # owed from a moment on, and no wake-up for it
            session.execute(
                update(Calendar)
                .where(Calendar.id == cal_id)
                .values(sync_requested=Calendar.sync_requested + 1, due_at=due)
            )
        worker = Worker(rt, threads=1)
        worker.tick_seconds = 3600.0  # no scheduler pass to wake anyone meanwhile
        holder = sqlite3.connect(make_url(settings.database_url).database or "", isolation_level=None)
        try:
            with _working_with(worker):
                idle = rt.wakeup._cond._waiters  # type: ignore[attr-defined]
                wait_for(lambda: len(idle) == 1, timeout=10, what="the thread idle, nothing due yet")
                holder.execute("BEGIN IMMEDIATE")
                rows_before = holder.execute("SELECT count(*) FROM changes").fetchone()
                time.sleep(max(0.0, (due - rt.clock.now()).total_seconds()) + 0.1)
                rt.wakeup.notify_local()  # a notification's wake-up: the claim meets the held lock
                time.sleep(1.0)  # past the busy timeout: the pass failed
                assert holder.execute("SELECT count(*) FROM changes").fetchone() == rows_before
                holder.execute("ROLLBACK")
                wait_for(lambda: len(changes_for(rt, cal_id)) == 1, timeout=10, what="the pass tried again")
        finally:
            holder.close()
    finally:
        rt.close()


@contextlib.contextmanager
def _working_with(worker: Worker) -> Iterator[Worker]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_calendar_whose_row_another_transaction_held_during_the_claim_is_synced_soon_after(
    runtime: Runtime, emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim passes by a row another transaction holds (SKIP LOCKED): a receiver marking an owed calendar
    owed once more holds it, and sends no NOTIFY for work already owed. The worker must look again soon,
    not at its next poll (slowed here to 30 s)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's: on SQLite a claim waits for the write lock instead")
    import calsync.work.worker

    monkeypatch.setattr(calsync.work.worker, "POLL_SECONDS", 30.0)
    connect_account(runtime, emu, "ann@example.com")
    Worker(runtime, threads=1).run_burst()
    cal_id = calendar_id_of(runtime, "ann@example.com")
    before = len(changes_for(runtime, cal_id))
    with idle_worker(runtime):
        emu.insert_event("ann@example.com", EVENT)
        _request(runtime, cal_id)  # owed and due, committed without a wake-up
        with runtime.engine.connect() as receiver, receiver.begin():
            # Owed once more (the row stays locked until this commit, which wakes nobody) ...
            receiver.execute(update(Calendar).where(Calendar.id == cal_id).values(**owe_sync(runtime.clock.now())))
            time.sleep(0.3)
            runtime.wakeup.notify_local()  # ... while the wake-up that came with the first request is spent
            time.sleep(0.5)
            assert len(changes_for(runtime, cal_id)) == before  # the claim found the row held
        started = time.monotonic()
        wait_for(lambda: len(changes_for(runtime, cal_id)) > before, timeout=5, what="the sync after the row was freed")
        assert time.monotonic() - started < 2.0


def test_a_calendar_owed_to_a_notification_goes_before_a_periodic_list_refresh(rt: Any, emu: Any) -> None:
    """Lists were claimed first, whatever their class: after an outage, or with many accounts, every
    thread drained the due routine refreshes (reconciliations) before any notification's sync."""
    _connected(rt, emu, "ann@example.com")
    bob, _ = _connected(rt, emu, "bob@example.com")
    ann_calendar = calendar_id_of(rt, "ann@example.com")
    with transaction(rt.sessions) as session:  # bob's routine refresh is due; ann's calendar owes a sync
        session.execute(update(Account).where(Account.id == bob).values(list_due_at=rt.clock.now()))
        request_calendar_sync(session, ann_calendar, rt.clock.now())
    seen = len(emu.requests)
    Worker(rt, threads=1).run_burst()
    calls = [
        r.api_method
        for r in emu.requests[seen:]
        if r.api_method in ("calendar.events.list", "calendar.calendarList.list")
    ]
    assert calls[:2] == ["calendar.events.list", "calendar.calendarList.list"], calls
