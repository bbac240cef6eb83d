"""`calsync events create|patch|delete`: the API's writes from a terminal, against the emulator (both engines)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from calsync.cli.changes import changes
from calsync.cli.events import events
from calsync.config import Settings
from calsync.runtime import Runtime
from tests.sync_support import WRITER, writable_calendar
from tests.web.process_support import web_env

ANN = "ann@example.com"
MEETING = {
    "summary": "Call",
    "start": {"dateTime": "2026-03-02T10:00:00Z"},
    "end": {"dateTime": "2026-03-02T10:30:00Z"},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, google_scopes=WRITER)


@pytest.fixture
def env(settings: Settings, runtime: Runtime, emu: Any) -> dict[str, str]:
    writable_calendar(runtime, emu, ANN)
    return web_env(settings, CALSYNC_GOOGLE_SCOPES=" ".join(WRITER))


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(events, list(args), env=env, input=stdin)


def test_create_patch_delete_print_the_apis_json_and_the_feed_shows_them_as_api_rows(
    env: dict[str, str], emu: Any
) -> None:
    made = run(env, "create", ANN, "--idempotency-key", "cli-1", stdin=json.dumps(MEETING))
    assert made.exit_code == 0, made.output
    event = json.loads(made.output)["event"]
    assert emu.events(ANN) == [event]
    again = run(env, "create", ANN, "--idempotency-key", "cli-1", "--body", json.dumps(MEETING))
    assert json.loads(again.output) == json.loads(made.output) and len(emu.events(ANN)) == 1

    stale = run(env, "patch", ANN, event["id"], "--if-match", '"stale"', "--body", '{"summary": "x"}')
    assert stale.exit_code == 1 and "changed since" in stale.output and "current:" in stale.output
    moved = run(env, "patch", ANN, event["id"], "--if-match", event["etag"], "--body", '{"summary": "Moved"}')
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.output)["event"]["summary"] == "Moved" == emu.events(ANN)[0]["summary"]
    gone = run(env, "delete", ANN, event["id"], "--send-updates", "none")
    assert gone.exit_code == 0 and emu.events(ANN) == []

    shown = CliRunner().invoke(changes, ["--types", "event.created,event.updated,event.deleted"], env=env)
    lines = [line for line in shown.output.splitlines() if line.startswith("#")]
    assert [line.rsplit("  ", 1)[1] for line in lines] == ["via api key cli-1", "via api", "via api"]
    only_google = CliRunner().invoke(changes, ["--origin", "google", "--types", "event.created"], env=env)
    assert "no changes" in only_google.output


def test_bad_input_is_one_clear_line_and_sends_nothing(env: dict[str, str], emu: Any) -> None:
    bad_json = run(env, "create", ANN, "--body", "{nope")
    assert bad_json.exit_code == 2 and "not JSON" in bad_json.output
    bad_key = run(env, "create", ANN, "--idempotency-key", "ключ", "--body", json.dumps(MEETING))
    assert bad_key.exit_code == 2 and "Idempotency-Key" in bad_key.output
    assert emu.count("calendar.events.insert") == 0
