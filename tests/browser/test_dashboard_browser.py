"""The dashboard in a real browser: sign in, connect through the consent page, watch a change arrive."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from calsync.runtime import Runtime
from tests.browser.conftest import ARTIFACTS, PASSWORD

pytestmark = [pytest.mark.browser]


def sign_in(page: Any, live: str, password: str = PASSWORD) -> None:
    page.goto(f"{live}/dashboard/")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def reload_until(page: Any, selector: str, count: int, timeout: float = 20.0) -> None:
    """The overview is server-rendered: reload until the worker's results show."""
    deadline = time.monotonic() + timeout
    while page.locator(selector).count() != count:
        assert time.monotonic() < deadline, f"never {count} × {selector}: {page.locator('main').inner_text()}"
        time.sleep(0.3)
        page.reload()


@pytest.mark.slow
def test_sign_in_connect_see_calendars_and_a_live_change(
    page: Any, live_server: str, emu: Any, worker: Any, runtime: Runtime
) -> None:
    from playwright.sync_api import expect

    emu.create_user("ann@example.com", "Ann Example")
    work = emu.create_calendar("ann@example.com", "Work")
    emu.create_calendar("ann@example.com", "Family")
    standup = emu.insert_event(
        work,
        {
            "summary": "Standup",
            "start": {"dateTime": "2026-03-02T09:30:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2026-03-02T09:45:00Z", "timeZone": "UTC"},
            "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=10"],
        },
    )
    review = emu.insert_event(
        work,
        {
            "summary": "Design review",
            "start": {"dateTime": "2026-03-03T14:00:00Z"},
            "end": {"dateTime": "2026-03-03T15:00:00Z"},
        },
    )

    sign_in(page, live_server)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_text("No account connected yet")).to_be_visible()

    page.goto(f"{live_server}/connect")
    assert page.url.startswith(emu.url), page.url  # Google's (the emulator's) consent page
    page.get_by_label(re.compile("ann@example.com")).check()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{live_server}/connected*")
    expect(page.get_by_role("status")).to_contain_text("ann@example.com")

    page.goto(f"{live_server}/dashboard/")
    reload_until(page, ".badge-synced", 3)
    reload_until(page, "td time:text('expires in 6 d 23 h')", 3)
    account = page.locator("#account-1")
    expect(account.get_by_role("heading", name="ann@example.com")).to_be_visible()
    for name in ("Work", "Family", "ann@example.com"):
        expect(account.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(account.locator(".badge-synced")).to_have_count(3)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    page.get_by_role("link", name="Changes").click()
    expect(page.locator("#change-rows")).to_contain_text('Calendar "Work" synced in full for the first time')
    emu.patch_event(
        work,
        review["id"],
        {
            "summary": "Design review (v2)",
            "location": "Room 4.12",
            "start": {"dateTime": "2026-03-03T14:30:00Z"},
            "end": {"dateTime": "2026-03-03T15:30:00Z"},
        },
    )
    emu.patch_instance(work, standup["id"], "2026-03-09T09:30:00Z", {"summary": "Standup (late start)"})
    rows = page.locator("#change-rows")
    expect(rows).to_contain_text("Design review (v2)", timeout=20_000)  # no reload: the page follows live
    expect(rows.locator("ins", has_text="Room 4.12")).to_be_visible()
    expect(rows.locator("del", has_text="2026-03-03 14:00 UTC")).to_be_visible()
    expect(rows.locator("ins", has_text="2026-03-03 14:30 UTC")).to_be_visible()
    expect(rows).to_contain_text("Standup (late start)", timeout=20_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-changes.png"), full_page=True)

    page.get_by_role("link", name="Notifications").click()
    expect(page.locator("#notification-rows")).to_contain_text("exists")
    page.locator("#notification-rows details").first.click()
    expect(page.locator("#notification-rows")).to_contain_text("X-Goog-Channel-Id", ignore_case=True)


def test_wrong_password_and_missing_csrf_token_are_refused(page: Any, live_server: str) -> None:
    from playwright.sync_api import expect

    sign_in(page, live_server, "not the password")
    expect(page.get_by_role("alert")).to_contain_text("not right")
    assert "/dashboard/login" in page.url
    page.goto(f"{live_server}/dashboard/")
    expect(page.get_by_label("Password")).to_be_visible()  # still signed out

    sign_in(page, live_server)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    with page.expect_response(re.compile(r"/dashboard/logout$")) as answer:
        page.get_by_role("button", name="Sign out").click()
    assert answer.value.status == 403
    expect(page.get_by_role("heading", name=re.compile("403"))).to_be_visible()
    page.goto(f"{live_server}/dashboard/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()  # the forged form changed nothing
