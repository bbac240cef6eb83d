"""Shared pieces of the benchmark and fault scripts: databases, the emulator, calsync processes, reporting.

Every script measures its baseline in the same run (the machine is shared and has 2 cores, so only
ratios are comparable between runs), prints "target met"/"target missed" for speed, and exits
non-zero only when a correctness check fails. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol, TypeVar

import requests
from sqlalchemy import func, make_url, select, text

from calsync.clock import Clock
from calsync.config import Secret, Settings
from calsync.runtime import Runtime
from calsync.store.crypto import new_key
from calsync.store.db import make_engine
from calsync.store.migrate import upgrade
from calsync.store.models import Calendar, Change, Channel, Event
from tests.sync_support import connect_account as connect_account  # re-exported for the benchmarks

ROOT = Path(__file__).resolve().parents[2]
CALSYNC = str(Path(sys.executable).parent / "calsync")
PG_ADMIN_URL = os.environ.get("CALSYNC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
API_TOKEN = "bench-api-token"
ENGINES = ("sqlite", "postgresql")


# Command line and reporting ----------------------------------------------------------------------
def parser(description: str, *, db_default: str | None = "both") -> argparse.ArgumentParser:
    """The options every script shares: --quick, --db, --json."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    if db_default is not None:
        p.add_argument("--db", choices=(*ENGINES, "both"), default=db_default, help="database engine(s)")
    p.add_argument("--json", type=Path, default=None, help="also append the figures as JSON lines here")
    return p


def engines(choice: str) -> tuple[str, ...]:
    return ENGINES if choice == "both" else (choice,)


class Report:
    """Prints figures with their baseline ratio and target verdict; collects correctness failures."""

    def __init__(self, title: str, json_path: Path | None = None) -> None:
        self.title = title
        self.json_path = json_path
        self.failures: list[str] = []
        self.command = " ".join([Path(sys.executable).name, *[a for a in sys.argv if a]])
        print(f"== {title}   ({self.command})", flush=True)

    def figure(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        baseline: float | None = None,
        baseline_name: str = "",
        target: str | None = None,
        met: bool | None = None,
        ratio: float | None = None,
    ) -> None:
        """One measured figure: value, the same-run baseline and their ratio, and the target verdict."""
        line = f"  {name}: {_fmt(value)} {unit}"
        if baseline is not None:
            ratio = ratio if ratio is not None else (value / baseline if baseline else float("nan"))
            line += f" | baseline {baseline_name}: {_fmt(baseline)} {unit} | ratio {ratio:.2f}"
        elif ratio is not None:
            line += f" | ratio {ratio:.2f}"
        if target is not None:
            line += f" | target {target}: " + ("target met" if met else "target missed")
        print(line, flush=True)
        if self.json_path is not None:
            with self.json_path.open("a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "script": self.title,
                            "name": name,
                            "value": value,
                            "unit": unit,
                            "baseline": baseline,
                            "baseline_name": baseline_name,
                            "ratio": ratio,
                            "target": target,
                            "met": met,
                            "command": self.command,
                        }
                    )
                    + "\n"
                )

    def note(self, text_: str) -> None:
        print(f"  - {text_}", flush=True)

    def check(self, ok: bool, what: str) -> bool:
        """A correctness check: failing it makes the script exit non-zero."""
        print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def finish(self) -> int:
        if self.failures:
            print(f"== {self.title}: {len(self.failures)} correctness check(s) FAILED", flush=True)
            return 1
        print(f"== {self.title}: all correctness checks passed", flush=True)
        return 0


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


