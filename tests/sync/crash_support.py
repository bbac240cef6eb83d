"""The syncing child process the crash tests SIGKILL, driven over its stdin and stdout."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from calsync.config import Settings

CHILD = Path(__file__).with_name("crash_child.py")


class Child:
    """tests/sync/crash_child.py: imports calsync once, then forks a syncing process per `start()`."""

    def __init__(self, env: dict[str, str], calendar_id: int, page_size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(calendar_id), str(page_size)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.last = ""
        self.pid = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("ready", 1, timeout=60)
        assert self.last == "ready", "the child did not start"

    def start(self, calendar_id: int | None = None) -> None:
        """Fork a new syncing process (the previous one is dead), of another calendar if given."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n" if calendar_id is None else f"go {calendar_id}\n")
        self.proc.stdin.flush()
        self.wait_for("pid", 1, timeout=10)
        self.pid = int(self.last.split()[1])

    def wait_for(self, prefix: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count and time.monotonic() < deadline:
            try:
                self.last = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if self.last.startswith(("error", "dead")):
                raise AssertionError(f"the syncing process died on its own: {self.last}")
            if self.last.startswith(prefix):
                seen += 1

    def kill(self) -> bool:
        """SIGKILL the syncing process; True when it was inside a sync (past "begin", before "end")."""
        os.kill(self.pid, signal.SIGKILL)
        was = self.last
        while True:
            line = self.lines.get(timeout=10)
            if line.startswith("dead"):
                return was.startswith(("begin", "page"))
            if line.startswith("error"):
                raise AssertionError(f"the syncing process failed: {line}")
            was = line

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CALSYNC_DATABASE_URL": settings.database_url,
            "CALSYNC_GOOGLE_CLIENT_SECRETS": str(settings.google_client_secrets),
            "CALSYNC_GOOGLE_API_URL": settings.google_api_url,
            "CALSYNC_PUBLIC_URL": settings.public_url,
            "CALSYNC_TOKEN_KEY": str(settings.token_key),
        }
    )
    return env
