"""PostgreSQL failing under a running worker and web process: killed backends (the LISTEN one too),
restarts while edits flow, a sync in flight when the server stops, a LISTEN connection gone
half-open. What Debezium and Materialize test their own change capture with.

The server is a private one (`tests.pg_support`), so the shared server keeps serving every other
test. The web app and the worker have a runtime each, as two processes would: the worker hears of
a notification only through LISTEN. Each test ends with the feed folded = the mirror = Google,
and every edit in the feed exactly once.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import make_url

import calsync.work.worker
from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.models import WorkerHeartbeat
from calsync.wakeup import CHANNEL, Wakeup
from calsync.work.listen import Listener
from calsync.work.worker import Worker
from tests.pg_support import PrivateServer, unavailable
from tests.sync_support import (
    changes,
    last_seq,
)
from tests.webhooks.receiver import Receiver as WebhookReceiver
from tests.webhooks.support import loopback_settings, subscribe
from tests.work.outage_support import edit, running_worker, wait_converged, wait_until

SERVER_ERRORS = range(500, 600)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivateServer]:
    why = unavailable()
    if why:
        pytest.skip(why)
    server = PrivateServer()
    server.start()
    server.make_template()
    yield server
    server.close()


@pytest.fixture
def db_url(private_pg: PrivateServer) -> str:
    """Overrides the suite's both-engines fixture: these tests are about PostgreSQL itself."""
    return private_pg.fresh_database(f"t_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks to a subscriber on loopback allowed."""
    return loopback_settings(settings)


@pytest.fixture
def worker_runtime(settings: Settings) -> Iterator[Runtime]:
    """The worker's own runtime: its own engine and wake-ups, as another process would have.

    Syncs are not spaced (`sync_min_interval` 0): with polling slowed to 30 s, an edit made within
    the minimum interval of the last sync (the set-up's) was due only after the wake-up that came
    for it, and waited for the next poll."""
    rt = Runtime.create(dataclasses.replace(settings, sync_min_interval=timedelta(0)))
    yield rt
    rt.close()


@pytest.fixture
def poll_seconds() -> float:
    """The worker's polling, slowed to 30 s: a change seen sooner was passed on by LISTEN."""
    return 30.0


@pytest.fixture
def running(
    worker_runtime: Runtime,
    runtime: Runtime,
    live_server: str,
    emu: Any,
    monkeypatch: pytest.MonkeyPatch,
    poll_seconds: float,
) -> Iterator[Worker]:
    """A connected account whose calendar a running worker has synced and watches."""
    monkeypatch.setattr(calsync.work.worker, "POLL_SECONDS", poll_seconds)
    with running_worker(worker_runtime, runtime, emu) as worker:
        yield worker


def test_killed_backends_cost_no_500_and_listen_comes_back(
    running: Worker, runtime: Runtime, live_server: str, emu: Any, private_pg: PrivateServer
) -> None:
    made = [edit(emu, "before")]
    wait_converged(runtime, emu, made, 20)  # a set-up step, not what this test measures
    listener = running.listener
    assert isinstance(listener, Listener) and listener.connections == 1

    killed = private_pg.terminate_backends(make_url(runtime.settings.database_url).database or "")
    assert killed >= 3  # the web's pool, the worker's pool, the LISTEN connection
    statuses = [get(live_server, path) for path in ("/api/changes?after=0", "/api/calendars", "/healthz") * 3]
    assert not [s for s in statuses if s in SERVER_ERRORS and s != 503], statuses
    assert statuses[0] == 200  # a read that met a killed connection ran again on a fresh one

    wait_until(lambda: listener.connections == 2, 10, "LISTEN again")
    started = time.monotonic()
    made.append(edit(emu, "after"))
    wait_converged(runtime, emu, made, 10)
    assert time.monotonic() - started < 1.5, "the wake-up did not come through LISTEN"
    assert get(live_server, "/healthz") == 200


# A sync that failed while the server was away is retried after its backoff, which only polling
# notices (as in production): these tests keep the worker's own polling.
@pytest.mark.parametrize("poll_seconds", [calsync.work.worker.POLL_SECONDS])
def test_a_restart_while_edits_flow_loses_and_repeats_nothing(
    running: Worker, runtime: Runtime, live_server: str, emu: Any, private_pg: PrivateServer
) -> None:
    subscriber = WebhookReceiver().start()
    subscribe(runtime, subscriber.url)
    subscribed_at = last_seq(runtime)
    made: list[str] = []
    seen: list[int] = []
    stop = threading.Event()

    def edits() -> None:
        while not stop.is_set():
            made.append(edit(emu, f"flow {len(made)}"))
            seen.append(get(live_server, "/api/changes?after=0&limit=5"))
            seen.append(get(live_server, "/healthz"))
            time.sleep(0.05)

    flow = threading.Thread(target=edits, daemon=True)
    flow.start()
    time.sleep(0.5)
    private_pg.restart()
    time.sleep(0.5)
    private_pg.outage(1.5).join()
    returned = time.monotonic()
    time.sleep(0.5)
    stop.set()
    flow.join()
    wait_converged(runtime, emu, made, 20)
    print(f"{len(made)} edits; converged {time.monotonic() - returned:.1f}s after the return")
    assert 503 in seen, "the outage was never seen"
    assert not [s for s in seen if s in SERVER_ERRORS and s != 503], seen
    wait_until(lambda: get(live_server, "/healthz") == 200, 10, "/healthz 200 again")
    assert {r.status for r in emu.notifications} <= {200}  # each notification recorded in the end

    # Webhook deliveries went on: every change since the subscription reached the subscriber.
    wanted = {c.seq for c in changes(runtime, after=subscribed_at)}
    assert len(wanted) >= len(made)
    wait_until(lambda: wanted <= {p.json()["data"]["seq"] for p in subscriber.posts()}, 20, "every webhook message")
    subscriber.stop()


@pytest.mark.parametrize("poll_seconds", [calsync.work.worker.POLL_SECONDS])
def test_a_sync_in_flight_when_postgres_stops_does_not_hold_its_calendar(
    running: Worker, runtime: Runtime, live_server: str, emu: Any, private_pg: PrivateServer
) -> None:
    """The job can record nothing while the server is away; it must let go of the calendar as soon
    as it is back, not one lease period (120 s) later."""
    made = [edit(emu, "warm")]
    wait_converged(runtime, emu, made, 5)
    emu.slow_next(1, 2.0, method="calendar.events.list")
    made.append(edit(emu, "in flight"))
    wait_until(lambda: emu.count("calendar.events.list") >= 3, 5, "the slow listing to start")
    outage = private_pg.outage(3.0)
    time.sleep(0.3)
    made += [edit(emu, "during 1"), edit(emu, "during 2")]
    outage.join()
    returned = time.monotonic()
    wait_converged(runtime, emu, made, 15)
    assert time.monotonic() - returned < 15
    assert runtime.settings.lease >= timedelta(minutes=1)


def test_a_worker_started_while_postgres_is_away_starts_once_it_is_back(
    worker_runtime: Runtime, runtime: Runtime, private_pg: PrivateServer
) -> None:
    """Its first beat met the restart and the worker exited with the error; nothing started it again
    unless a supervisor did."""
    outage = private_pg.outage(2.0)
    stop = threading.Event()
    worker = Worker(worker_runtime, threads=1)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        outage.join()
        wait_until(lambda: worker.listener is not None, 20, "the worker started")

        def beating() -> bool:  # its heartbeat thread, started just before the listener, beats first
            with runtime.sessions() as session:
                return session.get(WorkerHeartbeat, worker.name) is not None

        wait_until(beating, 20, "the worker's first heartbeat")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()


def test_a_half_open_listen_connection_is_probed_and_replaced(private_pg: PrivateServer, db_url: str) -> None:
    """A proxy that stops forwarding without closing stands for a partition that sends no RST."""
    proxy = BlackholeProxy(private_pg.port)
    url = make_url(db_url).set(port=proxy.port)
    wakeup, stop = Wakeup(), threading.Event()
    listener = Listener(url, wakeup, stop, probe_every=0.3, probe_timeout=0.5, reconnect=0.1)
    listener.start()
    try:
        assert listener.ready.wait(5)
        assert _notify_wakes(wakeup, db_url) < 0.5
        proxy.blackhole()
        started = time.monotonic()
        wait_until(lambda: listener.connections == 2 and listener.ready.is_set(), 10, "a new LISTEN connection")
        assert time.monotonic() - started < 3
        assert _notify_wakes(wakeup, db_url) < 0.5
    finally:
        stop.set()
        listener.join(timeout=5)
        proxy.close()


# Helpers ------------------------------------------------------------------------------------------
def get(base: str, path: str) -> int:
    headers = {"Authorization": "Bearer test-api-token"}
    try:
        return requests.get(base + path, headers=headers, timeout=10).status_code
    except requests.RequestException:
        return -1


def _notify_wakes(wakeup: Wakeup, db_url: str) -> float:
    """Seconds from a NOTIFY sent on another connection to the listener's wake-up."""
    import psycopg

    generation = wakeup.generation()
    started = time.monotonic()
    with psycopg.connect(make_url(db_url).set(drivername="postgresql").render_as_string(False), autocommit=True) as c:
        c.execute(f"NOTIFY {CHANNEL}")
    assert wakeup.wait(generation, 5), "no wake-up"
    return time.monotonic() - started


class BlackholeProxy:
    """TCP to 127.0.0.1:`target`; `blackhole()` stops forwarding on every open connection without
    closing it (new connections are forwarded again, as after a NAT forgot the old flow)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self._holes: list[threading.Event] = []
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        for hole in self._holes:
            hole.set()

    def close(self) -> None:
        self.server.close()
        for s in self._sockets:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            hole = threading.Event()
            self._holes.append(hole)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, hole), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, hole: threading.Event) -> None:
        try:
            while not hole.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if hole.is_set():
                    break  # swallowed: the link is cut, silently
                dst.sendall(data)
        except OSError:
            return
        hole.wait()  # hold both sockets open, forwarding nothing, until the proxy closes
