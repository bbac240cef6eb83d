"""The dashboard's calendar page on the server side: operators only, 404 for a calendar it cannot show,
and a week drawn from the mirror even before any event exists."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from calsync import create_app
from calsync.clock import FrozenClock
from calsync.config import Secret, Settings
from calsync.runtime import Runtime
from tests.web.dashboard_support import PASSWORD, add_account, add_calendar, sign_in


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(
        dataclasses.replace(settings, admin_password=Secret(PASSWORD)),
        clock=FrozenClock(datetime(2026, 3, 6, 12, tzinfo=UTC)),
    )
    yield rt
    rt.close()


def test_calendar_page_needs_the_operator_and_a_live_calendar(runtime: Runtime) -> None:
    account = add_account(runtime, "ann@example.com")
    cal = add_calendar(runtime, account, "ann@example.com", "Ann", time_zone="Europe/Berlin")
    gone = add_calendar(runtime, account, "old@example.com", "Old", removed_at=datetime(2026, 1, 1, tzinfo=UTC))
    client: Any = create_app(runtime=runtime).test_client()
    assert client.get(f"/dashboard/calendars/{cal}").status_code in (302, 401)
    sign_in(client)
    page = client.get(f"/dashboard/calendars/{cal}")
    assert page.status_code == 200
    assert page.text.count('class="timeline-day"') == 7 and 'data-day="2026-03-06"' in page.text
    assert "first full sync of this calendar has not finished" in page.text
    assert f'href="/dashboard/calendars/{cal}"' in client.get("/dashboard/").text
    assert client.get(f"/dashboard/calendars/{gone}").status_code == 404
    assert client.get("/dashboard/calendars/999999").status_code == 404
