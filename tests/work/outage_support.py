"""A calendar whose edits must reach the feed exactly once while the database fails under a running
worker: shared by the PostgreSQL outage tests and the SQLite fault tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from calsync.runtime import Runtime
from calsync.store.models import Calendar, Channel, Notification
from calsync.work.worker import Worker
from tests.sync_support import assert_feed_rebuilds_mirror, changes, connect_account, google_view, mirror

ALICE = "alice@example.com"


@contextmanager
def running_worker(worker_runtime: Runtime, runtime: Runtime, emu: Any) -> Iterator[Worker]:
    """A connected account whose calendar a worker running in a thread has synced and watches.

    Google retries a notification answered 5xx, with backoff; the emulator retries for about 25 s.
    """
    usual = emu.push.retry_base, emu.push.max_attempts
    emu.push.retry_base, emu.push.max_attempts = 0.1, 9
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:  # the emulator serves the whole session: the next test gets its usual retries back
        connect_account(runtime, emu, ALICE)
        worker = Worker(worker_runtime, threads=2)
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        wait_until(lambda: watched(runtime), 20, "the first sync and the watch")
        yield worker
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
        emu.push.retry_base, emu.push.max_attempts = usual
    assert not thread.is_alive()


def edit(emu: Any, summary: str) -> str:
    """A new event in Google: its `created` row must reach the feed exactly once."""
    body = {
        "summary": summary,
        "start": {"dateTime": "2026-01-05T10:00:00Z"},
        "end": {"dateTime": "2026-01-05T11:00:00Z"},
    }
    return str(emu.insert_event(ALICE, body)["id"])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the database may be away while we look
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_converged(runtime: Runtime, emu: Any, made: list[str], timeout: float) -> None:
    """Every edit in the feed exactly once, and the feed folded = the mirror = Google."""
    cal_id = calendar_id(runtime)

    def converged() -> bool:
        created = [c.event_id for c in changes(runtime, cal_id) if c.kind in ("created", "snapshot")]
        return set(made) <= set(created) and mirror(runtime, cal_id) == google_view(emu, ALICE)

    try:
        wait_until(converged, timeout, f"{len(made)} edits in the feed")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{queue_state(runtime, cal_id)}") from None
    created = [c.event_id for c in changes(runtime, cal_id) if c.kind in ("created", "snapshot")]
    assert len(created) == len(set(created)), "an edit reached the feed twice"
    assert_feed_rebuilds_mirror(runtime, cal_id)


def queue_state(runtime: Runtime, cal_id: int) -> str:
    """What a timed-out wait prints: the calendar's queue fields, its channels and the notifications heard."""
    with runtime.sessions() as session:
        cal = session.get(Calendar, cal_id)
        assert cal is not None
        fields = ("sync_requested", "sync_done", "due_at", "due_priority", "lease_owner", "retry_at", "last_error")
        heard = session.execute(select(Notification.channel_id, Notification.message_number, Notification.outcome))
        return "\n".join(
            [
                "calendar: " + ", ".join(f"{name}={getattr(cal, name)!r}" for name in fields),
                *(f"channel {c.id}: {c.status}" for c in session.scalars(select(Channel))),
                *(f"heard {row.channel_id} #{row.message_number}: {row.outcome}" for row in heard),
            ]
        )


def calendar_id(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return session.scalars(select(Calendar.id).where(Calendar.google_id == ALICE)).one()


def watched(runtime: Runtime) -> bool:
    with runtime.sessions() as session:
        cal = session.scalars(select(Calendar).where(Calendar.google_id == ALICE)).one_or_none()
        if cal is None or not cal.baseline_done:
            return False
        return (
            session.scalar(select(Channel.id).where(Channel.calendar_id == cal.id, Channel.status == "active"))
            is not None
        )
