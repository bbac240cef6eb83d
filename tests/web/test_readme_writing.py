"""The README's "Writing events" example, run as written against a live calsync and the emulator."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.conftest import API_TOKEN
from tests.sync_support import WRITER, calendar_row_id, changes, connect_account

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
ANN = "ann@example.com"


def example() -> str:
    section = README.split("## Writing events", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    return str(code)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, google_scopes=WRITER)


def test_the_readme_writing_example_books_once_moves_with_if_match_cancels_and_hears_no_echo(
    live_server: str, emu: Any, runtime: Runtime
) -> None:
    app: dict[str, Any] = {}
    exec(example(), app)  # the README's code, unchanged; then pointed at this calsync
    app.update(CALSYNC=live_server, API={"Authorization": f"Bearer {API_TOKEN}"})
    refresh_calendar_list(runtime, connect_account(runtime, emu, ANN, scopes=WRITER))
    cal = calendar_row_id(runtime, ANN)
    sync_calendar(runtime, cal)

    emu.fail_after_write(1, status=503, method="calendar.events.insert")  # made in Google, answer lost
    event = app["book"](ANN, "1001", "Haircut", "2026-03-02T10:00:00Z", "2026-03-02T10:30:00Z")
    assert app["book"](ANN, "1001", "Haircut", "2026-03-02T10:00:00Z", "2026-03-02T10:30:00Z") == event
    assert emu.events(ANN) == [event]  # three calls, one event

    person = emu.patch_event(ANN, event["id"], {"description": "Bring the voucher"})  # Ann, in Google
    moved, current = app["move"](ANN, event, "2026-03-02T11:00:00Z", "2026-03-02T11:30:00Z")
    assert (moved, current) == (False, person) and emu.events(ANN) == [person]
    moved, current = app["move"](ANN, current, "2026-03-02T11:00:00Z", "2026-03-02T11:30:00Z")
    assert moved and current["start"]["dateTime"] == "2026-03-02T11:00:00Z" == emu.events(ANN)[0]["start"]["dateTime"]

    emu.insert_event(ANN, {"summary": "Ann's lunch", "start": current["start"], "end": current["end"]})
    seq = app["cancel"](ANN, event["id"])
    assert emu.events(ANN)[0]["summary"] == "Ann's lunch" and changes(runtime, cal)[-1].seq == seq
    sync_calendar(runtime, cal)  # the notifications' sync: Ann's lunch comes in, the app's writes do not echo

    rows, cursor = app["changes_by_others"](0)
    assert [(r["change"], r["origin"], (r["after"] or r["before"]).get("summary")) for r in rows] == [
        ("updated", "google", "Haircut"),  # Ann's description, found by the 412
        ("created", "google", "Ann's lunch"),
    ]
    assert cursor == changes(runtime, cal)[-1].seq
    assert [c.origin for c in changes(runtime, cal)] == ["api", "google", "api", "api", "google"]
