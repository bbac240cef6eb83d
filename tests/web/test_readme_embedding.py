"""The README's embedding example, run as written against a live calsync and the emulator's consent."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import update

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account
from calsync.work.worker import Worker
from tests.conftest import API_TOKEN
from tests.web.test_consent import consent

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
RETURN_TO = "https://app.example.test/calendar/connected"
ANN = "ann@example.com"


def example() -> str:
    section = README.split("## Embedding calsync in your app", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    return str(code)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, return_urls=("https://app.example.test/calendar/",))


def test_the_readme_example_connects_a_user_and_follows_the_lifecycle(
    live_server: str, emu: Any, runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    app: dict[str, Any] = {}
    exec(example(), app)  # the README's code, unchanged; then pointed at this calsync
    app.update(CALSYNC=live_server, API={"Authorization": f"Bearer {API_TOKEN}"}, RETURN_TO=RETURN_TO)
    emu.create_user(ANN)

    def come_back(link: str, email: str) -> dict[str, str]:
        """The user follows the link, consents as `email`, and lands on RETURN_TO: its query."""
        browser = requests.Session()
        callback = consent(browser, browser.get(link, allow_redirects=False).headers["Location"], email)
        back = browser.get(callback, allow_redirects=False).headers["Location"]
        assert back.startswith(RETURN_TO + "?")
        return {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}

    # user-7 makes a link for themself and sends it to ann, who is signed in to the app as user-42
    stolen = come_back(app["connect_link"]("user-7"), ANN)
    assert app["connected_page"]("user-42", stolen) == "This link was made for someone else: nothing was connected."
    assert requests.get(f"{live_server}/api/accounts", headers=app["API"], timeout=10).json() == []

    args = come_back(app["connect_link"]("user-42", ANN), ANN)
    assert app["connected_page"]("user-42", args) == f"Connected: {ANN}"
    assert (
        app["connected_page"]("user-42", {"ref": "user-42", "status": "denied", "error": "access_denied"})
        == "Your calendar was not connected (access_denied)."
    )

    Worker(runtime, threads=1).run_burst()
    cursor = app["read_feed"](0)
    assert capsys.readouterr().out.splitlines() == [
        f"user-42: account.connected {ANN}",
        f"user-42: calendar.added {ANN}",
        f"user-42: calendar.synced {ANN}",
    ]

    emu.revoke_grant(ANN)
    with transaction(runtime.sessions) as session:  # what Google's calendar-list notification would owe
        session.execute(
            update(Account).values(list_requested=Account.list_requested + 1, list_due_at=runtime.clock.now())
        )
    Worker(runtime, threads=1).run_burst()
    assert app["read_feed"](cursor) > cursor
    assert capsys.readouterr().out.splitlines() == [
        f"user-42: Google no longer lets calsync read {ANN}: ask them to connect again"
    ]
    again = app["connect_link"]("user-42")  # the user clicks "Connect calendar" again
    assert requests.get(again, allow_redirects=False).status_code == 302
