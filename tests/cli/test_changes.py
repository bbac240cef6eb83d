"""`calsync changes`: the same feed as /api/changes, for people and for scripts."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from calsync.cli.changes import changes
from calsync.feed.append import append_changes
from calsync.feed.retention import trim_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change
from tests.push_support import wait_for

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
CALSYNC = shutil.which("calsync", path=str(Path(sys.executable).parent)) or "calsync"

V1 = {"id": "e1", "summary": "Standup", "location": "Room 1", "start": {"dateTime": "2026-03-02T10:00:00Z"}}
V2 = {"id": "e1", "summary": "Daily standup", "location": "Room 2", "start": {"dateTime": "2026-03-02T10:30:00Z"}}


def seed_calendars(runtime: Runtime) -> tuple[int, int]:
    with transaction(runtime.sessions) as s:
        account = Account(email="alice@example.com", credentials=runtime.cipher.encrypt_str("{}"), scopes=[])
        s.add(account)
        s.flush()
        home = Calendar(account_id=account.id, google_id="alice@example.com")
        team = Calendar(account_id=account.id, google_id="team@group.calendar.google.com")
        s.add_all([home, team])
        s.flush()
        return home.id, team.id


def add_change(
    runtime: Runtime,
    calendar_id: int,
    kind: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    fields: list[str] | None = None,
) -> int:
    with transaction(runtime.sessions) as s:
        [change] = append_changes(
            s,
            [
                Change(
                    calendar_id=calendar_id,
                    event_id=(after or before or {})["id"],
                    kind=kind,
                    fields=fields or [],
                    before=before,
                    after=after,
                )
            ],
            T0,
        )
        return change.seq


@pytest.fixture
def feed(runtime: Runtime) -> tuple[int, int]:
    home, team = seed_calendars(runtime)
    add_change(runtime, home, "created", None, V1)
    add_change(runtime, home, "updated", V1, V2, ["summary", "location", "start"])
    add_change(runtime, team, "created", None, {"id": "t1", "summary": "Offsite"})
    add_change(runtime, home, "deleted", V2, None)
    return home, team


def run(settings: Any, *args: str) -> Any:
    result = CliRunner().invoke(
        changes, list(args), env={"CALSYNC_DATABASE_URL": settings.database_url}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result


def test_human_output_shows_kinds_and_field_level_before_and_after(settings: Any, feed: Any) -> None:
    out = run(settings, "--limit", "10").output
    lines = out.splitlines()
    assert lines[0].startswith("#1  2026-03-01T09:30:00.000Z  alice@example.com / alice@example.com  created  Standup")
    assert '    summary: "Standup" → "Daily standup"' in lines
    assert '    location: "Room 1" → "Room 2"' in lines
    assert '    start: {"dateTime": "2026-03-02T10:00:00Z"} → {"dateTime": "2026-03-02T10:30:00Z"}' in lines
    assert any("team@group.calendar.google.com  created  Offsite" in line for line in lines)
    assert any(line.startswith("#4 ") and " deleted  Daily standup" in line for line in lines)
    assert "Traceback" not in out


def test_json_lines_equal_the_api_dicts(settings: Any, feed: Any, client: Any, api_headers: dict[str, str]) -> None:
    lines = run(settings, "--json").output.splitlines()
    assert [json.loads(line) for line in lines] == client.get("/api/changes", headers=api_headers).get_json()["changes"]
    after = run(settings, "--json", "--after", "1", "--limit", "2").output.splitlines()
    assert [json.loads(line)["seq"] for line in after] == [2, 3]
    team = run(settings, "--json", "--calendar", "team@group.calendar.google.com").output.splitlines()
    assert [json.loads(line)["event_id"] for line in team] == ["t1"]


def test_unknown_calendar_and_bad_options_are_errors(settings: Any, feed: Any) -> None:
    env = {"CALSYNC_DATABASE_URL": settings.database_url}
    result = CliRunner().invoke(changes, ["--calendar", "nope@example.com"], env=env)
    assert result.exit_code != 0 and "no calendar" in str(result.exception)
    assert CliRunner().invoke(changes, ["--after", "-1"], env=env).exit_code == 2
    assert CliRunner().invoke(changes, ["--after", str(2**64)], env=env).exit_code == 2  # an OverflowError
    assert CliRunner().invoke(changes, ["--limit", "0"], env=env).exit_code == 2


def _following(settings: Any, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`calsync changes --follow --json` with these arguments, and the lines it prints as they come."""
    proc = subprocess.Popen(
        [CALSYNC, "changes", "--follow", "--json", *args],
        env={**os.environ, "CALSYNC_DATABASE_URL": settings.database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump(stdout: IO[str]) -> None:
        for line in stdout:
            lines.put(line)

    assert proc.stdout is not None
    threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
    return proc, lines


def test_follow_prints_a_change_committed_while_it_runs(settings: Any, runtime: Runtime, feed: Any) -> None:
    home, _ = feed
    proc, lines = _following(settings, "--after", "4")
    try:
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        seq = add_change(runtime, home, "created", None, {"id": "late", "summary": "Added while following"})
        printed = json.loads(lines.get(timeout=10))
        assert printed["seq"] == seq == 5 and printed["event_id"] == "late"
        assert printed["after"]["summary"] == "Added while following"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err


def test_follow_outlives_a_killed_connection_and_prints_each_change_once(
    settings: Any, runtime: Runtime, feed: Any
) -> None:
    """Its pooled connection, killed by the server (or lost in a restart), ended the follow with
    "the database cannot be reached" while the database was up: a consumer gone on a one-off fault."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("a SQLite connection is a file, not a server's process")
    home, _ = feed
    proc, lines = _following(settings, "--after", "3")
    try:
        assert json.loads(lines.get(timeout=15))["seq"] == 4  # it is following
        others = (
            "FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        runtime.engine.dispose()  # the test's own connections: only the follower's are left

        def its(what: str) -> Any:
            with runtime.engine.connect() as admin:  # a new transaction each: the view is read once per one
                return admin.execute(text(f"SELECT {what} {others}")).scalar()

        wait_for(lambda: its("count(*)"), 20, what="its connection")
        assert its("count(pg_terminate_backend(pid))")
        seq = add_change(runtime, home, "created", None, {"id": "after-kill", "summary": "After the kill"})
        try:
            printed = json.loads(lines.get(timeout=15))
        except queue.Empty:
            proc.send_signal(signal.SIGINT)
            raise AssertionError(f"nothing printed; it said: {proc.communicate(timeout=10)[1]}") from None
        assert (printed["seq"], printed["event_id"]) == (seq, "after-kill")
        assert proc.poll() is None
        time.sleep(1.0)
        assert lines.empty()  # printed once
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize(
    "url", ["sqlite:////nonexistent-dir/calsync.db", "postgresql+psycopg://nobody@127.0.0.1:1/calsync"]
)
def test_bad_database_is_one_line_without_traceback(url: str) -> None:
    env = {**os.environ, "CALSYNC_DATABASE_URL": url}
    proc = subprocess.run([CALSYNC, "changes"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_database_without_schema_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch(mode=0o600)  # private, as calsync makes it: a readable one adds a warning line
    env = {**os.environ, "CALSYNC_DATABASE_URL": f"sqlite:///{empty}"}
    proc = subprocess.run([CALSYNC, "changes"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "calsync db upgrade" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def add_at(runtime: Runtime, calendar_id: int, kind: str, event_id: str, at: datetime) -> int:
    with transaction(runtime.sessions) as s:
        body = {"id": event_id, "summary": f"Event {event_id}"}
        [change] = append_changes(
            s, [Change(calendar_id=calendar_id, event_id=event_id, kind=kind, before=None, after=body)], at
        )
        return change.seq


def test_snapshot_rows_are_printed_only_with_snapshots(settings: Any, runtime: Runtime) -> None:
    home, _ = seed_calendars(runtime)
    for n in range(3):
        add_at(runtime, home, "snapshot", f"s{n}", T0)
    add_at(runtime, home, "created", "new", T0)

    def seqs(*args: str) -> list[int]:
        return [json.loads(line)["seq"] for line in run(settings, "--json", *args).output.splitlines()]

    assert seqs() == [4]
    assert seqs("--snapshots") == [1, 2, 3, 4]
    assert seqs("--types", "event.snapshot") == [1, 2, 3]  # naming the type asks for it too
    assert seqs("--types", "event.created,event.deleted") == [4]
    assert seqs("--types", "event.deleted", "--snapshots") == [1, 2, 3]
    human = run(settings, "--snapshots").output
    assert "snapshot  Event s0" in human and "created  Event new" in human
    assert "snapshot" not in run(settings).output
    bad = CliRunner().invoke(changes, ["--types", "event.moved"], env={"CALSYNC_DATABASE_URL": settings.database_url})
    assert bad.exit_code == 2 and "unknown type 'event.moved'" in bad.output


def test_an_expired_cursor_is_a_clear_error_also_when_following(settings: Any, runtime: Runtime) -> None:
    home, _ = seed_calendars(runtime)
    for n in range(3):
        add_at(runtime, home, "created", f"old{n}", T0)
    add_at(runtime, home, "created", "kept", T0 + timedelta(days=40))
    with transaction(runtime.sessions) as s:
        assert trim_changes(s, T0 + timedelta(days=10)) == 3
    env = {"CALSYNC_DATABASE_URL": settings.database_url}
    for args in (["--after", "1"], ["--follow", "--json"]):
        result = CliRunner().invoke(changes, args, env=env)
        assert result.exit_code == 1, result.output
        assert "cursor expired" in result.output and "up to seq 3 were deleted by retention" in result.output
        assert "`--after 3` prints what is kept" in result.output and "Traceback" not in result.output
    assert "created  Event kept" in run(settings, "--after", "3").output


def test_follow_of_a_calendar_reads_rows_of_an_account_that_adds_it_later(settings: Any, runtime: Runtime) -> None:
    """The calendar was looked up once: when a second account came to see it, that account's rows were
    filtered out and the cursor moved past them for good."""
    _, team = seed_calendars(runtime)
    proc, lines = _following(settings, "--calendar", "team@group.calendar.google.com")
    try:
        add_change(runtime, team, "created", None, {"id": "alices", "summary": "Alice's view"})
        assert json.loads(lines.get(timeout=10))["event_id"] == "alices"
        with transaction(runtime.sessions) as s:
            bob = Account(email="bob@example.com", credentials=runtime.cipher.encrypt_str("{}"), scopes=[])
            s.add(bob)
            s.flush()
            bobs_view = Calendar(account_id=bob.id, google_id="team@group.calendar.google.com")
            s.add(bobs_view)
            s.flush()
            bobs_team = bobs_view.id
        add_change(runtime, bobs_team, "created", None, {"id": "bobs", "summary": "Bob's view"})
        printed = json.loads(lines.get(timeout=10))
        assert (printed["event_id"], printed["account"]) == ("bobs", "bob@example.com")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_follow_skips_snapshot_rows_unless_asked(settings: Any, runtime: Runtime) -> None:
    home, _ = seed_calendars(runtime)
    env = {**os.environ, "CALSYNC_DATABASE_URL": settings.database_url}
    procs = [
        subprocess.Popen(
            [CALSYNC, "changes", "--follow", "--json", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in ([], ["--snapshots"])
    ]
    printed: list[queue.Queue[str]] = [queue.Queue() for _ in procs]

    def pump(stdout: IO[str], into: queue.Queue[str]) -> None:
        for line in stdout:
            into.put(json.loads(line)["type"])

    for proc, into in zip(procs, printed, strict=True):
        threading.Thread(target=pump, args=(proc.stdout, into), daemon=True).start()
    outputs: list[list[str]] = [[], []]
    try:
        for n in range(5):
            add_at(runtime, home, "snapshot", f"s{n}", T0)
        add_at(runtime, home, "created", "after-the-snapshot", T0)
        for output, into in zip(outputs, printed, strict=True):  # each prints up to the created row
            while not output or output[-1] != "event.created":
                output.append(into.get(timeout=20))
        time.sleep(0.5)  # a few more polls: nothing else may follow
    finally:
        for proc, sig in zip(procs, (signal.SIGINT, signal.SIGTERM), strict=True):  # Ctrl-C and a kill
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0 and "Traceback" not in err, err
    for output, into in zip(outputs, printed, strict=True):
        while not into.empty():
            output.append(into.get())
    assert outputs == [["event.created"], ["event.snapshot"] * 5 + ["event.created"]]


def test_ctrl_c_during_a_one_shot_read_is_not_a_success(settings: Any, runtime: Runtime) -> None:
    """Interrupted while its output waited on a full pipe, `calsync changes` exited 0 with part of the
    page printed: a script took it for the whole feed. (With --follow, Ctrl-C is how it stops.)"""
    home, _ = seed_calendars(runtime)
    with transaction(runtime.sessions) as s:
        rows = [
            Change(
                calendar_id=home,
                event_id=f"e{i}",
                kind="created",
                fields=[],
                before=None,
                after={"id": f"e{i}", "summary": "x" * 400},
            )
            for i in range(1000)
        ]
        append_changes(s, rows, T0)
    proc = subprocess.Popen(
        [CALSYNC, "changes", "--json", "--limit", "1000"],
        env={**os.environ, "CALSYNC_DATABASE_URL": settings.database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # it is writing; the rest of the page fills the pipe and blocks it
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    printed = 1 + len(out.splitlines())
    assert first and printed < 1000  # interrupted part-way
    assert proc.returncode != 0 and b"Aborted" in err
