"""Held connections without HTTP around them: confirmed once, dropped on time, revoked at least once."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, insert, select

from calsync.accounts import connect_sessions, connections
from calsync.accounts.connected import load_credentials
from calsync.accounts.consent import finish_consent, start_consent
from calsync.accounts.disconnect import disconnect_account, find_account_id
from calsync.clock import FrozenClock
from calsync.config import Settings
from calsync.errors import ConnectionUnusable, GoogleApiError, RefMismatch
from calsync.google.calendar import GoogleCalendar
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Change, ConnectSession
from calsync.store.states import ConnectOutcome
from tests.sync_support import connect_with_ref, consent_through_link

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


def account_works(runtime: Runtime) -> bool:
    """The stored account's tokens still get an answer from Google."""
    with runtime.sessions() as session:
        account = session.scalars(select(Account).where(Account.email == ANN)).one()
    try:
        GoogleCalendar(load_credentials(runtime, account), runtime.settings.calendar_api_endpoint).get_calendar(
            "primary"
        )
    except GoogleApiError:
        return False
    return True


def test_an_abandoned_first_attempt_dropped_leaves_the_second_its_grant(runtime: Runtime, emu: Any) -> None:
    """Revoking ends the user's whole grant to calsync: the first attempt's drop revoked the tokens
    of the second, which its confirmation then stored (a 200 to the app, a dead account)."""
    consent_through_link(runtime, emu, ANN, "user-42")  # left unconfirmed
    runtime.clock.advance(minutes=9)  # type: ignore[attr-defined]
    second = consent_through_link(runtime, emu, ANN, "user-42")
    runtime.clock.advance(minutes=1)  # type: ignore[attr-defined]
    assert connections.drop_unconfirmed(runtime) == 1
    assert revocations(emu) == []  # the second attempt lives on the grant
    assert connections.confirm(runtime, second, "user-42").account == ANN
    assert account_works(runtime)


def test_a_refused_link_from_someone_else_leaves_the_users_own_connection_its_grant(runtime: Runtime, emu: Any) -> None:
    """An attacker's link, approved by the victim and so refused, revoked the grant that the
    victim's own pending connection lived on."""
    own = consent_through_link(runtime, emu, ANN, "ann")
    foreign = consent_through_link(runtime, emu, ANN, "mallory")
    with pytest.raises(RefMismatch):
        connections.confirm(runtime, foreign, "ann")
    assert revocations(emu) == []
    assert connections.confirm(runtime, own, "ann").account == ANN
    assert account_works(runtime)


def test_the_grant_is_revoked_once_nothing_lives_on_it(runtime: Runtime, emu: Any) -> None:
    first = consent_through_link(runtime, emu, ANN, "ann")
    second = consent_through_link(runtime, emu, ANN, "mallory")
    with pytest.raises(RefMismatch):
        connections.confirm(runtime, second, "ann")  # the first still waits: kept
    runtime.clock.advance(minutes=10)  # type: ignore[attr-defined]
    assert connections.drop_unconfirmed(runtime) == 1  # the first: nothing else lives on the grant now
    assert revocations(emu) == [200]
    with pytest.raises(ConnectionUnusable):
        connections.confirm(runtime, first, "ann")
    assert counts(runtime) == (0, 0)


def test_a_disconnect_drops_the_accounts_connection_waiting_for_confirmation(runtime: Runtime, emu: Any) -> None:
    """The disconnect revokes the grant that a pending re-consent holds: its confirmation brought
    the account back, active, with dead tokens."""
    connect_with_ref(runtime, emu, ANN, "ann")
    again = consent_through_link(runtime, emu, ANN, "ann")  # a re-consent, e.g. for the write scope
    disconnect_account(runtime, find_account_id(runtime, ANN))
    with pytest.raises(ConnectionUnusable) as caught:
        connections.confirm(runtime, again, "ann")
    assert caught.value.reason == "expired"
    with runtime.sessions() as session:
        assert session.scalars(select(Account.status)).one() == "disconnected"
        assert session.scalars(select(ConnectSession.credentials).where(ConnectSession.email == ANN)).all() == [
            None,
            None,
        ]


def test_a_consent_that_finds_its_links_consent_ended_revokes_the_grant_it_just_made(
    runtime: Runtime, emu: Any
) -> None:
    """Two answers for one link (a replayed cookie racing the first): the second exchanged its code,
    found the link spent, and left that grant live at Google with nothing holding it."""
    emu.create_user(ANN)
    wanted = connect_sessions.ConnectRequest(ref="ann", return_to="https://app.example.test/after", login_hint=ANN)
    with transaction(runtime.sessions) as session:
        url, _ = connect_sessions.create(session, wanted, runtime.settings.public_url, runtime.clock.now())
    with transaction(runtime.sessions) as session:
        link = connect_sessions.claim(session, url.rsplit("/", 1)[1], runtime.clock.now())
        connect_sessions.settle(session, link.token_hash, ConnectOutcome.DENIED)  # the first answer
    pending = start_consent(runtime, login_hint=ANN)
    emu.auto_approve = ANN
    answer = requests.get(pending.url, allow_redirects=False, timeout=10)
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    with pytest.raises(ConnectionUnusable):
        finish_consent(runtime, pending.state, pending.verifier, code, link=link.token_hash)
    assert emu.count("oauth.token") == 1 and revocations(emu) == [200]
    assert counts(runtime) == (0, 0)
