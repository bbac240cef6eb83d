"""The long-running processes: `calsync serve` (web + worker), `calsync web`, `calsync worker`."""

from __future__ import annotations

import os
import signal
import threading

import click

from calsync.config import Settings
from calsync.stopping import stop_on_signals

PARENT_CHECK_SECONDS = 0.5


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1), help="HTTP request threads.")
@click.option(
    "--worker-threads", type=click.IntRange(1), default=None, help="Sync threads (default: CALSYNC_WORKER_THREADS)."
)
def serve(host: str, port: int, threads: int, worker_threads: int | None) -> None:
    """Web app (gunicorn) and a worker process beside it, in one command; upgrades a SQLite database itself."""
    from calsync.web.server import CalsyncApplication, ensure_schema

    settings = Settings.from_env()
    ensure_schema(settings, upgrade_sqlite=True)
    CalsyncApplication(
        settings, host=host, port=port, workers=1, threads=threads, with_worker=True, worker_threads=worker_threads
    ).run()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="gunicorn processes.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1), help="Threads per process.")
def web(host: str, port: int, workers: int, threads: int) -> None:
    """The web app only (receiver, API, dashboard) under gunicorn; run `calsync worker` beside it."""
    from calsync.web.server import CalsyncApplication, ensure_schema

    settings = Settings.from_env()
    ensure_schema(settings, upgrade_sqlite=False)
    CalsyncApplication(settings, host=host, port=port, workers=workers, threads=threads).run()


@click.command()
@click.option("--threads", type=click.IntRange(1), default=None, help="Sync threads (default: CALSYNC_WORKER_THREADS).")
@click.option("--burst", is_flag=True, help="Do everything due now, then exit.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve this process's Prometheus counters (syncs, changes, Google calls, deliveries) on this port "
    "(default: CALSYNC_WORKER_METRICS_PORT; none when unset).",
)
@click.option(
    "--metrics-host",
    default=None,
    help="Address for the metrics port (default: CALSYNC_WORKER_METRICS_HOST, 127.0.0.1); "
    "0.0.0.0 lets a Prometheus on another machine scrape it.",
)
@click.option("--exit-with-parent", is_flag=True, hidden=True, help="Stop once the process that started it is gone.")
@click.option("--parent-pid", type=int, default=None, hidden=True, help="With --exit-with-parent: that process's pid.")
def worker(
    threads: int | None,
    burst: bool,
    metrics_port: int | None,
    metrics_host: str | None,
    exit_with_parent: bool,
    parent_pid: int | None,
) -> None:
    """Claim and do due work (syncs, renewals, deliveries) until SIGTERM; any number may run."""
    from calsync.runtime import Runtime, freeze_startup_objects
    from calsync.web.server import ensure_schema
    from calsync.work.worker import Worker

    settings = Settings.from_env()
    ensure_schema(settings, upgrade_sqlite=False)
    runtime = Runtime.create(settings, threads=threads or settings.worker_threads)
    try:
        port = metrics_port or settings.worker_metrics_port
        if port is not None and not burst:
            _serve_metrics(metrics_host or settings.worker_metrics_host, port)
        w = Worker(runtime, threads=threads)
        freeze_startup_objects()
        if burst:
            done = w.run_burst()
            click.echo(f"burst finished: {done} job(s)")
            return

        def _announce(sig: signal.Signals) -> None:
            click.echo(f"received {sig.name}: finishing the work in hand", err=True)

        with stop_on_signals(_announce) as stop:
            if exit_with_parent:
                _stop_with_parent(stop, parent_pid if parent_pid is not None else os.getppid())
            click.echo(f"worker {w.name} running with {w.threads} thread(s)", err=True)
            w.run(stop)
        click.echo(f"worker {w.name} stopped", err=True)
    finally:
        runtime.close()


def _stop_with_parent(stop: threading.Event, parent: int) -> None:
    """`calsync serve`'s worker: a parent killed outright (SIGKILL, OOM) cannot stop it, so it looks.

    The parent's pid comes from the parent itself: read here, after the imports and the schema check,
    it was already init's when serve died while the worker started, and the worker ran on for good.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                click.echo("the serving process is gone: finishing the work in hand", err=True)
                stop.set()
                return
            if stop.wait(PARENT_CHECK_SECONDS):
                return

    threading.Thread(target=watch, name="calsync-parent-watch", daemon=True).start()


def _serve_metrics(host: str, port: int) -> None:
    """The worker's own counters: a worker outside `calsync serve` shares no process with `/metrics`."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as err:
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {err.strerror or err}") from err
    click.echo(f"worker metrics on http://{host}:{port}/metrics", err=True)
