"""Injected API failures carry Google's envelope, domain and Retry-After."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from googleapiclient.errors import HttpError

from calsync.emulator import Emulator


def test_429_with_retry_after_then_recovers(emu: Emulator, service: Any, alice: str) -> None:
    emu.fail_next(1, status=429, reason="rateLimitExceeded", retry_after=7, method="calendar.events.list")
    service.calendarList().list().execute()  # another method is not affected
    with pytest.raises(HttpError) as err:
        service.events().list(calendarId="primary").execute()
    assert err.value.resp.status == 429 and err.value.resp["retry-after"] == "7"
    body = json.loads(err.value.content)["error"]
    assert body["errors"][0]["domain"] == "usageLimits" and body["errors"][0]["reason"] == "rateLimitExceeded"
    assert body["status"] == "RESOURCE_EXHAUSTED"
    assert service.events().list(calendarId="primary").execute()["items"] == []
    statuses = [r.status for r in emu.requests if r.api_method == "calendar.events.list"]
    assert statuses == [429, 200]


def test_403_rate_limit_envelope(emu: Emulator, service: Any, alice: str) -> None:
    emu.fail_next(2, status=403, reason="rateLimitExceeded")
    for _ in range(2):
        with pytest.raises(HttpError) as err:
            service.events().list(calendarId="primary").execute()
        assert json.loads(err.value.content) == {
            "error": {
                "code": 403,
                "message": "Rate Limit Exceeded",
                "errors": [{"domain": "usageLimits", "reason": "rateLimitExceeded", "message": "Rate Limit Exceeded"}],
                "status": "PERMISSION_DENIED",
            }
        }
    service.events().list(calendarId="primary").execute()


def test_backend_error_is_global_domain(emu: Emulator, service: Any, alice: str) -> None:
    emu.fail_next(1, status=503, reason="backendError")
    with pytest.raises(HttpError) as err:
        service.calendars().get(calendarId="primary").execute()
    error = json.loads(err.value.content)["error"]
    assert err.value.resp.status == 503 and error["errors"][0]["domain"] == "global"
    assert error["errors"][0]["reason"] == "backendError"


def test_fault_scoped_to_a_calendar(emu: Emulator, service: Any, alice: str) -> None:
    other = emu.create_calendar(alice, "Other")
    emu.fail_next(1, status=500, reason="backendError", calendar_id=other)
    service.events().list(calendarId="primary").execute()
    with pytest.raises(HttpError):
        service.events().list(calendarId=other).execute()


def test_reset_clears_pending_faults(emu: Emulator, alice: str) -> None:
    emu.fail_next(5)
    emu.reset()
    emu.create_user(alice)
    from .conftest import service_for

    assert service_for(emu, emu.issue_tokens(alice)).events().list(calendarId="primary").execute()["items"] == []


def test_bad_fault_arguments_are_refused(emu: Emulator) -> None:
    with pytest.raises(ValueError):
        emu.fail_next(0)
    with pytest.raises(ValueError):
        emu.push_faults(drop=2.0)


def test_token_endpoint_outage_only_when_asked_for(emu: Emulator, alice: str) -> None:
    import google.auth.transport.requests
    import requests

    from .conftest import credentials_for

    creds = credentials_for(emu, emu.issue_tokens(alice))
    emu.fail_next(1, status=503, reason="backendError")  # Calendar API only: refresh unaffected
    creds.refresh(google.auth.transport.requests.Request())
    emu.faults.clear()
    emu.fail_next(1, status=503, reason="backendError", retry_after=2, method="oauth.token")
    form = {
        "grant_type": "refresh_token",
        "refresh_token": creds.refresh_token,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
    }
    down = requests.post(emu.url + "/token", data=form)
    assert down.status_code == 503 and down.headers["Retry-After"] == "2"
    assert down.json()["error"] == "backendError"
    assert requests.post(emu.url + "/token", data=form).status_code == 200


def test_slow_next_holds_only_the_matching_calls(emu: Emulator, service: Any, alice: str) -> None:
    emu.slow_next(1, 2.0, method="calendar.events.list")
    started = time.monotonic()
    service.calendarList().list().execute()  # another method is not held
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    assert service.events().list(calendarId="primary").execute()["items"] == []
    assert time.monotonic() - started >= 2.0
    started = time.monotonic()
    service.events().list(calendarId="primary").execute()  # only the next one
    assert time.monotonic() - started < 2.0
    with pytest.raises(ValueError):
        emu.slow_next(1, 0)
