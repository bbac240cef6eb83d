"""SQLite failing under `calsync serve`'s web and worker: the write lock held elsewhere past the busy
timeout, and the disk full. The receiver answers 503 (Google retries), the worker backs off and goes
on, the process lives, and nothing committed is lost: every edit reaches the feed exactly once.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import make_url

import calsync.store.db
from calsync.runtime import Runtime
from calsync.work.listen import Listener
from calsync.work.worker import Worker
from tests.push_support import push_headers
from tests.work.outage_support import calendar_id, edit, running_worker, wait_converged, wait_until


@pytest.fixture
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """SQLite only (on the small disk when the test asks for one), with a busy timeout of half a
    second, so that "locked" comes within the test."""
    monkeypatch.setattr(calsync.store.db, "SQLITE_BUSY_TIMEOUT_MS", 500)
    folder = request.getfixturevalue("small_disk") if "small_disk" in request.fixturenames else tmp_path
    path = folder / "calsync.db"
    shutil.copy(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def serving(runtime: Runtime, live_server: str, emu: Any) -> Iterator[Worker]:
    """`calsync serve` in this process: the web app on its port and a worker, one runtime."""
    with running_worker(runtime, runtime, emu) as worker:
        yield worker


def test_a_write_lock_held_past_the_busy_timeout_answers_503_and_loses_nothing(
    serving: Worker, runtime: Runtime, live_server: str, emu: Any
) -> None:
    made = [edit(emu, "before")]
    wait_converged(runtime, emu, made, 5)
    channel = next(c for c in emu.channels() if c.get("resource_uri", "").endswith("events?alt=json"))
    path = make_url(runtime.settings.database_url).database or ""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        made.append(edit(emu, "while locked"))
        answer = requests.post(live_server + "/notifications", headers=push_headers(channel, number=10**6), timeout=30)
        assert answer.status_code == 503
        health = requests.get(live_server + "/healthz", timeout=30).status_code
        assert health in (200, 503)  # a read: WAL lets it through
        time.sleep(1.5)  # the worker meets the lock too (claims, heartbeats) and goes on
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    made.append(edit(emu, "after"))
    wait_converged(runtime, emu, made, 15)
    assert not isinstance(serving.listener, Listener)  # no LISTEN on SQLite


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MB tmpfs of the test's own (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = Path(tempfile.mkdtemp(prefix="calsync-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
    mount.rmdir()


def test_a_full_disk_answers_503_and_the_worker_goes_on_once_there_is_room(
    small_disk: Path, serving: Worker, runtime: Runtime, live_server: str, emu: Any
) -> None:
    """Filled to the last byte: notifications answered 503, syncs back off; room made again, every
    edit reaches the feed once, and what was committed before is intact."""
    made = [edit(emu, "before")]
    wait_converged(runtime, emu, made, 5)
    database = make_url(runtime.settings.database_url).database or ""
    assert Path(database).parent == small_disk
    filler = small_disk / "filler"
    # The write-ahead log emptied first, so that any write must grow a file (a log with room left
    # in it would take a small write even on a full disk).
    with sqlite3.connect(database, isolation_level=None) as wal:
        wait_until(lambda: wal.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, 5, "a checkpoint")
    assert Path(database + "-wal").stat().st_size == 0
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass  # full
    try:
        made += [edit(emu, f"disk full {i}") for i in range(20)]
        channel = next(c for c in emu.channels() if c.get("resource_uri", "").endswith("events?alt=json"))
        answer = requests.post(live_server + "/notifications", headers=push_headers(channel, number=10**6), timeout=30)
        assert answer.status_code == 503
        time.sleep(1.0)
    finally:
        filler.unlink()
    made.append(edit(emu, "room again"))
    wait_converged(runtime, emu, made, 20)
    assert not isinstance(serving.listener, Listener)
    with sqlite3.connect(database) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert calendar_id(runtime)
