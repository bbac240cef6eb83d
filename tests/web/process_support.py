"""`calsync web` as a real process (gunicorn) on a free loopback port, for tests that drive it over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from calsync.config import Settings
from tests.conftest import free_port
from tests.push_support import wait_for


def web_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `calsync` process use these settings (and none of the caller's CALSYNC_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env.update(
        {
            "CALSYNC_DATABASE_URL": settings.database_url,
            "CALSYNC_GOOGLE_CLIENT_SECRETS": str(settings.google_client_secrets),
            "CALSYNC_GOOGLE_API_URL": settings.google_api_url,
            "CALSYNC_PUBLIC_URL": settings.public_url,
            "CALSYNC_TOKEN_KEY": str(settings.token_key),
            "CALSYNC_API_TOKEN": str(settings.api_token),
            "CALSYNC_INSTANCE_PATH": str(settings.instance_path),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def calsync_web(settings: Settings, log: Path, **extra_env: str) -> Iterator[str]:
    """A running `calsync web` (one gunicorn process, four threads); yields its base URL."""
    with calsync_process(settings, log, ["web", "--workers", "1", "--threads", "4"], **extra_env) as base:
        yield base


@contextmanager
def calsync_process(settings: Settings, log: Path, args: list[str], **extra_env: str) -> Iterator[str]:
    """A running `calsync <args>` server on a free port; yields its base URL."""
    argv = [str(Path(sys.executable).parent / "calsync"), *args]
    with server_process(argv, web_env(settings, **extra_env), log, "/api/openapi.json", f"calsync {args[0]}") as base:
        yield base


@contextmanager
def server_process(argv: list[str], env: dict[str, str], log: Path, ready: str, what: str) -> Iterator[str]:
    """`argv --port <free port>` running until the block ends (SIGTERM, then a kill), once its `ready`
    path answers 200; yields its base URL."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(base + ready), timeout=60, interval=0.1, what=what)
        assert proc.poll() is None, log.read_text()
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
