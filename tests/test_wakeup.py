"""Wake-ups: one idle thread per wake-up, all of them on shutdown, and NOTIFYs from other processes only."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import text

from calsync.store.db import is_own_backend, make_engine, make_sessionmaker, transaction
from calsync.wakeup import CHANNEL, Wakeup
from calsync.work.listen import Listener
from tests.push_support import wait_for


def _waiters(wakeup: Wakeup, n: int) -> tuple[list[threading.Thread], list[bool]]:
    """n threads waiting on `wakeup`; each appends True to the list when woken."""
    woken: list[bool] = []
    generation = wakeup.generation()

    def wait() -> None:
        if wakeup.wait(generation, timeout=30):
            woken.append(True)

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    wait_for(lambda: len(wakeup._cond._waiters) == n, timeout=5, what="all threads waiting")  # type: ignore[attr-defined]
    return threads, woken


def test_a_wake_up_rouses_one_idle_thread_not_all() -> None:
    wakeup = Wakeup()
    threads, woken = _waiters(wakeup, 3)
    wakeup.notify_local()
    wait_for(lambda: woken, timeout=5, what="one thread woken")
    time.sleep(0.2)  # give any other (wrongly) woken thread the time to say so
    assert len(woken) == 1
    wakeup.notify_local()
    wait_for(lambda: len(woken) == 2, timeout=5, what="a second thread woken")
    wakeup.notify_all()
    for t in threads:
        t.join(timeout=5)
    assert len(woken) == 3


def test_a_thread_busy_during_a_wake_up_looks_again_at_once() -> None:
    wakeup = Wakeup()
    before = wakeup.generation()  # read before the work, as the worker loop does
    wakeup.notify_local()  # arrives while nobody waits
    assert wakeup.wait(before, timeout=0)


def test_the_listener_passes_on_other_processes_notifies_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    ours, theirs = make_engine(db_url), make_engine(db_url)
    here = Wakeup()
    stop = threading.Event()
    listener = Listener(ours.url, here, stop, ignore=lambda pid: is_own_backend(ours, pid))
    listener.start()
    try:
        assert listener.ready.wait(10)
        wait_for(lambda: here.generation() >= 1, timeout=5, what="the wake-up sent on connecting")
        before = here.generation()
        _notify(ours)  # this process's own: its threads were woken at commit already
        _notify(theirs)  # another process's
        wait_for(lambda: here.generation() > before, timeout=5, what="the other process's wake-up")
        time.sleep(0.2)
        # Delivered in commit order, so the first was seen (and ignored) before the second.
        assert here.generation() == before + 1
    finally:
        stop.set()
        listener.join(timeout=5)
        ours.dispose()
        theirs.dispose()


def _notify(engine: Any) -> None:
    with transaction(make_sessionmaker(engine)) as session:
        session.execute(text(f"NOTIFY {CHANNEL}"))
