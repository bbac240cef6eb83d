"""The lease rule in SQL, on both engines: a holder's heartbeat decides, and the name match is exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import String, event, literal, select

from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.liveness import (
    WORKER_ALIVE,
    claiming_as,
    heartbeat_is_fresh,
    held_by_dead_worker,
    lease_is_free,
    stale_before,
)
from calsync.store.models import UTCDateTime, WorkerHeartbeat

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASED = NOW + timedelta(seconds=120)


def _beat(runtime: Runtime, name: str, seen_at: datetime) -> None:
    with transaction(runtime.sessions) as session:
        session.merge(WorkerHeartbeat(name=name, host="h", pid=1, started_at=seen_at, seen_at=seen_at))


def _free(runtime: Runtime, owner: str | None, until: datetime | None, now: datetime = NOW) -> bool:
    """What the database says about a lease held by `owner` until `until`."""
    with runtime.sessions() as session:
        expr = lease_is_free(literal(owner, String), literal(until, UTCDateTime()), now, stale_before(now))
        return bool(session.scalar(select(expr)))


def test_a_lease_whose_worker_beats_is_held(runtime: Runtime) -> None:
    _beat(runtime, "host:1:ab", NOW - WORKER_ALIVE)  # the last moment it still counts as alive
    assert not _free(runtime, "host:1:ab/0", LEASED)
    assert not _free(runtime, "host:1:ab/burst", LEASED)


def test_a_lease_whose_worker_stopped_beating_is_free_long_before_it_runs_out(runtime: Runtime) -> None:
    _beat(runtime, "host:1:ab", NOW - WORKER_ALIVE - timedelta(seconds=1))
    assert _free(runtime, "host:1:ab/0", LEASED)
    assert _free(runtime, "host:1:ab", LEASED)


def test_an_owner_without_a_heartbeat_keeps_its_lease_until_it_runs_out(runtime: Runtime) -> None:
    _beat(runtime, "host:1:ab", NOW - timedelta(hours=1))  # somebody else's, long dead
    assert not _free(runtime, "cli-sync-7", LEASED)
    assert not _free(runtime, "cli-sync-7", NOW)  # up to and including its last instant
    assert _free(runtime, "cli-sync-7", NOW - timedelta(microseconds=1))
    assert _free(runtime, None, None)


def test_a_lapsed_lease_is_free_even_while_its_worker_beats(runtime: Runtime) -> None:
    """A live process whose job hangs gives its work up when the lease runs out, as before."""
    _beat(runtime, "host:1:ab", NOW)
    assert _free(runtime, "host:1:ab/0", NOW - timedelta(seconds=1))


@pytest.mark.parametrize(
    "owner", ["host:1:a/0", "host:1:abc/0", "host:1:a", "host:1:ab0", "xhost:1:ab/0", "host:1:a_/0", "host:1:a%/0"]
)
def test_a_dead_worker_frees_only_its_own_leases(runtime: Runtime, owner: str) -> None:
    _beat(runtime, "host:1:ab", NOW - timedelta(minutes=5))
    _beat(runtime, "host:1:a_", NOW)  # alive; its name holds a LIKE wildcard, which must match only itself
    _beat(runtime, "host:1:a%", NOW)
    assert not _free(runtime, owner, LEASED)


def test_the_python_and_the_sql_side_of_the_rule_agree(runtime: Runtime) -> None:
    for age in (timedelta(0), WORKER_ALIVE - timedelta(seconds=1), WORKER_ALIVE, WORKER_ALIVE + timedelta(seconds=1)):
        _beat(runtime, "w", NOW - age)
        with runtime.sessions() as session:
            dead = bool(session.scalar(select(held_by_dead_worker(literal("w/0", String), stale_before(NOW)))))
        assert dead == (not heartbeat_is_fresh(NOW - age, NOW)), age


def test_a_claim_transaction_writes_its_workers_beat_once(runtime: Runtime) -> None:
    """A list claim then a calendar claim in one transaction: one heartbeat UPDATE, not one per claim
    (each held SQLite's write lock longer); after the commit, none until the beat is no longer recent."""
    _beat(runtime, "host:1:ab", NOW - timedelta(seconds=5))
    beats: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE WORKER_HEARTBEATS"):
            beats.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        with transaction(runtime.sessions) as session:
            claiming_as(session, "host:1:ab/0", NOW)
            claiming_as(session, "host:1:ab/0", NOW)
            claiming_as(session, "host:1:ab/1", NOW)
        assert len(beats) == 1
        with transaction(runtime.sessions) as session:
            claiming_as(session, "host:1:ab/2", NOW + timedelta(milliseconds=500))
        assert len(beats) == 1
        with transaction(runtime.sessions) as session:
            claiming_as(session, "host:1:ab/2", NOW + timedelta(seconds=2))
        assert len(beats) == 2
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    with runtime.sessions() as session:
        seen = session.scalar(select(WorkerHeartbeat.seen_at).where(WorkerHeartbeat.name == "host:1:ab"))
        assert seen is not None and heartbeat_is_fresh(seen, NOW + timedelta(seconds=2))
