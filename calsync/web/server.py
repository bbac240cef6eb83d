"""Running calsync under gunicorn: the web app alone, or the web app plus worker threads.

`calsync serve` is what most people run, so it is a production server (gunicorn's threaded
worker, reading each request whole before a thread takes it: `calsync.web.reading_worker`), never
Flask's development server. Its single worker process also runs the calsync Worker,
sharing the app's Runtime: a notification handled by a request thread wakes a worker thread
through the in-process condition, with no polling in between.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from calsync.config import Settings
from calsync.errors import ConfigError
from calsync.store.db import make_engine
from calsync.store.migrate import current_revision, head_revision, upgrade

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 30


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
            "graceful_timeout": GRACEFUL_SECONDS,
            "timeout": 60,
            "proc_name": "calsync",
            "errorlog": "-",
            "loglevel": "info",
        }
        if with_worker:
            self.options["post_worker_init"] = self._start_worker
            self.options["worker_exit"] = self._stop_worker
        self._metrics_dir: str | None = None
        if workers > 1:
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
            self.options["on_exit"] = self._remove_metrics_dir
        self.options["child_exit"] = _forget_process_metrics

    def _remove_metrics_dir(self, _arbiter: Any) -> None:
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn 24+ opens a control socket at one per-user path; several calsync processes
            # on one host would fight over it, and calsync does not use it.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        # Built in the worker process (no preload), so each process has its own engine and pool.
        from calsync.web.app import build_app

        return build_app(self.settings)

    # gunicorn hooks, run inside the worker process ---------------------------------------------
    def _start_worker(self, gworker: Any) -> None:
        from calsync.work.worker import Worker

        runtime = gworker.wsgi.extensions["calsync"]
        stop = threading.Event()
        worker = Worker(runtime, threads=self.worker_threads)
        thread = threading.Thread(target=worker.run, args=(stop,), name="calsync-worker", daemon=True)
        thread.start()
        gworker.calsync_worker = (stop, thread)
        log.info("calsync worker %s started with %d thread(s)", worker.name, worker.threads)

    def _stop_worker(self, _arbiter: Any, gworker: Any) -> None:
        pair = getattr(gworker, "calsync_worker", None)
        if pair is None:
            return
        stop, thread = pair
        stop.set()
        thread.join(timeout=GRACEFUL_SECONDS)


def _forget_process_metrics(_arbiter: Any, gworker: Any) -> None:
    """A dead process's gauges go with it (its counters still count towards the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(gworker.pid)


def ensure_schema(settings: Settings, *, upgrade_sqlite: bool) -> None:
    """SQLite is upgraded in place by `calsync serve`; PostgreSQL must be upgraded on purpose."""
    engine = make_engine(settings.database_url)
    try:
        if upgrade_sqlite and settings.is_sqlite:
            upgrade(engine)
            return
        logging.getLogger("alembic").setLevel(logging.WARNING)  # a revision check is not news
        current, head = current_revision(engine), head_revision()
        if current != head:
            raise ConfigError(
                f"the database schema is at {current or 'nothing'}, not {head}: run `calsync db upgrade` first"
            )
    finally:
        engine.dispose()
