"""`calsync freebusy`: the busy blocks of the mirror as a table, the same as /api/freebusy."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from calsync.cli.freebusy import freebusy
from calsync.runtime import Runtime
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.sync_support import calendar_row_id, connect_account

ANN = "ann@example.com"


def _when(text: str) -> dict[str, str]:
    return {"dateTime": text, "timeZone": "Europe/Berlin"}


def test_the_table_lists_each_busy_block_and_each_calendar_error(
    settings: Any, runtime: Runtime, emu: Any, client: Any, api_headers: dict[str, str]
) -> None:
    account_id = connect_account(runtime, emu, ANN)
    emu.insert_event(
        ANN,
        {
            "summary": "standup",
            "start": _when("2026-03-02T09:00:00+01:00"),
            "end": _when("2026-03-02T09:30:00+01:00"),
            "recurrence": ["RRULE:FREQ=DAILY;COUNT=3"],
        },
    )
    emu.insert_event(ANN, {"summary": "offsite", "start": {"date": "2026-03-05"}, "end": {"date": "2026-03-07"}})
    refresh_calendar_list(runtime, account_id)
    sync_calendar(runtime, calendar_row_id(runtime, ANN))
    result = CliRunner().invoke(
        freebusy,
        [ANN, "nobody@example.com", "--from", "2026-03-02", "--to", "2026-03-09", "--tz", "Europe/Berlin"],
        env={"CALSYNC_DATABASE_URL": settings.database_url},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines() if line.startswith("│")
    ]
    assert rows == [
        [ANN, "2026-03-02T09:00:00+01:00", "2026-03-02T09:30:00+01:00", "30m"],
        [ANN, "2026-03-03T09:00:00+01:00", "2026-03-03T09:30:00+01:00", "30m"],
        [ANN, "2026-03-04T09:00:00+01:00", "2026-03-04T09:30:00+01:00", "30m"],
        # The days of an all-day event are the calendar's (UTC here), shown in Berlin time.
        [ANN, "2026-03-05T01:00:00+01:00", "2026-03-07T01:00:00+01:00", "2d"],
        ["nobody@example.com", "notFound", "", ""],
    ]
    api = client.post(
        "/api/freebusy",
        headers=api_headers,
        json={
            "timeMin": "2026-03-02T00:00:00+01:00",
            "timeMax": "2026-03-09T00:00:00+01:00",
            "timeZone": "Europe/Berlin",
            "items": [{"id": ANN}],
        },
    ).get_json()
    assert [[ANN, b["start"], b["end"]] for b in api["calendars"][ANN]["busy"]] == [r[:3] for r in rows[:4]]
    assert f"as of change #{api['as_of_seq']}" in result.output and api["as_of_seq"] > 0


def test_bad_options_are_usage_errors(settings: Any) -> None:
    env = {"CALSYNC_DATABASE_URL": settings.database_url}
    for args in (
        [],
        [ANN, "--from", "soon"],
        [ANN, "--from", "2026-03-09", "--to", "2026-03-01"],
        [ANN, "--tz", "Mars/Olympus"],
        [ANN, "--from", "2026-01-01", "--to", "2027-06-01"],
    ):
        result = CliRunner().invoke(freebusy, args, env=env)
        assert result.exit_code == 2, (args, result.output)


def test_a_calendar_id_is_printed_as_text_not_markup(settings: Any, runtime: Runtime) -> None:
    """rich read the calendar id as markup: `[/x]` crashed the command."""
    result = CliRunner().invoke(
        freebusy,
        ["[/x]", "--from", "2026-03-02", "--to", "2026-03-09"],
        env={"CALSYNC_DATABASE_URL": settings.database_url},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.output and "notFound" in result.output
