"""The consent's two halves without HTTP around them, against the emulator's OAuth server."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from calsync.accounts.consent import Consented, finish_consent, start_consent
from calsync.errors import ConsentError
from calsync.runtime import Runtime
from calsync.store.models import Account


def _accounts(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Account)) or 0)


def test_a_consent_started_and_finished_stores_the_account_by_its_primary_calendar(runtime: Runtime, emu: Any) -> None:
    pending = start_consent(runtime)
    query = parse_qs(urlsplit(pending.url).query)
    assert query["access_type"] == ["offline"] and query["code_challenge_method"] == ["S256"]
    assert query["state"] == [pending.state] and pending.verifier
    emu.auto_approve = "ann@example.com"
    answer = requests.get(pending.url, allow_redirects=False, timeout=10)
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    assert finish_consent(runtime, pending.state, pending.verifier, code) == Consented("ann@example.com")
    with runtime.sessions() as session:
        account = session.scalars(select(Account)).one()
        assert account.email == "ann@example.com" and account.list_requested == 1
        assert b"refresh_token" not in account.credentials  # encrypted at rest


def test_a_refused_code_is_a_consent_error_and_stores_nothing(runtime: Runtime, emu: Any) -> None:
    pending = start_consent(runtime)
    with pytest.raises(ConsentError) as caught:
        finish_consent(runtime, pending.state, pending.verifier, "not-a-code-google-issued")
    assert caught.value.reason == "exchange_refused" and caught.value.detail == "invalid_grant"
    assert _accounts(runtime) == 0


def test_without_client_secrets_consent_is_not_configured(runtime: Runtime) -> None:
    broken = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, google_client_secrets=None))
    with pytest.raises(ConsentError) as caught:
        start_consent(broken)
    assert caught.value.reason == "not_configured" and "CALSYNC_GOOGLE_CLIENT_SECRETS" in (caught.value.detail or "")
