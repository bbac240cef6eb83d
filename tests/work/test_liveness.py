"""One rule for whether a worker is alive, and every view that shows it agrees with it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from calsync import create_app
from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.liveness import HEARTBEAT_SECONDS, WORKER_ALIVE, heartbeat_is_fresh
from calsync.store.models import WorkerHeartbeat
from calsync.work.liveness import Heartbeat
from calsync.work.worker import POLL_SECONDS, Worker
from tests.web.dashboard_support import PASSWORD, sign_in


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.create(
        Settings(**{**settings.__dict__, "admin_password": PASSWORD}),
        clock=FrozenClock(datetime.now(UTC).replace(microsecond=0)),
    )
    yield runtime
    runtime.close()


def _views(rt: Runtime) -> tuple[bool, bool]:
    """(what /healthz says, what the dashboard's overview says) about the worker."""
    client = create_app(runtime=rt).test_client()
    healthy = client.get("/healthz").status_code == 200
    sign_in(client)
    overview = client.get("/dashboard/").text
    assert ("not seen" in overview) != ("running" in overview.split("Worker", 1)[1][:200])
    return healthy, "not seen" not in overview


def test_a_dead_worker_is_seen_as_dead_soon_enough_for_a_take_over_within_ten_seconds() -> None:
    # Three beats may be missed before a worker counts as dead. Its last beat came before the kill,
    # so its work is free at most WORKER_ALIVE later, and an idle thread looks again within a poll.
    assert WORKER_ALIVE.total_seconds() == 3 * HEARTBEAT_SECONDS == 6
    assert WORKER_ALIVE.total_seconds() + POLL_SECONDS < 10


def test_healthz_and_the_dashboard_call_a_worker_alive_for_the_same_six_seconds(rt: Runtime) -> None:
    assert _views(rt) == (False, False)  # no worker has ever reported
    Worker(rt, threads=1).tick()
    clock = rt.clock
    assert isinstance(clock, FrozenClock)
    clock.advance(WORKER_ALIVE.total_seconds() - 1)
    assert _views(rt) == (True, True)
    clock.advance(2)  # 7 s
    assert _views(rt) == (False, False)


def test_a_heartbeat_is_fresh_up_to_and_including_the_limit() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert heartbeat_is_fresh(now - WORKER_ALIVE, now)
    assert not heartbeat_is_fresh(now - WORKER_ALIVE - WORKER_ALIVE / 6, now)
    assert not heartbeat_is_fresh(None, now)


def test_a_beat_that_waited_for_sqlites_write_lock_says_when_it_got_it(rt: Runtime) -> None:
    """The time was read before the wait: a beat held up by another writer for as long as
    `WORKER_ALIVE` committed a time that already said the worker was dead."""
    if rt.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's one write lock")
    heartbeat = Heartbeat(rt, "host:1:waits")
    heartbeat.beat()
    assert isinstance(rt.clock, FrozenClock)
    with rt.engine.begin() as holder:  # another writer holds the file's write lock
        holder.execute(text("UPDATE worker_heartbeats SET pid = pid"))
        beating = threading.Thread(target=heartbeat.beat)
        beating.start()
        time.sleep(0.3)  # the beat is waiting for the lock now
        rt.clock.advance(WORKER_ALIVE + timedelta(seconds=1))
    beating.join(10)
    with rt.sessions() as session:
        seen = session.scalar(select(WorkerHeartbeat.seen_at).where(WorkerHeartbeat.name == "host:1:waits"))
    assert seen == rt.clock.now()
