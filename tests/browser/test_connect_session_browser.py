"""An app that embeds calsync, in a real browser: the app makes a connect session for its user, the
user consents on Google's (the emulator's) page and lands back in the app with the right query."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask, redirect, request
from werkzeug.serving import make_server

from calsync.config import Settings
from tests.conftest import API_TOKEN, free_port

pytestmark = [pytest.mark.browser]


@pytest.fixture
def app_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, app_port: int) -> Settings:
    return dataclasses.replace(settings, return_urls=(f"http://127.0.0.1:{app_port}/calendar/",))


@pytest.fixture
def the_app(live_server: str, app_port: int) -> Iterator[str]:
    """A small app on loopback: `/connect-calendar` asks calsync for a link for its signed-in user and
    sends them there; `/calendar/connected` is where they come back."""
    app = Flask("embedding-app")

    @app.get("/connect-calendar")
    def connect_calendar() -> Any:
        resp = requests.post(
            f"{live_server}/api/connect-sessions",
            timeout=10,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            json={
                "ref": "user-42",
                "login_hint": "ann@example.com",
                "return_to": f"http://127.0.0.1:{app_port}/calendar/connected",
            },
        )
        resp.raise_for_status()
        return redirect(resp.json()["url"], code=303)

    @app.get("/calendar/connected")
    def connected() -> Any:
        args = request.args
        if args.get("status") == "connected":
            return f"<h1>Calendar connected</h1><p id=who>{args['account']} for {args['ref']}</p>"
        return f"<h1>Not connected</h1><p id=why>{args.get('status')}: {args.get('error')}</p>"

    server = make_server("127.0.0.1", app_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{app_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.mark.slow
def test_an_app_connects_its_users_calendar_through_a_connect_session(
    page: Any, the_app: str, live_server: str, emu: Any, worker: Any
) -> None:
    from playwright.sync_api import expect

    emu.create_user("bob@example.com", "Bob Example")
    emu.create_user("ann@example.com", "Ann Example")
    emu.create_calendar("ann@example.com", "Work")

    page.goto(f"{the_app}/connect-calendar")
    assert page.url.startswith(emu.url), page.url  # Google's (the emulator's) consent page
    expect(page.get_by_role("heading", name="Choose an account")).to_be_visible()
    expect(page.get_by_label("Ann Example <ann@example.com>")).to_be_checked()  # the login hint chose it
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{the_app}/calendar/connected?*")
    assert dict(parse_qs(urlsplit(page.url).query).items()) == {
        "ref": ["user-42"],
        "status": ["connected"],
        "account": ["ann@example.com"],
    }
    expect(page.locator("#who")).to_have_text("ann@example.com for user-42")

    api = {"Authorization": f"Bearer {API_TOKEN}"}
    deadline = time.monotonic() + 20
    while True:  # the worker reads the calendar list and syncs each calendar
        [account] = requests.get(
            f"{live_server}/api/accounts", params={"ref": "user-42"}, headers=api, timeout=10
        ).json()
        if len(account["calendars"]) == 2 and all(c["sync_state"] == "synced" for c in account["calendars"]):
            break
        assert time.monotonic() < deadline, account
        time.sleep(0.2)
    assert {c["summary"] for c in account["calendars"]} == {"ann@example.com", "Work"}

    page.goto(f"{the_app}/connect-calendar")  # a second link: this time the user declines
    page.get_by_role("button", name="Deny").click()
    page.wait_for_url(f"{the_app}/calendar/connected?*")
    expect(page.locator("#why")).to_have_text("denied: access_denied")
