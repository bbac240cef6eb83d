"""Held connections without HTTP around them: confirmed once, dropped on time, revoked at least once."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from calsync.accounts import connect_sessions, connections
from calsync.accounts.consent import finish_consent, start_consent
from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.errors import ConnectionUnusable, RefMismatch
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Change, ConnectSession

ANN = "ann@example.com"


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(settings, clock=FrozenClock(datetime.now(UTC)))
    yield rt
    rt.close()


def consented(runtime: Runtime, emu: Any, email: str, ref: str) -> str:
    """A link for `ref`, claimed, and `email`'s consent after it; returns the connection code."""
    emu.create_user(email)
    wanted = connect_sessions.ConnectRequest(ref=ref, return_to="https://app.example.test/after", login_hint=email)
    with transaction(runtime.sessions) as session:
        url, _ = connect_sessions.create(session, wanted, runtime.settings.public_url, runtime.clock.now())
    with transaction(runtime.sessions) as session:
        link = connect_sessions.claim(session, url.rsplit("/", 1)[1], runtime.clock.now())
    pending = start_consent(runtime, login_hint=email)
    emu.auto_approve = email
    answer = requests.get(pending.url, allow_redirects=False, timeout=10)
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    done = finish_consent(runtime, pending.state, pending.verifier, code, link=link.token_hash)
    assert done.email == email and done.connection
    return done.connection


def row(runtime: Runtime) -> ConnectSession:
    with runtime.sessions() as session:
        return session.scalars(select(ConnectSession)).one()


def counts(runtime: Runtime) -> tuple[int, int]:
    with runtime.sessions() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Account)) or 0),
            int(session.scalar(select(func.count()).select_from(Change)) or 0),
        )


def revocations(emu: Any) -> list[int]:
    return [r.status for r in emu.requests if r.api_method == "oauth.revoke"]


def test_a_confirmation_at_the_deadline_loses_to_the_drop_and_stores_nothing(runtime: Runtime, emu: Any) -> None:
    code = consented(runtime, emu, ANN, "user-42")
    runtime.clock.advance(minutes=10)  # type: ignore[attr-defined]
    assert connections.drop_unconfirmed(runtime) == 1
    with pytest.raises(ConnectionUnusable) as caught:
        connections.confirm(runtime, code, "user-42")
    assert caught.value.reason == "expired"
    assert counts(runtime) == (0, 0) and revocations(emu) == [200]
    assert connections.drop_unconfirmed(runtime) == 0


def test_a_grant_google_could_not_revoke_is_revoked_by_a_later_pass(
    runtime: Runtime, emu: Any, settings: Settings
) -> None:
    code = consented(runtime, emu, ANN, "user-42")
    unreachable = dataclasses.replace(
        runtime, settings=dataclasses.replace(settings, google_revoke_url="http://127.0.0.1:9/revoke")
    )
    with pytest.raises(RefMismatch):
        connections.confirm(unreachable, code, "user-7")
    kept = row(runtime)
    assert kept.connection_state == "refused" and kept.credentials  # kept until Google has revoked them
    assert connections.drop_unconfirmed(runtime) == 0  # the refusing request is given its grace first
    runtime.clock.advance(minutes=1)  # type: ignore[attr-defined]
    assert connections.drop_unconfirmed(runtime) == 1
    done = row(runtime)
    assert (done.connection_state, done.credentials, done.connection_until) == ("refused", None, None)
    assert revocations(emu) == [200] and counts(runtime) == (0, 0)


def test_a_confirmation_writes_the_account_and_its_connected_row_in_one_step(runtime: Runtime, emu: Any) -> None:
    code = consented(runtime, emu, ANN, "user-42")
    assert counts(runtime) == (0, 0)
    assert connections.confirm(runtime, code, "user-42") == connections.Confirmation(account=ANN, ref="user-42")
    with runtime.sessions() as session:
        account = session.scalars(select(Account)).one()
        [change] = session.scalars(select(Change)).all()
    assert (account.ref, account.status) == ("user-42", "active")
    assert (change.type, change.ref, change.account_id) == ("account.connected", "user-42", account.id)
    assert account.list_requested > account.list_done and account.list_due_at is not None
