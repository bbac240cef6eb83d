"""`calsync demo`, run exactly as the README says: the real console script in its own process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calsync.demo.runner import render_change

CALSYNC = str(Path(sys.executable).with_name("calsync"))
CHANGE_LINE = re.compile(r"^[+~−] #\d+ ", re.MULTILINE)
FIELD_LINE = re.compile(r"^\s+(summary|start|end|location)\s+.+ → .+$", re.MULTILINE)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env.update(COLUMNS="160", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
def test_demo_connects_prints_field_level_diffs_and_stops_by_itself() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [CALSYNC, "demo", "--duration", "12", "--interval", "1", "--seed", "7"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    out = result.stdout
    dashboard = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard/", out)
    assert dashboard, out
    assert re.search(r"Password\s+\S{12,}", out), out
    assert len(CHANGE_LINE.findall(out)) >= 4, out
    assert FIELD_LINE.search(out), out
    assert re.search(r"POST /api/calendars/\S+/events → 201, seq \d+", out), out
    [write] = [line for line in out.splitlines() if "Booked by an app through calsync" in line]
    assert write.startswith("+ #") and write.endswith("origin: api"), write  # once: no echo row
    assert "demo stopped." in out
    assert time.monotonic() - started < 60
    port = int(dashboard.group(1))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # calsync serve is gone with the demo


@pytest.mark.slow
def test_demo_stops_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [CALSYNC, "demo", "--interval", "0.5", "--seed", "7"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if CHANGE_LINE.match(line):
                break
        assert any(CHANGE_LINE.match(line) for line in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err + rest
    assert "demo stopped." in rest


def test_render_change_shows_each_field_before_and_after() -> None:
    lines = render_change(
        {
            "seq": 12,
            "change": "updated",
            "event_id": "ev1",
            "detected_at": "2026-01-05T09:00:01.000Z",
            "fields": ["start", "summary"],
            "before": {"summary": "Standup", "start": {"dateTime": "2026-01-05T10:00:00Z"}},
            "after": {"summary": "Daily standup", "start": {"dateTime": "2026-01-05T10:30:00Z"}},
        },
        "Team",
    )
    assert "#12" in lines[0] and "Team" in lines[0] and "Daily standup" in lines[0]
    assert "summary" in lines[1] and "Standup" in lines[1] and "Daily standup" in lines[1]
    assert "2026-01-05 10:00 UTC" in lines[2] and "2026-01-05 10:30 UTC" in lines[2] and "→" in lines[2]


def test_render_change_says_a_lifecycle_step_in_words() -> None:
    [line] = render_change(
        {
            "seq": 3,
            "type": "calendar.added",
            "change": None,
            "event_id": None,
            "summary": "Team",
            "detected_at": "2026-01-05T09:00:01.000Z",
        },
        "Team",
    )
    assert "#3" in line and "calendar.added" in line and 'Calendar "Team" added' in line


@pytest.mark.parametrize(("change", "verb"), [("snapshot", "starts"), ("created", "starts"), ("deleted", "was")])
def test_render_change_says_was_only_of_a_deleted_event(change: str, verb: str) -> None:
    """The first sync's snapshot rows read like deletions ("was …")."""
    event = {"summary": "Gym", "start": {"dateTime": "2026-12-16T07:30:00Z"}}
    lines = render_change(
        {
            "seq": 6,
            "change": change,
            "event_id": "ev1",
            "detected_at": "2026-01-05T09:00:01.000Z",
            "fields": [],
            "before": event if change == "deleted" else None,
            "after": None if change == "deleted" else event,
        },
        "Team",
    )
    assert f"{verb} 2026-12-16 07:30 UTC" in lines[1]
