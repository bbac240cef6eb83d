"""Wake-ups: one idle thread per wake-up, all of them on shutdown, NOTIFYs from other processes only,
and on a SQLite file a datagram to each worker process of the host."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from calsync.store.db import is_own_backend, make_engine, make_sessionmaker, transaction
from calsync.wakeup import ALARM_HORIZON, CHANNEL, HostPeers, Wakeup
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


_PEER = """
import sys, threading
from pathlib import Path
from calsync.wakeup import HostPeers, Wakeup

wakeup, stop = Wakeup(), threading.Event()
generation = wakeup.generation()
listener = HostPeers(Path(sys.argv[1])).listen(wakeup, stop)
print("listening", flush=True)
print("woken" if wakeup.wait(generation, timeout=20) else "timed out", flush=True)
stop.set()
listener.join()  # as a worker does when it stops: the entry goes with it
"""


def _peer(folder: Path) -> subprocess.Popen[str]:
    """A worker-like process listening beside a SQLite file, once it has registered."""
    proc = subprocess.Popen([sys.executable, "-c", _PEER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def test_a_commit_on_a_sqlite_file_wakes_the_worker_processes_of_its_host(tmp_path: Path) -> None:
    database = str(tmp_path / "calsync.db")
    engine = make_engine(f"sqlite:///{database}")
    peers = HostPeers.beside(database)
    first, second = _peer(peers.folder), _peer(peers.folder)
    try:
        wakeup = Wakeup(peers)
        with transaction(make_sessionmaker(engine)) as session:
            session.execute(text("SELECT 1"))
            wakeup.notify_after_commit(session)
        for proc in (first, second):
            out, _ = proc.communicate(timeout=10)
            assert out.strip() == "woken"  # long before its 20 s poll
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
        engine.dispose()
    wait_for(lambda: not list(peers.folder.iterdir()), timeout=5, what="the listeners' entries removed as they stop")


def test_a_dead_listeners_entry_is_dropped_and_a_stray_file_is_ignored(tmp_path: Path) -> None:
    peers = HostPeers(tmp_path / "db.wakeup")
    peers.folder.mkdir()
    killed = _peer(peers.folder)
    killed.kill()  # SIGKILL: its entry stays behind, its socket is gone
    killed.wait()
    (peers.folder / "notes.txt").write_text("not a process")
    assert (peers.folder / str(killed.pid)).exists()
    peers.notify()
    assert sorted(p.name for p in peers.folder.iterdir()) == ["notes.txt"]


def test_a_process_that_cannot_register_polls_instead(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder would go")
    stop = threading.Event()
    assert HostPeers(blocked).listen(Wakeup(), stop) is None
    HostPeers(blocked).notify()  # and notifying it is harmless


def test_an_alarm_rouses_an_idle_thread_when_its_work_comes_due() -> None:
    wakeup = Wakeup()
    generation = wakeup.generation()
    started = time.monotonic()
    wakeup.wake_in(0.3)
    assert wakeup.wait(generation, timeout=30)
    assert 0.25 <= time.monotonic() - started < 5
    assert not wakeup.wait(generation, timeout=0.2), "an alarm rouses one pass, once"


def test_an_alarm_set_while_threads_sleep_shortens_their_wait() -> None:
    wakeup = Wakeup()
    threads, woken = _waiters(wakeup, 2)
    wakeup.wake_in(0.2)
    wait_for(lambda: woken, timeout=5, what="a thread roused by the alarm")
    time.sleep(0.3)
    assert len(woken) == 1
    wakeup.notify_all()
    for t in threads:
        t.join(timeout=5)


def test_work_due_past_the_alarm_horizon_is_left_to_polling() -> None:
    wakeup = Wakeup()
    wakeup.wake_in(ALARM_HORIZON + 1)
    assert not wakeup._alarms
    assert not wakeup.wait(wakeup.generation(), timeout=0.1)
