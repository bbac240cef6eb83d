"""A stopping web process waits for a younger sibling to listen, and only then (real processes, real sockets)."""

from __future__ import annotations

import multiprocessing
import socket
import time
from multiprocessing.synchronize import Event

from calsync.web.handover import listening_sockets, wait_for_replacements
from tests.conftest import free_port

FORK = multiprocessing.get_context("fork")  # siblings share the parent and its command line, as gunicorn's do


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _older(port: int, stop: Event, took: multiprocessing.Queue[tuple[float, int]]) -> None:
    sock = _listen(port)
    stop.wait(30)
    started = time.monotonic()
    wait_for_replacements(port, workers=1)
    took.put((time.monotonic() - started, listening_sockets(port)))
    sock.close()


def _younger(port: int, after: float) -> None:
    time.sleep(after)  # a replacement still starting
    sock = _listen(port)
    time.sleep(10)
    sock.close()


def _stop_older(younger_after: float | None) -> tuple[float, int]:
    port = free_port()
    stop, took = FORK.Event(), FORK.Queue()
    older = FORK.Process(target=_older, args=(port, stop, took), daemon=True)
    older.start()
    deadline = time.monotonic() + 10
    while listening_sockets(port) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # start times are counted in clock ticks: the sibling is clearly younger
    younger = FORK.Process(target=_younger, args=(port, younger_after), daemon=True) if younger_after else None
    try:
        if younger is not None:
            younger.start()
        stop.set()
        result: tuple[float, int] = took.get(timeout=20)
        return result
    finally:
        older.join(5)
        if younger is not None:
            younger.kill()
            younger.join(5)


def test_a_process_stopping_while_its_replacement_starts_waits_until_the_replacement_listens() -> None:
    took, listening = _stop_older(younger_after=1.0)
    assert 0.9 <= took < 4.0
    assert listening == 2  # its own socket and the replacement's: the port was never without a listener


def test_a_process_stopping_with_no_replacement_coming_stops_at_once() -> None:
    took, listening = _stop_older(younger_after=None)
    assert took < 0.5 and listening == 1
