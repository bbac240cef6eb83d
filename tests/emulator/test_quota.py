"""The emulator enforces Google's per-minute quotas: per project and per user, over a sliding window."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from googleapiclient.errors import HttpError

from calsync.emulator import Emulator

from .conftest import service_for


def _reason(err: HttpError) -> tuple[int, str, str]:
    entry = json.loads(err.content)["error"]["errors"][0]
    return int(err.resp.status), entry["domain"], entry["reason"]


def test_no_quota_unless_configured(emu: Emulator, service: Any, alice: str) -> None:
    for _ in range(50):
        service.calendarList().list().execute()
    assert emu.quota.refused == 0


def test_per_user_limit_refuses_that_user_only(emu: Emulator, service: Any, alice: str) -> None:
    bob = service_for(emu, emu.issue_tokens(emu.create_user("bob@example.com", "Bob")))
    emu.enforce_quota(per_project=100, per_user=3, window=60)
    for _ in range(3):
        service.events().list(calendarId="primary").execute()
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId="primary").execute()
    assert _reason(err.value) == (403, "usageLimits", "userRateLimitExceeded")
    bob.events().list(calendarId="primary").execute()  # another user has a budget of his own


def test_project_limit_counts_every_user_over_a_sliding_window(emu: Emulator, service: Any, alice: str) -> None:
    bob = service_for(emu, emu.issue_tokens(emu.create_user("bob@example.com", "Bob")))
    emu.enforce_quota(per_project=4, window=1.0)
    started = time.monotonic()
    for client in (service, bob, service, bob):
        client.calendarList().list().execute()
    with pytest.raises(HttpError) as err:
        bob.calendarList().list().execute()
    assert _reason(err.value) == (403, "usageLimits", "rateLimitExceeded")
    # Sliding, not a fixed minute: room comes back only as the oldest calls leave the window.
    time.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
    for client in (service, bob):
        client.calendarList().list().execute()
    assert emu.quota.refused == 1


def test_quota_is_configured_over_the_control_api(emu: Emulator) -> None:
    url = emu.url + "/_emulator/quota"
    answer = requests.put(url, json={"per_project": 10, "per_user": 2, "window": 5}, timeout=5).json()
    assert answer == {"per_project": 10, "per_user": 2, "window": 5.0, "refused": 0}
    bad = requests.put(url, json={"per_project": 0}, timeout=5)
    assert bad.status_code == 400
    assert requests.get(url, timeout=5).json()["per_project"] == 10  # the bad request changed nothing
    emu.reset()
    assert requests.get(url, timeout=5).json()["per_project"] is None
