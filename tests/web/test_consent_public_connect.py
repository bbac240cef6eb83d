"""`CALSYNC_PUBLIC_CONNECT=0`: plain `/connect` is closed (any Google user could add an account with
no ref and no confirmation, and have it synced from the app's quota), and an app's links still work."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.models import Account
from tests.conftest import API_TOKEN
from tests.web.test_consent import consent

APP = "https://app.example.test/after"
ANN = "ann@example.com"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, public_connect=False, return_urls=(APP,))


def accounts(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Account)) or 0)


def test_plain_connect_is_closed_and_stores_nothing(emu: Any, live_server: str, runtime: Runtime) -> None:
    resp = requests.get(f"{live_server}/connect", allow_redirects=False)
    assert resp.status_code == 404 and "through the links its app makes" in resp.text
    assert accounts(runtime) == 0 and emu.count("oauth.token") == 0


def test_an_apps_link_still_connects(emu: Any, live_server: str, runtime: Runtime) -> None:
    emu.create_user(ANN)
    link = requests.post(
        f"{live_server}/api/connect-sessions",
        json={"ref": "user-42", "return_to": APP},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ).json()["url"]
    browser = requests.Session()
    opened = browser.get(link, allow_redirects=False)
    back = browser.get(consent(browser, opened.headers["Location"], ANN), allow_redirects=False)
    assert back.status_code == 303 and "status=connected" in back.headers["Location"]
