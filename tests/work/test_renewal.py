"""Channel renewal: replaced before expiry (new first, old stopped, seam synced), recreated after downtime."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.states import ChannelKind, ChannelStatus
from calsync.work.scheduler import due_channels
from calsync.work.worker import Worker
from tests.push_support import (
    calendar_id_of,
    changes_for,
    channels_of,
    connect_account,
    wait_for,
)

EVENT = {"summary": "Seam", "start": {"dateTime": "2026-12-03T09:00:00Z"}, "end": {"dateTime": "2026-12-03T09:30:00Z"}}


@pytest.fixture
def rt(settings: Settings, emu: Any) -> Any:
    """A frozen clock shared with the emulator, so Google's expirations move with calsync's time."""
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    runtime = Runtime.create(settings, clock=clock)
    real_clock, emu.clock = emu.clock, clock.now
    yield runtime
    emu.clock = real_clock
    runtime.close()


def _setup(rt: Any, emu: Any) -> tuple[int, int]:
    account_id = connect_account(rt, emu, "ann@example.com")
    Worker(rt, threads=1).run_burst()
    return account_id, calendar_id_of(rt, "ann@example.com")


def test_a_channel_near_expiry_is_replaced_and_the_seam_synced(rt: Any, emu: Any) -> None:
    account_id, cal_id = _setup(rt, emu)
    old = {c.kind: c for c in channels_of(rt, account_id=account_id)}
    lists_before = emu.count("calendar.events.list", "ann@example.com")
    emu.insert_event("ann@example.com", EVENT)  # made while nobody listens: only the seam sync sees it
    # Renewal is timed from the expiry Google granted (7 days asked and granted), not from the TTL.
    expires_at = old[ChannelKind.EVENTS].expires_at
    assert expires_at is not None
    rt.clock.set(expires_at - rt.settings.renew_before + timedelta(seconds=1))
    Worker(rt, threads=1).run_burst()

    rows = channels_of(rt, account_id=account_id)
    active = {c.kind: c for c in rows if c.status == ChannelStatus.ACTIVE}
    assert set(active) == set(ChannelKind)
    for kind in ChannelKind:
        stopped = next(c for c in rows if c.id == old[kind].id)
        assert (stopped.status, stopped.replaced_by) == (ChannelStatus.STOPPED, active[kind].id)
    assert sorted(c["id"] for c in emu.channels()) == sorted(c.id for c in active.values())
    assert emu.count("calendar.channels.stop") == 2
    assert emu.count("calendar.events.list", "ann@example.com") == lists_before + 1
    assert [c.kind for c in changes_for(rt, cal_id)] == ["created"]
    # Order at the seam: watch the new channel, stop the old, then list.
    log = [(r.api_method, r.calendar_id) for r in emu.requests]
    watch = max(i for i, r in enumerate(log) if r == ("calendar.events.watch", "ann@example.com"))
    listed = max(i for i, r in enumerate(log) if r == ("calendar.events.list", "ann@example.com"))
    assert watch < listed and "calendar.channels.stop" in [m for m, _ in log[watch:listed]]


def test_channels_that_expired_while_calsync_was_down_are_recreated_at_start(rt: Any, emu: Any) -> None:
    account_id, _ = _setup(rt, emu)
    old = channels_of(rt, account_id=account_id)
    rt.clock.advance(days=8)
    Worker(rt, threads=1).run_burst()
    rows = channels_of(rt, account_id=account_id)
    assert emu.channels() == [c for c in emu.channels() if c["id"] not in {o.id for o in old}]
    assert {c.id: c.status for c in rows if c.id in {o.id for o in old}} == {o.id: "expired" for o in old}
    fresh = [c for c in rows if c.status == "active"]
    assert sorted(c.kind for c in fresh) == ["calendar_list", "events"]
    assert all(c.expires_at is not None and c.expires_at > rt.clock.now() for c in fresh)


def test_a_synced_calendar_without_a_channel_gets_one_when_a_worker_starts(rt: Any, emu: Any) -> None:
    account_id, _cal_id = _setup(rt, emu)
    with rt.sessions.begin() as session:
        session.execute(text("DELETE FROM channels"))
    Worker(rt, threads=1).run_burst()
    assert sorted((c.kind, c.status) for c in channels_of(rt, account_id=account_id)) == [
        ("calendar_list", "active"),
        ("events", "active"),
    ]


def test_finding_due_channels_reads_the_index_not_the_table(rt: Any) -> None:
    stmt = due_channels(rt.clock.now())
    with rt.engine.connect() as conn:
        compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
        if rt.engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))  # tiny tables would be scanned anyway
            plan = " ".join(r[0] for r in conn.execute(text(f"EXPLAIN {compiled}")))
        else:
            plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "ix_channels_status_expires_at" in plan


@pytest.mark.slow
def test_short_lived_channels_renewed_again_and_again_miss_no_change(
    settings: Settings, emu: Any, runtime: Runtime, live_server: str
) -> None:
    """Real time: 4-second channels renewed 2 s before expiry, edits all along, for about 6 renewals
    (at least 3 asked for: on two busy cores a renewal can come late)."""
    short = Runtime(
        settings=Settings(
            **{**settings.__dict__, "channel_ttl": timedelta(seconds=4), "renew_before": timedelta(seconds=2)}
        ),
        engine=runtime.engine,
        sessions=runtime.sessions,
        cipher=runtime.cipher,
        wakeup=runtime.wakeup,
    )
    account_id = connect_account(short, emu, "ann@example.com")
    stop = threading.Event()
    worker = threading.Thread(target=Worker(short, threads=2).run, args=(stop,))
    worker.start()
    try:
        cal_id = wait_for(lambda: _synced_calendar(short), timeout=10, what="first sync")
        inserted = []
        for i in range(24):
            inserted.append(emu.insert_event("ann@example.com", {**EVENT, "summary": f"edit {i}"})["id"])
            threading.Event().wait(0.5)
        wait_for(lambda: len(changes_for(short, cal_id)) >= len(inserted), timeout=10, what="all changes")
    finally:
        stop.set()
        worker.join(timeout=20)
    changes = changes_for(short, cal_id)
    assert sorted(str(c.event_id) for c in changes) == sorted(inserted)  # none missed, none twice
    events_channels = list(channels_of(short, calendar_id=cal_id))
    renewed = [c for c in events_channels if c.replaced_by]
    assert len(renewed) >= 3, [(c.status, c.expires_at) for c in events_channels]
    assert all(c.status == "stopped" for c in renewed)
    live = [c for c in emu.channels() if c["kind"] == "events"]
    assert len(live) == 1 and live[0]["id"] not in {c.id for c in renewed}
    assert emu.count("calendar.channels.stop") >= len(renewed)
    # Changes came through push, not a timer: reconciliation is an hour away.
    assert short.settings.reconcile_every >= timedelta(hours=1)
    assert account_id


def _synced_calendar(rt: Any) -> int | None:
    try:
        cal_id = calendar_id_of(rt, "ann@example.com")
    except AssertionError:
        return None
    return cal_id if [c for c in channels_of(rt, calendar_id=cal_id) if c.status == "active"] else None


def test_a_calendar_google_will_not_watch_is_still_synced(rt: Any, emu: Any) -> None:
    """The watch came first and its error failed the job: with Google refusing every watch (as for
    calendars that do not support push), no sync of the calendar ever ran again."""
    _, cal_id = _setup(rt, emu)
    [channel] = [c for c in channels_of(rt, calendar_id=cal_id) if c.status == ChannelStatus.ACTIVE]
    assert channel.expires_at is not None
    emu.fail_next(1000, status=400, reason="pushNotSupportedForRequestedResource", method="calendar.events.watch")
    emu.insert_event("ann@example.com", EVENT)
    rt.clock.set(channel.expires_at - rt.settings.renew_before + timedelta(seconds=1))
    watches = emu.count("calendar.events.watch", "ann@example.com")
    Worker(rt, threads=1).run_burst()
    assert [c.kind for c in changes_for(rt, cal_id)] == ["created"]
    assert emu.count("calendar.events.watch", "ann@example.com") > watches  # it was asked, and refused


def test_a_calendar_google_will_not_watch_is_not_asked_again_at_every_sync(rt: Any, emu: Any) -> None:
    """Each sync of it asked for a watch and met the refusal: one wasted call per reconciliation, for
    a calendar (a public holiday calendar) that most users have. Asked again after a day."""
    emu.create_user("bob@example.com")
    emu.fail_next(1000, status=400, reason="pushNotSupportedForRequestedResource", method="calendar.events.watch")

    def refused() -> int:  # (a request answered 401 for an expired token is the same watch, asked again)
        return sum(1 for r in emu.requests if r.api_method == "calendar.events.watch" and r.status == 400)

    connect_account(rt, emu, "bob@example.com")
    Worker(rt, threads=1).run_burst()
    lists = emu.count("calendar.events.list", "bob@example.com")
    assert refused() == 1
    for _ in range(3):  # three reconciliations
        rt.clock.advance(rt.settings.reconcile_every + timedelta(seconds=1))
        Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.list", "bob@example.com") >= lists + 3  # synced each time
    assert refused() == 1  # not asked again
    rt.clock.advance(timedelta(days=1))
    Worker(rt, threads=1).run_burst()
    assert wait_for(lambda: refused() == 2, what="one more watch after a day")


def test_a_first_sync_whose_watch_is_refused_still_completes(rt: Any, emu: Any) -> None:
    emu.create_user("bob@example.com")
    emu.insert_event("bob@example.com", EVENT)
    emu.fail_next(1000, status=400, reason="pushNotSupportedForRequestedResource", method="calendar.events.watch")
    connect_account(rt, emu, "bob@example.com")
    Worker(rt, threads=1).run_burst()
    cal_id = calendar_id_of(rt, "bob@example.com")
    assert [c.kind for c in changes_for(rt, cal_id)] == ["snapshot"]
    emu.insert_event("bob@example.com", {**EVENT, "summary": "Later"})
    rt.clock.advance(rt.settings.reconcile_every + timedelta(seconds=1))  # no channel: the reconciliation
    Worker(rt, threads=1).run_burst()
    assert [c.kind for c in changes_for(rt, cal_id)] == ["snapshot", "created"]


def _passes(rt: Any, worker: Worker, count: int, every: float) -> None:
    """`count` scheduler passes of a worker, each with the jobs it then finds, `every` seconds apart."""
    for _ in range(count):
        worker.run_burst()
        rt.clock.advance(seconds=every)


def test_a_watch_that_fails_at_renewal_is_tried_again_minutes_later_not_every_pass(rt: Any, emu: Any) -> None:
    """The sync after the failed watch succeeded, the old channel stayed in its window, and the next
    pass made the calendar due again: one watch and one listing every pass (150 in five minutes)."""
    _, cal_id = _setup(rt, emu)
    [channel] = [c for c in channels_of(rt, calendar_id=cal_id) if c.status == ChannelStatus.ACTIVE]
    assert channel.expires_at is not None
    rt.clock.set(channel.expires_at - rt.settings.renew_before + timedelta(seconds=1))
    emu.fail_next(1000, status=503, reason="backendError", method="calendar.events.watch")
    watches = emu.count("calendar.events.watch", "ann@example.com")
    _passes(rt, Worker(rt, threads=1), 30, every=10)  # five minutes of a worker's life
    assert emu.count("calendar.events.watch", "ann@example.com") - watches <= 2
    emu.faults.clear()
    rt.clock.advance(minutes=5)
    Worker(rt, threads=1).run_burst()  # the retry after RENEW_RETRY succeeds
    assert any(c.status == ChannelStatus.ACTIVE and c.id != channel.id for c in channels_of(rt, calendar_id=cal_id))


def test_a_channel_google_grants_for_less_than_the_renewal_window_is_renewed_halfway(rt: Any, emu: Any) -> None:
    """Due the moment it opened (its whole life inside `renew_before`): each job replaced it, 480
    watches in five minutes and a burst that never ended."""
    emu.max_channel_ttl = 3600  # an hour, against a renewal window of a day
    _, cal_id = _setup(rt, emu)
    assert emu.count("calendar.events.watch", "ann@example.com") == 1
    _passes(rt, Worker(rt, threads=1), 30, every=10)
    assert emu.count("calendar.events.watch", "ann@example.com") == 1
    rt.clock.advance(minutes=26)  # past half of its hour
    Worker(rt, threads=1).run_burst()
    assert emu.count("calendar.events.watch", "ann@example.com") == 2
    assert len([c for c in channels_of(rt, calendar_id=cal_id) if c.status == ChannelStatus.ACTIVE]) == 1


def test_renewals_go_before_held_reconciliations(settings: Settings, emu: Any) -> None:
    """With Google's Retry-After holding reconciliations back, a calendar already due as one kept
    that class when its channel neared expiry, and the calendar list's renewal was only ever a
    routine refresh: both channels expired."""
    tight = dataclasses.replace(settings, channel_ttl=timedelta(hours=2), renew_before=timedelta(minutes=30))
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    rt = Runtime.create(tight, clock=clock)
    real_clock, emu.clock = emu.clock, clock.now
    try:
        account_id, _ = _setup(rt, emu)
        start = clock.now()
        clock.set(start + timedelta(hours=1, minutes=25))  # the reconciliation and the list refresh are due
        rt.budget.slowed(None, 3600)  # Google: come back in an hour (renewals are admitted, not reconciliations)
        worker = Worker(rt, threads=1)
        for minutes in (35, 45, 55, 65):
            clock.set(start + timedelta(hours=1, minutes=minutes))
            worker.run_burst()
        kinds = {c.kind for c in channels_of(rt, account_id=account_id) if c.status == ChannelStatus.ACTIVE}
        assert kinds == set(ChannelKind)
    finally:
        emu.clock = real_clock
        rt.close()
