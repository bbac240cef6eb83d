"""Running calsync under gunicorn: the web app alone, or the web app beside a worker process.

`calsync serve` is what most people run, so it is a production server (gunicorn's threaded
worker, reading each request whole before a thread takes it: `calsync.web.reading_worker`), never
Flask's development server. Its worker (`calsync worker`) runs in a process of its own, started
once gunicorn listens and stopped with it: sync threads in the web process held the interpreter
lock against the request threads, and the receiver's throughput and tail latency paid for every
sync. A notification still reaches the worker at once: NOTIFY on PostgreSQL, a datagram on a SQLite
file's host (`calsync.wakeup.HostPeers`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from calsync.config import Settings
from calsync.errors import ConfigError
from calsync.store.db import make_engine
from calsync.store.migrate import require_head, upgrade

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 30
# A web process whose event loop has not told gunicorn it is alive for this long is killed and replaced.
# The loop does so at least once a second whatever its request threads are doing, so only a process
# that is truly stuck (stopped, deadlocked, its loop blocked) goes quiet. With several processes each
# has a socket of its own, and the kernel keeps handing a stuck one its share of new connections
# until it is gone: at 60 s, a minute of them went unanswered. A process building its app says it
# is alive meanwhile (`ReadingThreadWorker.load_wsgi`), so a slow start-up is not taken for stuck.
HUNG_SECONDS = 20
RESPAWN_DELAY = 1.0  # seconds before a worker that died is started again, doubling up to RESPAWN_MAX
RESPAWN_MAX = 30.0
WORKER_NICENESS = 5
# Linux 5.14+: whether a closing listener's queued connections move to another socket of its
# SO_REUSEPORT group (1) or are reset (0, the default).
MIGRATE_QUEUED = Path("/proc/sys/net/ipv4/tcp_migrate_req")


class CalsyncApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured in code: threaded workers that read requests whole, optionally with calsync's Worker."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str,
        port: int,
        workers: int = 1,
        threads: int = 8,
        with_worker: bool = False,
        worker_threads: int | None = None,
    ) -> None:
        self.settings = settings
        self.with_worker = with_worker
        self.worker_threads = worker_threads
        self.options: dict[str, Any] = {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "calsync.web.reading_worker.ReadingThreadWorker",
            "threads": threads,
            # Several processes: each listens on a socket of its own (SO_REUSEPORT), and the kernel
            # spreads new connections over them. On one shared socket, whichever process woke first
            # took them, and a load balancer's few kept-alive connections could all land on one
            # process while the others idled.
            "reuse_port": workers > 1,
            "graceful_timeout": GRACEFUL_SECONDS,
            "timeout": HUNG_SECONDS,
            "proc_name": "calsync",
            "errorlog": "-",
            "loglevel": "info",
        }
        self.address = (host, port)
        self._worker: subprocess.Popen[bytes] | None = None
        self._respawn_delay = RESPAWN_DELAY / 2
        if with_worker:
            self.options["when_ready"] = self._start_worker
        self.options["on_exit"] = self._on_exit
        self._metrics_dir: str | None = None
        if workers > 1 or with_worker:
            self._share_metrics()
        super().__init__()

    def _share_metrics(self) -> None:
        """With several processes, a scrape of `/metrics` reaches one of them: their counters go to a
        shared folder (prometheus-client's multiprocess mode) so that any process reports them all.
        Set before the workers are forked and import prometheus-client; a folder of our own unless
        PROMETHEUS_MULTIPROC_DIR names one (then keeping it clean between runs is the operator's)."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._metrics_dir = tempfile.mkdtemp(prefix="calsync-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        self.options["child_exit"] = _forget_process_metrics

    def _on_exit(self, _arbiter: Any) -> None:
        self._stop_worker()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def run(self) -> None:
        if self.options["reuse_port"]:
            refuse_a_taken_port(*self.address)
            warn_unless_queued_connections_move()
        super().run()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn 24+ opens a control socket at one per-user path; several calsync processes
            # on one host would fight over it, and calsync does not use it.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        # Built in the worker process (no preload), so each process has its own engine and pool.
        from calsync.runtime import freeze_startup_objects

        app = self.build()
        freeze_startup_objects()
        return app

    def build(self) -> Flask:
        """The app of one web process, its pool sized for the process's request threads."""
        from calsync.runtime import Runtime
        from calsync.web.app import build_app

        return build_app(self.settings, runtime=Runtime.create(self.settings, threads=self.options["threads"]))

    # gunicorn hooks, run in gunicorn's own (arbiter) process ---------------------------------
    def _start_worker(self, _arbiter: Any) -> None:
        """`calsync worker` beside the web process, with the same environment (and so the same settings);
        it stops by itself if this process dies without stopping it."""
        argv = [sys.executable, "-m", "calsync", "worker", "--exit-with-parent", "--parent-pid", str(os.getpid())]
        if self.worker_threads is not None:
            argv += ["--threads", str(self.worker_threads)]
        self._worker = subprocess.Popen(argv, preexec_fn=_below_the_web)
        log.info("calsync worker process %d started", self._worker.pid)
        watch = threading.Thread(target=self._watch_worker, args=(self._worker,), name="calsync-worker-watch")
        watch.daemon = True
        watch.start()

    def _watch_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """Start the worker again if it ended while serve goes on (its exit status is no guide: gunicorn's
        arbiter may reap it first); sooner when it had run a while, so a worker that cannot start is not
        started again in a tight loop."""
        started = time.monotonic()
        code = worker.wait()
        if self._worker is not worker:
            return  # stopped by serve
        lived = time.monotonic() - started
        _forget_metrics_of(worker.pid)
        self._respawn_delay = RESPAWN_DELAY if lived > RESPAWN_MAX else min(RESPAWN_MAX, self._respawn_delay * 2)
        log.error(
            "calsync worker process %d ended (%s); starting another in %gs", worker.pid, code, self._respawn_delay
        )
        time.sleep(self._respawn_delay)
        if self._worker is worker:
            self._start_worker(None)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.terminate()  # SIGTERM: it finishes the job in hand
        try:
            worker.wait(GRACEFUL_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        _forget_metrics_of(worker.pid)


def refuse_a_taken_port(host: str, port: int) -> None:
    """With `SO_REUSEPORT` a second server on the same port (the same user's) would bind beside the
    first and share its connections, where it used to fail: it is refused here, as before, by a
    bind without the option, which any socket already listening there makes fail."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn's own: a restart's TIME_WAITs pass
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(f"{host}:{port} is already in use: is another calsync running there?") from err


def warn_unless_queued_connections_move(setting: Path = MIGRATE_QUEUED) -> bool:
    """Say so when a process that stops (a reload, a restart, a crash) would reset the connections
    waiting in its own socket's queue, which the kernel no longer hands to any other process: a
    notification then fails at Google's end (behind a proxy, as a 502 that Google retries). With
    `net.ipv4.tcp_migrate_req = 1` they move to another process's socket. True when they will."""
    try:
        moves = setting.read_text().strip() == "1"
    except OSError:
        moves = False  # not Linux 5.14+, or /proc unreadable: assume the kernel's default
    if not moves:
        log.warning(
            "each of the web processes listens on a socket of its own: connections waiting in the queue of one "
            "that stops (a reload, a restart) are reset unless the kernel moves them; "
            "set net.ipv4.tcp_migrate_req = 1 (sysctl, Linux 5.14+)"
        )
    return moves


def _below_the_web() -> None:
    """The worker's niceness: when the cores are short, the receiver's answers to Google come first
    and syncs take what is left (they wait in the queue; a notification must not)."""
    os.nice(WORKER_NICENESS)


def _forget_process_metrics(_arbiter: Any, gworker: Any) -> None:
    _forget_metrics_of(gworker.pid)


def _forget_metrics_of(pid: int) -> None:
    """A dead process's gauges go with it (its counters still count towards the totals)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def ensure_schema(settings: Settings, *, upgrade_sqlite: bool) -> None:
    """SQLite is upgraded in place by `calsync serve`; PostgreSQL must be upgraded on purpose."""
    engine = make_engine(settings.database_url)
    try:
        if upgrade_sqlite and settings.is_sqlite:
            upgrade(engine)
            return
        require_head(engine)
    finally:
        engine.dispose()
