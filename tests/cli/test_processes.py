"""The real processes: `calsync worker` (SIGTERM, several on one PostgreSQL), `calsync serve`, `calsync web`."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from calsync.config import Settings
from calsync.errors import ConfigError
from calsync.push.channels import open_events_channel
from calsync.runtime import Runtime
from calsync.store.db import make_engine, transaction
from calsync.store.models import (
    Account,
    Calendar,
    Channel,
    Event,
    Notification,
    WorkerHeartbeat,
)
from calsync.store.owed import request_calendar_sync
from calsync.web.server import WORKER_NICENESS, ensure_schema
from tests.conftest import free_port
from tests.push_support import (
    add_calendar_row,
    calendar_id_of,
    calendar_row,
    change_count,
    changes_for,
    connect_account,
    emu_channel,
    post_notification,
    push_headers,
    wait_for,
)
from tests.web.process_support import web_env

EVENT = {
    "summary": "Sprint",
    "start": {"dateTime": "2026-12-07T09:00:00Z"},
    "end": {"dateTime": "2026-12-07T10:00:00Z"},
}


def _calsync(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child writes to its own copy of the descriptor
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "calsync"), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.slow
def test_sigterm_lets_a_worker_finish_its_sync_and_exit_cleanly(
    settings: Settings, runtime: Runtime, emu: Any, tmp_path: Path
) -> None:
    connect_account(runtime, emu, "ann@example.com")
    big = emu.create_calendar("ann@example.com", "Big")
    emu.bulk_insert_events(big, [{**EVENT, "summary": f"e{i}"} for i in range(6000)])  # three pages
    proc = _calsync(["worker", "--threads", "2"], web_env(settings), tmp_path / "worker.log")
    try:
        # Wait until the sync is under way (its first page committed): a claim not yet started may
        # rightly be released on SIGTERM, but a sync in hand must run to its end.
        wait_for(
            lambda: _first_page_written(runtime, big), timeout=60, interval=0.005, what="the big sync's first page"
        )
        assert _terminate(proc) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "worker.log").read_text()
    assert "finishing the work in hand" in log
    with runtime.sessions() as session:
        assert session.scalars(select(Calendar.lease_owner).where(Calendar.lease_owner.is_not(None))).all() == []
        assert (
            session.scalars(select(Account.list_lease_owner).where(Account.list_lease_owner.is_not(None))).all() == []
        )
        assert session.scalar(select(func.count()).select_from(WorkerHeartbeat)) == 0
    cal = calendar_row(runtime, calendar_id_of(runtime, big))
    # The sync in hand ran to its end (finished, not abandoned halfway): the baseline is complete.
    assert cal.baseline_done and cal.sync_state == "synced"


def _first_page_written(rt: Runtime, google_id: str) -> bool:
    with rt.sessions() as session:
        cal_id = session.scalar(select(Calendar.id).where(Calendar.google_id == google_id))
        return cal_id is not None and bool(
            session.scalar(select(func.count()).select_from(Event).where(Event.calendar_id == cal_id))
        )


class _Relay(ThreadingHTTPServer):
    """A real HTTP relay to the emulator that holds each events.list for a while and writes down when.

    One per worker process: if two processes ever synced the same calendar at once, their held
    events.list calls would overlap in this log.
    """

    daemon_threads = True

    def __init__(
        self, name: str, upstream: str, hold: float, log: list[tuple[str, str, float, float]], lock: threading.Lock
    ) -> None:
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.name, self.upstream, self.hold, self.log, self.lock = name, upstream.rstrip("/"), hold, log, lock
        self.http = requests.Session()
        self.http.trust_env = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _RelayHandler(BaseHTTPRequestHandler):
    server: _Relay
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = urlsplit(self.path).path
        listing = self.command == "GET" and path.startswith("/calendar/v3/calendars/") and path.endswith("/events")
        started = time.monotonic()
        if listing:
            time.sleep(self.server.hold)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        resp = self.server.http.request(
            self.command, self.server.upstream + self.path, data=body, headers=headers, timeout=30
        )
        if listing:
            calendar = unquote(path[len("/calendar/v3/calendars/") : -len("/events")])
            with self.server.lock:
                self.server.log.append((calendar, self.server.name, started, time.monotonic()))
        self.send_response(resp.status_code)
        for key in ("Content-Type", "Retry-After"):
            if key in resp.headers:
                self.send_header(key, resp.headers[key])
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        self.wfile.write(resp.content)

    do_GET = do_POST = _relay


@pytest.fixture
def relays(emu: Any) -> Iterator[tuple[list[_Relay], list[tuple[str, str, float, float]]]]:
    log: list[tuple[str, str, float, float]] = []
    lock = threading.Lock()
    servers = [_Relay(f"worker-{i}", emu.url, 0.15, log, lock) for i in range(3)]
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield servers, log
    for server in servers:
        server.shutdown()
        server.server_close()
        server.http.close()


@pytest.mark.slow
def test_three_worker_processes_share_the_work_and_never_sync_a_calendar_twice_at_once(
    settings: Settings, runtime: Runtime, emu: Any, tmp_path: Path, relays: Any
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("several worker processes share work through PostgreSQL (SKIP LOCKED, LISTEN/NOTIFY)")
    servers, log = relays
    connect_account(runtime, emu, "ann@example.com")
    google_ids = ["ann@example.com"] + [emu.create_calendar("ann@example.com", f"Team {i}") for i in range(7)]
    procs = [
        _calsync(
            ["worker", "--threads", "3"],
            web_env(settings, CALSYNC_GOOGLE_API_URL=server.url),
            tmp_path / f"worker-{i}.log",
        )
        for i, server in enumerate(servers)
    ]
    try:
        wait_for(lambda: _all_watched(runtime, len(google_ids)), timeout=90, interval=0.1, what="first syncs")
        cal_ids = [calendar_id_of(runtime, g) for g in google_ids]
        expected = 0
        for round_ in range(4):
            for google_id, cal_id in zip(google_ids, cal_ids, strict=True):
                emu.insert_event(google_id, {**EVENT, "summary": f"round {round_}"})
                expected += 1
                with transaction(runtime.sessions) as session:  # what the receiver does for a notification
                    request_calendar_sync(session, cal_id, runtime.clock.now())
                    runtime.wakeup.notify_after_commit(session)  # NOTIFY: LISTENing workers wake at once
            time.sleep(0.3)
        wait_for(
            lambda: change_count(runtime) == expected and _drained(runtime),
            timeout=90,
            interval=0.1,
            what="every requested sync",
        )
    finally:
        codes = [_terminate(p) for p in procs]
    assert codes == [0, 0, 0]
    for cal_id in cal_ids:
        assert sorted(str(c.kind) for c in changes_for(runtime, cal_id)) == ["created"] * 4
    by_calendar: dict[str, list[tuple[str, float, float]]] = {}
    for calendar, worker, start, end in list(log):  # the workers are gone: nobody appends any more
        by_calendar.setdefault(calendar, []).append((worker, start, end))
    for calendar, spans in by_calendar.items():
        spans.sort(key=lambda s: s[1])
        for (w1, _, end1), (w2, start2, _) in itertools.pairwise(spans):
            assert start2 >= end1, f"{calendar}: {w1} and {w2} listed it at the same time"
    assert len({worker for _, worker, _, _ in log}) >= 2, "the work was not shared"


def _all_watched(rt: Runtime, n: int) -> bool:
    with rt.sessions() as session:
        cals = session.scalars(select(Calendar)).all()
        return len(cals) == n and all(c.baseline_done for c in cals) and _drained(rt)


def _drained(rt: Runtime) -> bool:
    with rt.sessions() as session:
        return all(c.sync_done == c.sync_requested and c.lease_owner is None for c in session.scalars(select(Calendar)))


@pytest.mark.slow
def test_serve_runs_the_web_app_and_a_worker_process_woken_at_once(
    settings: Settings, emu: Any, tmp_path: Path, public_port: int
) -> None:
    if settings.database_url.startswith("sqlite"):
        fresh = tmp_path / "fresh.db"  # `calsync serve` migrates a SQLite database itself
        settings = Settings(**{**settings.__dict__, "database_url": f"sqlite:///{fresh}"})
    base = settings.public_url
    proc = _calsync(
        ["serve", "--host", "127.0.0.1", "--port", str(public_port), "--threads", "4"],
        web_env(settings),
        tmp_path / "serve.log",
    )
    rt = None
    try:
        health = wait_for(lambda: _get(base + "/healthz", 200), timeout=60, interval=0.1, what="healthz 200")
        assert health["worker"] == "ok" and health["database"] == "ok"
        assert requests.get(base + "/healthz", timeout=5).headers.get("Server", "").startswith("gunicorn")
        rt = Runtime.create(settings)
        connect_account(rt, emu, "ann@example.com")  # serve's worker finds it by polling (SQLite) or NOTIFY
        cal_id = wait_for(lambda: _watched_calendar(rt), timeout=30, interval=0.05, what="first sync and watch")
        emu.wait_push_idle(5)
        started = time.monotonic()
        emu.insert_event("ann@example.com", EVENT)
        wait_for(lambda: changes_for(rt, cal_id), timeout=10, interval=0.005, what="the pushed change")
        latency = time.monotonic() - started
        print(f"\ncalsync serve push-to-change latency: {latency * 1000:.0f} ms")
        metrics = requests.get(base + "/metrics", timeout=5).text
        for name in (
            "calsync_notifications_total",
            "calsync_syncs_total",
            "calsync_google_calls_total",
            "calsync_sync_lag_seconds",
            "calsync_channel_next_expiry_seconds",
        ):
            assert name in metrics
        assert 'calsync_notifications_total{outcome="queued",state="exists"}' in metrics
        assert latency < 1.5, f"{latency:.3f}s: the receiver's wake-up did not reach the worker thread"
    finally:
        code = _terminate(proc)
        if rt is not None:
            rt.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]


def _heartbeat_pids(rt: Runtime) -> set[int]:
    """The processes with a worker heartbeat (a worker's name is host:pid:suffix)."""
    with rt.sessions() as session:
        return {int(name.split(":")[1]) for name in session.scalars(select(WorkerHeartbeat.name))}


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[16])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_serve_starts_its_worker_again_after_a_kill_and_the_worker_stops_with_serve(
    settings: Settings, emu: Any, tmp_path: Path, public_port: int
) -> None:
    """The worker is a process of its own beside gunicorn's: killed, another takes its place and the
    next push is synced; serve killed outright, the worker does not outlive it."""
    proc = _calsync(
        ["serve", "--host", "127.0.0.1", "--port", str(public_port), "--threads", "4"],
        web_env(settings),
        tmp_path / "serve.log",
    )
    rt = Runtime.create(settings)
    try:
        wait_for(lambda: _get(settings.public_url + "/healthz", 200), timeout=60, interval=0.1, what="healthz 200")
        first = wait_for(
            lambda: _heartbeat_pids(rt) & set(_children(proc.pid)), timeout=10, what="the worker's heartbeat"
        )
        (worker,) = first
        assert "worker" in Path(f"/proc/{worker}/cmdline").read_text()
        assert _niceness(worker) == _niceness(proc.pid) + WORKER_NICENESS  # the receiver's answers come first
        connect_account(rt, emu, "ann@example.com")
        cal_id = wait_for(lambda: _watched_calendar(rt), timeout=30, interval=0.05, what="first sync and watch")

        os.kill(worker, signal.SIGKILL)
        again = wait_for(
            lambda: (set(_children(proc.pid)) & _heartbeat_pids(rt)) - {worker},
            timeout=20,
            what="another worker process",
        )
        emu.wait_push_idle(5)
        emu.insert_event("ann@example.com", EVENT)
        wait_for(
            lambda: changes_for(rt, cal_id), timeout=10, interval=0.02, what="the change, synced by the new worker"
        )

        (replacement,) = again
        proc.kill()  # no SIGTERM: gunicorn cannot stop the worker
        proc.wait()
        wait_for(lambda: not _alive(replacement), timeout=10, what="the worker stopping once serve is gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rt.close()


def _get(url: str, status: int) -> Any:
    try:
        resp = requests.get(url, timeout=2)
    except requests.RequestException:
        return None
    return resp.json() if resp.status_code == status else None


def _watched_calendar(rt: Runtime) -> int | None:
    from tests.push_support import channels_of

    with rt.sessions() as session:
        cal_id = session.scalar(select(Calendar.id).where(Calendar.google_id == "ann@example.com"))
    if cal_id is None or not any(c.status == "active" for c in channels_of(rt, calendar_id=cal_id)):
        return None
    return cal_id if calendar_row(rt, cal_id).sync_done == calendar_row(rt, cal_id).sync_requested else None


def _start_web(settings: Settings, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, requests.Response]:
    """`calsync web` with 2 processes, once it answers: the process, its port, the first /healthz."""
    port = free_port()
    proc = _calsync(
        ["web", "--port", str(port), "--workers", "2", "--threads", "2"], web_env(settings), tmp_path / "web.log"
    )
    try:
        health = wait_for(
            lambda: _response(f"http://127.0.0.1:{port}/healthz"), timeout=60, interval=0.1, what="the web process"
        )[0]
    except BaseException:
        _terminate(proc)
        raise
    return proc, port, health


@pytest.mark.slow
def test_web_serves_the_app_under_gunicorn_and_reports_no_worker(settings: Settings, tmp_path: Path) -> None:
    proc, port, resp = _start_web(settings, tmp_path)
    try:
        assert resp.status_code == 503 and "no worker" in resp.json()["worker"]
        assert resp.headers.get("Server", "").startswith("gunicorn")
        bad = requests.post(f"http://127.0.0.1:{port}/notifications", headers={"X-Goog-Channel-ID": "x"}, timeout=5)
        assert bad.status_code == 400
    finally:
        assert _terminate(proc) == 0


@pytest.mark.slow
def test_every_web_process_reports_the_counters_of_all(settings: Settings, tmp_path: Path) -> None:
    """A scrape reaches one of the processes; each reports what all of them counted."""
    proc, port, _health = _start_web(settings, tmp_path)
    try:
        for _ in range(40):  # a new connection each: gunicorn's processes take turns accepting them
            resp = requests.post(
                f"http://127.0.0.1:{port}/notifications", headers={"X-Goog-Channel-ID": "x"}, timeout=5
            )
            assert resp.status_code == 400
        totals = []
        for _ in range(12):
            scrape = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5, headers={"Connection": "close"})
            totals.append(_sample_total(scrape.text, "calsync_notifications_total"))
        assert totals == [40.0] * 12
        workers = set(_children(proc.pid))
        assert len(workers) == 2
    finally:
        assert _terminate(proc) == 0
    assert not list(Path(tempfile.gettempdir()).glob(f"calsync-metrics-*/*_{min(workers)}.db"))  # removed on exit


