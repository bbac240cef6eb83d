"""A PostgreSQL server of a test's own, to stop, restart and cut off without touching the shared one.

`initdb` into a temporary folder, its own port, started and stopped with `pg_ctl`. Both refuse to
run as root, so as root they run as the `postgres` user. A migrated template database makes each
test's fresh database a file copy.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from calsync.store.db import make_engine
from calsync.store.migrate import upgrade

TEMPLATE = "calsync_template"


@contextlib.contextmanager
def empty_database(kind: str, folder: Path, prefix: str) -> Iterator[str]:
    """The URL of an empty database of a test's own (a file in `folder`, or a database created on
    CALSYNC_TEST_DATABASE_URL's server and dropped after), for tests that set its schema themselves."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'{prefix}.db'}"
        return
    base = os.environ.get("CALSYNC_TEST_DATABASE_URL")
    if not base:
        pytest.skip("PostgreSQL run skipped: set CALSYNC_TEST_DATABASE_URL")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def pg_bin() -> Path | None:
    """The newest installed server's binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why a private server cannot run here, or None."""
    if pg_bin() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root with no postgres user to run initdb as"
    return None


class PrivateServer:
    """One PostgreSQL cluster on 127.0.0.1:`port`, its data in a temporary folder."""

    def __init__(self) -> None:
        bin_dir = pg_bin()
        assert bin_dir is not None
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="calsync-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def outage(self, seconds: float) -> threading.Thread:
        """Stop now, start again `seconds` later, on a thread of its own (returned, already running)."""
        self.stop()

        def back() -> None:
            time.sleep(seconds)
            self.start()

        thread = threading.Thread(target=back, daemon=True)
        thread.start()
        return thread

    def make_template(self) -> None:
        admin = make_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {TEMPLATE}"))
        engine = make_engine(self.url(TEMPLATE))
        upgrade(engine)
        engine.dispose()
        admin.dispose()

    def fresh_database(self, name: str) -> str:
        """A new database on the real migrations (copied from the template); its URL."""
        admin = make_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}'))
        admin.dispose()
        return self.url(name)

    def terminate_backends(self, database: str) -> int:
        """`pg_terminate_backend` on every other connection to `database`; how many there were."""
        admin = make_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar_one()
        admin.dispose()
        return int(killed)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
