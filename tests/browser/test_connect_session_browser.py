"""An app that embeds calsync, in a real browser: the app makes a connect session for its signed-in
user, the user consents on Google's (the emulator's) page, lands back in the app, and the app's
server confirms the connection for the user signed in to it. A link that one user sends to another
connects nothing."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask, redirect, request, session
from sqlalchemy import update
from werkzeug.serving import make_server

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account
from tests.conftest import API_TOKEN, free_port

pytestmark = [pytest.mark.browser]
API = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def app_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, app_port: int) -> Settings:
    return dataclasses.replace(settings, return_urls=(f"http://127.0.0.1:{app_port}/calendar/",))


@pytest.fixture
def the_app(live_server: str, app_port: int) -> Iterator[str]:
    """A small app on loopback. `/sign-in/<user>` signs a user in; `/connect-calendar` asks calsync for
    a link for the signed-in user and sends them there (`/my-link` shows it, as an app that lets users
    copy it would); `/calendar/connected` is where users come back, and confirms for the signed-in user."""
    app = Flask("embedding-app")
    app.secret_key = "embedding-app-secret"
    app.config["SESSION_COOKIE_NAME"] = "app_session"  # calsync's cookie is on the same host

    def link() -> str:
        resp = requests.post(
            f"{live_server}/api/connect-sessions",
            timeout=10,
            headers=API,
            json={
                "ref": session["user"],
                **({"login_hint": "ann@example.com"} if session["user"] == "user-42" else {}),
                "return_to": f"http://127.0.0.1:{app_port}/calendar/connected",
            },
        )
        resp.raise_for_status()
        return str(resp.json()["url"])

    @app.get("/sign-in/<user>")
    def sign_in(user: str) -> Any:
        session["user"] = user
        return f"<p id=user>{user}</p>"

    @app.get("/connect-calendar")
    def connect_calendar() -> Any:
        return redirect(link(), code=303)

    @app.get("/my-link")
    def my_link() -> Any:
        return f"<a id=link href='{link()}'>your link</a>"

    @app.get("/calendar/connected")
    def connected() -> Any:
        args = request.args
        if args.get("status") != "connected":
            return f"<h1>Not connected</h1><p id=why>{args.get('status')}: {args.get('error')}</p>"
        resp = requests.post(
            f"{live_server}/api/connect-sessions/confirm",
            timeout=10,
            headers=API,
            json={"connection": args["connection"], "ref": session["user"]},
        )
        if resp.status_code == 409:
            return "<h1>Not connected</h1><p id=why>this link was made for someone else</p>"
        resp.raise_for_status()
        return f"<h1>Calendar connected</h1><p id=who>{resp.json()['account']} for {resp.json()['ref']}</p>"

    server = make_server("127.0.0.1", app_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{app_port}"
    server.shutdown()
    thread.join(timeout=5)


def accounts(live_server: str, **params: str) -> list[dict[str, Any]]:
    return list(requests.get(f"{live_server}/api/accounts", params=params, headers=API, timeout=10).json())


@pytest.mark.slow
def test_an_app_connects_its_users_calendar_through_a_connect_session(
    page: Any, the_app: str, live_server: str, emu: Any, worker: Any
) -> None:
    from playwright.sync_api import expect

    emu.create_user("bob@example.com", "Bob Example")
    emu.create_user("ann@example.com", "Ann Example")
    emu.create_calendar("ann@example.com", "Work")

    page.goto(f"{the_app}/sign-in/user-42")
    page.goto(f"{the_app}/connect-calendar")
    assert page.url.startswith(emu.url), page.url  # Google's (the emulator's) consent page
    expect(page.get_by_role("heading", name="Choose an account")).to_be_visible()
    expect(page.get_by_label("Ann Example <ann@example.com>")).to_be_checked()  # the login hint chose it
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{the_app}/calendar/connected?*")
    query = dict(parse_qs(urlsplit(page.url).query).items())
    assert len(query.pop("connection")[0]) >= 40
    assert query == {"ref": ["user-42"], "status": ["connected"], "account": ["ann@example.com"]}
    expect(page.locator("#who")).to_have_text("ann@example.com for user-42")  # confirmed by the app

    deadline = time.monotonic() + 20
    while True:  # the worker reads the calendar list and syncs each calendar
        [account] = accounts(live_server, ref="user-42")
        if len(account["calendars"]) == 2 and all(c["sync_state"] == "synced" for c in account["calendars"]):
            break
        assert time.monotonic() < deadline, account
        time.sleep(0.2)
    assert {c["summary"] for c in account["calendars"]} == {"ann@example.com", "Work"}

    page.goto(f"{the_app}/connect-calendar")  # a second link: this time the user declines
    page.get_by_role("button", name="Deny").click()
    page.wait_for_url(f"{the_app}/calendar/connected?*")
    expect(page.locator("#why")).to_have_text("denied: access_denied")


@pytest.mark.slow
def test_a_link_sent_to_another_user_connects_nothing_and_their_account_keeps_its_ref(
    page: Any, chromium: Any, the_app: str, live_server: str, emu: Any, runtime: Runtime, worker: Any
) -> None:
    from playwright.sync_api import expect

    emu.create_user("bob@example.com", "Bob Example")
    # bob's account is already victim-bob's (set in the table, so that this holds on any version of calsync)
    page.goto(f"{live_server}/connect")
    page.get_by_label("Bob Example <bob@example.com>").check()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{live_server}/connected")
    with transaction(runtime.sessions) as session:
        session.execute(update(Account).values(ref="victim-bob"))

    mallory = chromium.new_context()  # mallory, another user of the app, in her own browser
    try:
        tab = mallory.new_page()
        tab.goto(f"{the_app}/sign-in/attacker-mallory")
        tab.goto(f"{the_app}/my-link")
        link = tab.locator("#link").get_attribute("href")
    finally:
        mallory.close()
    assert link and link.startswith(f"{live_server}/connect/")

    page.goto(f"{the_app}/sign-in/victim-bob")  # bob uses the app, signed in as himself
    page.goto(link)  # he opens the link she sent him, and consents
    page.get_by_label("Bob Example <bob@example.com>").check()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{the_app}/calendar/connected?*")
    assert parse_qs(urlsplit(page.url).query)["ref"] == ["attacker-mallory"]
    assert [(a["email"], a["ref"]) for a in accounts(live_server)] == [("bob@example.com", "victim-bob")]
    expect(page.locator("#why")).to_have_text("this link was made for someone else")  # the app's confirmation

    assert [(a["email"], a["ref"]) for a in accounts(live_server)] == [("bob@example.com", "victim-bob")]
    assert accounts(live_server, ref="attacker-mallory") == []
    rows = requests.get(f"{live_server}/api/changes", params={"limit": 1000}, headers=API, timeout=10).json()
    assert "attacker-mallory" not in {row["ref"] for row in rows["changes"]}
    assert [row["type"] for row in rows["changes"]].count("account.connected") == 1  # bob's own, before the link