@pytest.mark.slow
def test_a_worker_serves_its_own_counters_on_its_metrics_port(
    settings: Settings, runtime: Runtime, emu: Any, tmp_path: Path
) -> None:
    """A `calsync worker` shares no process with `/metrics`: with --metrics-port it reports its own syncs."""
    connect_account(runtime, emu, "ann@example.com")  # the worker picks up the primary calendar and syncs it
    port = free_port()
    proc = _calsync(["worker"], web_env(settings, CALSYNC_WORKER_METRICS_PORT=str(port)), tmp_path / "worker.log")
    try:

        def counted(sample: str, **labels: str) -> float:
            scrape = _response(f"http://127.0.0.1:{port}/metrics")
            return _sample_total(scrape[0].text, sample, **labels) if scrape else 0.0

        wait_for(
            lambda: (
                counted("calsync_syncs_total", kind="full", outcome="ok") >= 1
                and counted("calsync_google_calls_total", method="events.watch", status="200") >= 1
            ),
            timeout=30,
            what="the worker's full sync and watch on its metrics port",
        )
        assert counted("calsync_google_calls_total", method="events.list", status="200") >= 1
        # The port is taken: a second worker says so and stops, rather than running unobserved.
        second = subprocess.run(
            [str(Path(sys.executable).parent / "calsync"), "worker", "--metrics-port", str(port)],
            env=web_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in second.stderr
    finally:
        assert _terminate(proc) == 0


@pytest.mark.slow
def test_every_answered_notification_survives_a_kill_9_of_the_web_processes(
    settings: Settings, runtime: Runtime, emu: Any, tmp_path: Path
) -> None:
    """A 200 means committed: SIGKILLed with no chance to close (on SQLite, most of it still in the
    write-ahead log, as the checkpoint comes a moment later), nothing answered is missing."""
    account_id = connect_account(runtime, emu, "ann@example.com")
    cal_id = add_calendar_row(runtime, account_id, "ann@example.com", sync_requested=1, sync_done=1, baseline_done=True)
    channel = emu_channel(emu, open_events_channel(runtime, cal_id))
    proc, port, _health = _start_web(settings, tmp_path)
    answered = []
    try:
        with requests.Session() as http:
            for number in range(10, 310):
                assert post_notification(f"http://127.0.0.1:{port}", push_headers(channel, number=number), http) == 200
                answered.append(number)
    finally:
        for pid in [*_children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    with runtime.sessions() as session:
        logged = session.scalars(select(Notification.message_number).where(Notification.outcome == "queued")).all()
        assert sorted(n if n is not None else -1 for n in logged) == answered
        assert session.get_one(Channel, str(channel["id"])).last_message_number == answered[-1]
    assert calendar_row(runtime, cal_id).sync_requested > calendar_row(runtime, cal_id).sync_done


def _sample_total(exposition: str, sample: str, **labels: str) -> float:
    """The sum of a scrape's `sample` values whose labels include `labels`."""
    return sum(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


def _children(pid: int) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def _response(url: str) -> tuple[requests.Response] | None:
    """The response in a tuple: a Response is falsy when its status is an error."""
    try:
        return (requests.get(url, timeout=2),)
    except requests.RequestException:
        return None


def test_processes_refuse_a_database_that_is_not_at_head(settings: Settings, tmp_path: Path) -> None:
    empty = Settings(**{**settings.__dict__, "database_url": f"sqlite:///{tmp_path}/empty.db"})
    with pytest.raises(ConfigError, match="run `calsync db upgrade`"):
        ensure_schema(empty, upgrade_sqlite=False)
    ensure_schema(empty, upgrade_sqlite=True)  # what `calsync serve` does on SQLite
    ensure_schema(empty, upgrade_sqlite=False)
    make_engine(empty.database_url).dispose()


def test_a_worker_whose_serving_process_died_before_it_started_watching_stops(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    """serve killed while its worker was still importing: the worker read its parent's pid only
    afterwards, got init's, and ran on for good. The parent's pid now comes on its command line."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that is nobody's parent now
    proc = _calsync(
        ["worker", "--exit-with-parent", "--parent-pid", str(gone.pid)], web_env(settings), tmp_path / "worker.log"
    )
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        _terminate(proc)
    assert "the serving process is gone" in (tmp_path / "worker.log").read_text()
