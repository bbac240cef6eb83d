"""Held connections without HTTP around them: confirmed once, dropped on time, revoked at least once."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from calsync.accounts import connections
from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.errors import ConnectionUnusable, RefMismatch
from calsync.runtime import Runtime
from calsync.store.models import Account, Change, ConnectSession
from tests.sync_support import consent_through_link

ANN = "ann@example.com"


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(settings, clock=FrozenClock(datetime.now(UTC)))
    yield rt
    rt.close()


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
    code = consent_through_link(runtime, emu, ANN, "user-42")
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
    code = consent_through_link(runtime, emu, ANN, "user-42")
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
    code = consent_through_link(runtime, emu, ANN, "user-42")
    assert counts(runtime) == (0, 0)
    assert connections.confirm(runtime, code, "user-42") == connections.Confirmation(account=ANN, ref="user-42")
    with runtime.sessions() as session:
        account = session.scalars(select(Account)).one()
        [change] = session.scalars(select(Change)).all()
    assert (account.ref, account.status) == ("user-42", "active")
    assert (change.type, change.ref, change.account_id) == ("account.connected", "user-42", account.id)
    assert account.list_requested > account.list_done and account.list_due_at is not None


def test_a_confirmation_racing_another_consent_of_the_same_new_account_waits_for_it(runtime: Runtime, emu: Any) -> None:
    """Another transaction (a second link's confirmation, or `/connect`) is inserting the same new
    account: the confirmation waits for it and updates its row; a duplicate insert was a 500."""
    code = consent_through_link(runtime, emu, ANN, "user-2")
    other = runtime.sessions()
    other.begin()
    now = runtime.clock.now()
    other.execute(
        insert(Account).values(email=ANN, credentials=b"", scopes=[], created_at=now, list_requested=0, list_done=0)
    )
    other.flush()
    outcome: dict[str, Any] = {}

    def confirm() -> None:
        try:
            outcome["done"] = connections.confirm(runtime, code, "user-2")
        except Exception as err:  # the test reports it below
            outcome["error"] = err

    thread = threading.Thread(target=confirm)
    thread.start()
    thread.join(0.5)  # on PostgreSQL it waits on the other transaction's row; on SQLite for the write lock
    other.commit()
    other.close()
    thread.join(30)
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["done"].ref == "user-2"
    with runtime.sessions() as session:
        [account] = session.scalars(select(Account)).all()
        assert (account.email, account.ref, account.credentials != b"") == (ANN, "user-2", True)
