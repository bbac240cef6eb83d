"""A calendar's page in a real browser: the coming week, day by day, from the mirror."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from calsync.runtime import Runtime
from tests.browser.test_dashboard_browser import reload_until, sign_in
from tests.push_support import calendar_id_of, calendar_row, wait_for
from tests.sync_support import connect_account

pytestmark = [pytest.mark.browser]
NY = ZoneInfo("America/New_York")


def _at(day: Any, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY)


def _when(moment: datetime) -> dict[str, str]:
    return {"dateTime": moment.isoformat(), "timeZone": "America/New_York"}


def test_the_calendar_page_shows_the_coming_week_day_by_day(
    page: Any, live_server: str, emu: Any, worker: Any, runtime: Runtime
) -> None:
    from playwright.sync_api import expect

    today = runtime.clock.now().astimezone(NY).date()
    day = [today + timedelta(days=i) for i in range(8)]
    emu.create_user("ann@example.com")
    team = emu.create_calendar("ann@example.com", "Team", time_zone="America/New_York")
    standup = emu.insert_event(
        team,
        {
            "summary": "Standup",
            "start": _when(_at(day[0], 9) - timedelta(days=2)),
            "end": _when(_at(day[0], 9, 15) - timedelta(days=2)),
            "recurrence": ["RRULE:FREQ=DAILY;COUNT=20"],
        },
    )
    emu.cancel_instance(team, standup["id"], _at(day[2], 9).isoformat())
    emu.patch_instance(
        team,
        standup["id"],
        _at(day[3], 9).isoformat(),
        {"summary": "Standup (moved)", "start": _when(_at(day[3], 15)), "end": _when(_at(day[3], 15, 15))},
    )
    emu.insert_event(
        team, {"summary": "Offsite", "start": {"date": day[4].isoformat()}, "end": {"date": day[5].isoformat()}}
    )
    emu.insert_event(
        team,
        {
            "summary": "Focus",
            "start": _when(_at(day[1], 13)),
            "end": _when(_at(day[1], 15)),
            "transparency": "transparent",
        },
    )
    emu.insert_event(team, {"summary": "Next week", "start": _when(_at(day[7], 10)), "end": _when(_at(day[7], 11))})
    connect_account(runtime, emu, "ann@example.com")
    wait_for(lambda: _synced(runtime, team), timeout=30, what="the Team calendar's first sync")

    sign_in(page, live_server)
    reload_until(page, "text=coming week", 2)
    page.get_by_role("row", name="Team").get_by_role("link", name="coming week").click()
    expect(page.get_by_role("heading", name="The coming week")).to_be_visible()

    days = page.locator(".timeline-day")
    expect(days).to_have_count(7)
    assert days.first.get_attribute("data-day") == day[0].isoformat()

    def items(i: int) -> list[str]:
        return [" ".join(t.split()) for t in days.nth(i).locator(".timeline-item").all_inner_texts()]

    assert items(0) == ["09:00–09:15 Standup"]
    assert items(1) == ["09:00–09:15 Standup", "13:00–15:00 Focus free"]
    assert items(2) == []  # the cancelled occurrence
    expect(days.nth(2).locator(".timeline-empty")).to_have_text("Nothing")
    assert items(3) == ["15:00–15:15 Standup (moved)"]
    assert items(4) == ["all day Offsite", "09:00–09:15 Standup"]
    assert items(6) == ["09:00–09:15 Standup"]  # and not next week's meeting
    assert days.nth(0).locator(".timeline-bar").count() == 1
    assert days.nth(1).locator(".timeline-bar.timeline-free").count() == 1
    left = days.nth(0).locator(".timeline-bar").get_attribute("style") or ""
    assert "left: 37.5%" in left  # 09:00 is 37.5 % of the day


def _synced(runtime: Runtime, google_id: str) -> bool:
    try:
        return bool(calendar_row(runtime, calendar_id_of(runtime, google_id)).baseline_done)
    except AssertionError:
        return False
