"""`calsync web` under gunicorn: several processes, each with a listening socket of its own."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from calsync.config import Settings
from tests.push_support import wait_for
from tests.web.process_support import calsync_process

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to see sockets' owners")


def _owners(port: int, state: str) -> list[set[int]]:
    """For each TCP socket on the local port in this state, the processes holding it."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", state, f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return [{int(pid) for pid in re.findall(r"pid=(\d+)", line)} for line in out.splitlines() if line.strip()]


def test_each_process_listens_on_its_own_socket_and_kept_alive_connections_spread_over_them(
    settings: Settings, tmp_path: Path
) -> None:
    """On one shared socket the process that woke first took the connections: a load balancer's few
    kept-alive ones could all land on one process while the other idled."""
    with calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "2", "--threads", "2"]) as base:
        port = int(base.rsplit(":", 1)[1])
        wait_for(lambda: len(_owners(port, "listening")) == 2, timeout=30, what="both processes listening")
        listeners = _owners(port, "listening")
        assert [len(pids) for pids in listeners] == [1, 1] and listeners[0] != listeners[1]
        workers = listeners[0] | listeners[1]
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
        try:
            for conn in connections:
                conn.request("GET", "/api/openapi.json")
                response = conn.getresponse()
                response.read()
                assert response.status == 200
            served_by = set().union(*_owners(port, "established")) & workers
        finally:
            for conn in connections:
                conn.close()
        assert served_by == workers  # 16 connections on one of two sockets: one chance in 32,768