# Small utilities ---------------------------------------------------------------------------------
def old_code(rev: str, into: Path, parts: tuple[str, ...] = ("calsync",)) -> Path:
    """That commit's code in `into`, with this tree's migrations beside it.

    The old code is measured on the schema this tree sets up (a SQLite `calsync serve` upgrades its
    own database, so it must know this tree's head). Migrations only add, so every column the old
    code knows is there, provided its migrations are a prefix of this tree's.
    """
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "alembic/versions/"],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = sorted(Path(line).name for line in listed.stdout.split() if line.endswith(".py"))
    ours = sorted(p.name for p in (ROOT / "alembic" / "versions").glob("*.py"))
    if ours[: len(theirs)] != theirs:
        raise SystemExit(f"--old {rev}: its migrations are not a prefix of this tree's; both run on one schema")
    subprocess.run(f"git -C {ROOT} archive {rev} {' '.join(parts)} | tar -x -C {into}", shell=True, check=True)
    shutil.copytree(ROOT / "alembic", into / "alembic")
    return into


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll `predicate` until truthy (returned) or `timeout` seconds pass (returns the last falsy value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def proc_status_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc (VmRSS now, VmHWM peak), in KiB; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


# Databases ---------------------------------------------------------------------------------------
@contextmanager
def database(kind: str, workdir: Path, name: str = "bench") -> Iterator[str]:
    """A fresh migrated database: a SQLite file in `workdir`, or a PostgreSQL database of its own (dropped after)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / (name + '.db')}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    admin_url = make_url(Settings(database_url=PG_ADMIN_URL).database_url)
    db_name = f"calsync_{name}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    url = admin_url.set(database=db_name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


class Stoppable(Protocol):
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=Stoppable)


@contextmanager
def started_on(kind: str, workdir: Path, name: str, start: Callable[[str], _S]) -> Iterator[_S]:
    """What `start` builds on a fresh database (`database`, given its URL), stopped before the database goes."""
    with database(kind, workdir, name) as url:
        thing = start(url)
        try:
            yield thing
        finally:
            thing.stop()


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"calsync-{prefix}-") as path:
        yield Path(path)


# The emulator and calsync ------------------------------------------------------------------------
def start_emulator(**kwargs: Any) -> Any:
    """Google on loopback, in this process (its memory and CPU are not calsync's)."""
    from calsync.emulator import Emulator

    kwargs.setdefault("push_workers", 8)
    return Emulator(**kwargs).start(host="127.0.0.1", port=0)


class Deployment:
    """calsync's configuration for one run, as Settings (in-process) and as environment (subprocesses)."""

    def __init__(self, emu: Any, db_url: str, work: Path, *, public_port: int | None = None, **overrides: Any) -> None:
        self.emu = emu
        self.work = work
        self.port = public_port or free_port()
        self.public_url = f"http://127.0.0.1:{self.port}"
        secrets_path = work / "client_secret.json"
        emu.write_client_secrets(secrets_path, [self.public_url + "/oauth2callback"])
        self.settings = Settings(
            database_url=db_url,
            google_client_secrets=secrets_path,
            google_api_url=emu.api_url,
            public_url=self.public_url,
            secret_key=Secret("bench-secret"),
            token_key=Secret(new_key()),
            api_token=Secret(API_TOKEN),
            instance_path=work / "instance",
            **overrides,
        )
        self.procs: list[Proc] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
        s = self.settings
        env.update(
            {
                "CALSYNC_DATABASE_URL": s.database_url,
                "CALSYNC_GOOGLE_CLIENT_SECRETS": str(s.google_client_secrets),
                "CALSYNC_GOOGLE_API_URL": s.google_api_url,
                "CALSYNC_PUBLIC_URL": s.public_url,
                "CALSYNC_SECRET_KEY": str(s.secret_key),
                "CALSYNC_TOKEN_KEY": str(s.token_key),
                "CALSYNC_API_TOKEN": str(s.api_token),
                "CALSYNC_INSTANCE_PATH": str(s.instance_path),
                "CALSYNC_CHANNEL_TTL": f"{s.channel_ttl.total_seconds():g}",
                "CALSYNC_RENEW_BEFORE": f"{s.renew_before.total_seconds():g}",
                "CALSYNC_RECONCILE_EVERY": f"{s.reconcile_every.total_seconds():g}",
                "CALSYNC_LEASE_SECONDS": f"{s.lease.total_seconds():g}",
                "CALSYNC_WORKER_THREADS": str(s.worker_threads),
            }
        )
        env.update(extra)
        return env

    def runtime(self, clock: Clock | None = None) -> Runtime:
        return Runtime.create(self.settings, clock=clock)

    def start(self, args: list[str], name: str, **env: str) -> Proc:
        """Run `calsync <args>` with this deployment's environment; output goes to a log file."""
        proc = Proc([CALSYNC, *args], self.env(**env), self.work / f"{name}.log")
        self.procs.append(proc)
        return proc

    def start_python(self, args: list[str], name: str, **env: str) -> Proc:
        proc = Proc([sys.executable, *args], self.env(**env), self.work / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def wait_http(self, timeout: float = 30.0, port: int | None = None) -> None:
        """Wait until the web process answers (any status: /healthz is 503 without a worker)."""
        url = f"http://127.0.0.1:{port or self.port}/healthz"

        def answers() -> bool:
            try:
                requests.get(url, timeout=1)
                return True
            except requests.RequestException:
                return False

        if not wait_until(answers, timeout, 0.1):
            tails = "\n".join(f"--- {p.log.name}\n{p.tail()}" for p in self.procs)
            raise RuntimeError(f"nothing answered on {url} within {timeout}s\n{tails}")


class Proc:
    """A child process we started; stopped by its own pid only."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("ab")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it does not go; gunicorn's children go with their group."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        self._fh.close()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# Accounts, calendars and checks -----------------------------------------------------------------
def event_body(n: int, summary: str | None = None, day: int = 0) -> dict[str, Any]:
    start = 8 + n % 10
    date = f"2026-{1 + (day // 28) % 12:02d}-{1 + day % 28:02d}"
    return {
        "summary": summary or f"event {n}",
        "description": f"benchmark event number {n}",
        "location": "Room 4",
        "start": {"dateTime": f"{date}T{start:02d}:00:00Z"},
        "end": {"dateTime": f"{date}T{start:02d}:30:00Z"},
    }


def all_synced(rt: Runtime, calendars: int, *, watched: bool = True) -> bool:
    """Every calendar has its baseline, owes no sync, and (if asked) has an active channel."""
    with rt.sessions() as session:
        done = session.scalar(
            select(func.count())
            .select_from(Calendar)
            .where(
                Calendar.baseline_done.is_(True),
                Calendar.sync_done >= Calendar.sync_requested,
                Calendar.lease_owner.is_(None),
            )
        )
        if (done or 0) < calendars:
            return False
        if not watched:
            return True
        live = session.scalar(
            select(func.count(func.distinct(Channel.calendar_id))).where(
                Channel.kind == "events", Channel.status == "active"
            )
        )
        return (live or 0) >= calendars


def google_view(emu: Any, google_calendar_id: str) -> dict[str, dict[str, Any]]:
    """What Google holds and the mirror must equal: live events plus cancelled exceptions of live series."""
    everything = emu.events(google_calendar_id, include_cancelled=True)
    live = {e["id"] for e in everything if e.get("status") != "cancelled"}
    return {e["id"]: e for e in everything if e.get("status") != "cancelled" or e.get("recurringEventId") in live}


def mirror_of(rt: Runtime, google_calendar_id: str) -> dict[str, dict[str, Any]]:
    with rt.sessions() as session:
        cal_ids = select(Calendar.id).where(Calendar.google_id == google_calendar_id)
        rows = session.scalars(select(Event).where(Event.calendar_id.in_(cal_ids))).all()
        return {row.google_id: row.data for row in rows}


def all_changes(rt: Runtime) -> list[Change]:
    with rt.sessions() as session:
        return list(session.scalars(select(Change).order_by(Change.seq)))


def check_mirrors(report: Report, rt: Runtime, emu: Any, calendar_ids: list[str]) -> None:
    """The mirror of every calendar equals what Google holds, event by event (not just counts)."""
    bad = [cal for cal in calendar_ids if mirror_of(rt, cal) != google_view(emu, cal)]
    report.check(
        not bad, f"mirror == emulator for all {len(calendar_ids)} calendars" + (f" (differ: {bad[:3]})" if bad else "")
    )


def run_main(main: Callable[[argparse.Namespace], int], p: argparse.ArgumentParser) -> None:
    args = p.parse_args()
    sys.exit(main(args))


class EditStream:
    """Edits that never touch the same event twice, so each one must show up as exactly one Change.

    Inserts new events, patches untouched baseline events and deletes untouched baseline events, in
    turn, over the given calendars; each insert and patch writes a unique summary. `check()` then
    proves every edit is in the diff log exactly once and nothing else is.
    """

    def __init__(self, emu: Any, calendars: list[str], prefix: str) -> None:
        self.emu = emu
        self.calendars = calendars
        self.prefix = prefix
        self.untouched = {cal: [e["id"] for e in emu.events(cal)] for cal in calendars}
        self.baseline = sum(len(ids) for ids in self.untouched.values())  # each is one snapshot row
        self.created: set[str] = set()
        self.updated: set[str] = set()
        self.deleted: set[tuple[str, str]] = set()
        self.count = 0

    def one(self) -> None:
        i = self.count
        cal = self.calendars[i % len(self.calendars)]
        op = (i // len(self.calendars)) % 3
        if op == 1 and self.untouched[cal]:
            value = f"{self.prefix}-upd-{i}"
            self.emu.patch_event(cal, self.untouched[cal].pop(), {"summary": value})
            self.updated.add(value)
        elif op == 2 and self.untouched[cal]:
            event_id = self.untouched[cal].pop()
            self.emu.delete_event(cal, event_id)
            self.deleted.add((cal, event_id))
        else:
            value = f"{self.prefix}-new-{i}"
            self.emu.insert_event(cal, event_body(i, value))
            self.created.add(value)
        self.count += 1

    def run(self, rate: float, stop: Any, limit: int) -> None:
        """Open loop at `rate`/s until `stop` is set or `limit` edits are done."""
        start = time.perf_counter()
        while not stop.is_set() and self.count < limit:
            delay = start + self.count / rate - time.perf_counter()
            if delay > 0:
                stop.wait(delay)
            self.one()

    def check(self, report: Report, rt: Runtime, label: str) -> None:
        snapshots = [c.event_id for c in all_changes(rt) if c.kind == "snapshot"]
        report.check(
            len(snapshots) == len(set(snapshots)) == self.baseline,
            f"{label}: the first syncs wrote one snapshot row for each of {self.baseline} events "
            f"({len(snapshots)} rows, distinct {len(set(snapshots))})",
        )
        changes = [c for c in all_changes(rt) if c.kind not in (None, "snapshot")]  # event rows only
        cal_google = _google_ids(rt)
        created = [c.after["summary"] for c in changes if c.kind == "created" and c.after]
        updated = [c.after["summary"] for c in changes if c.kind == "updated" and c.after]
        deleted = [(cal_google[c.calendar_id or 0], c.event_id) for c in changes if c.kind == "deleted"]
        report.check(
            sorted(created) == sorted(self.created),
            f"{label}: each of {len(self.created)} inserts is one `created` change "
            f"(log has {len(created)}, distinct {len(set(created))})",
        )
        report.check(
            sorted(updated) == sorted(self.updated),
            f"{label}: each of {len(self.updated)} patches is one `updated` change "
            f"(log has {len(updated)}, distinct {len(set(updated))})",
        )
        report.check(
            sorted(deleted) == sorted(self.deleted),
            f"{label}: each of {len(self.deleted)} deletes is one `deleted` change "
            f"(log has {len(deleted)}, distinct {len(set(deleted))})",
        )
        report.check(
            len(changes) == self.count, f"{label}: the log holds {len(changes)} changes for {self.count} edits"
        )


def _google_ids(rt: Runtime) -> dict[int, str]:
    with rt.sessions() as session:
        return dict(session.execute(select(Calendar.id, Calendar.google_id)).all())


def mirrors_match(rt: Runtime, emu: Any, calendar_ids: list[str]) -> bool:
    return all(mirror_of(rt, cal) == google_view(emu, cal) for cal in calendar_ids)
