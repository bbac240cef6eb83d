"""The connection a connect session's consent made, held until the app's server confirms it.

A link is only a link: whoever opens it consents with their own Google account, so the ref the app
put in the session says nothing about who consented. The consent's tokens therefore wait here
(encrypted, on the session's row) behind a one-time code that the user's browser carries back to
`return_to`. The app's server exchanges it with the ref of the user signed in to the app, as an
OAuth client exchanges a code: the session's ref stores the account under that ref (and the feed
says `account.connected`, in the same transaction); any other ref drops the connection. So does
silence for `CONFIRM_WITHIN`. Until then nothing of the account exists: no row, no sync, no feed row.

Dropping keeps an account that calsync already serves as it was; a grant nobody uses is revoked.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from google.oauth2.credentials import Credentials
from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from calsync.accounts import connect_sessions
from calsync.accounts.connected import record_connected, upsert_account
from calsync.errors import ConnectionUnusable, InvalidConnectSession, RefMismatch
from calsync.google.oauth import credentials_from_json, credentials_to_json, revoke
from calsync.runtime import Runtime
from calsync.store.crypto import TokenCipher
from calsync.store.db import rows_affected, statements_alone, transaction
from calsync.store.models import Account, ConnectSession
from calsync.store.states import AccountStatus, ConnectionState, ConnectOutcome

log = logging.getLogger(__name__)

CONFIRM_WITHIN = timedelta(minutes=10)
# A refused connection's grant is revoked by the request that refused it; the scheduler's pass
# takes over only if that did not finish by then (a crash, Google unreachable).
REVOKE_GRACE = timedelta(minutes=1)
CODE_MAX = 200
FIELDS = frozenset({"connection", "ref"})


@dataclass(frozen=True)
class Confirmation:
    """A confirmed connection: the account and the ref it now belongs to."""

    account: str
    ref: str


@dataclass(frozen=True)
class _Held:
    """A connection being let go: its row, its account's email, and the tokens to revoke."""

    digest: str
    email: str
    creds: Credentials | None


def hold(
    session: Session, cipher: TokenCipher, link: str, email: str, creds: Credentials, scopes: list[str], now: datetime
) -> str:
    """Keep the consent's tokens on the claimed link's row until confirmed; returns the one-time code."""
    row = session.get(ConnectSession, link, with_for_update=True)
    if row is None or row.connection_hash is not None or row.outcome is not None:
        # Made its connection already, or its consent ended otherwise (denied, failed): a replay of
        # the browser's old cookie with a new code from Google must not turn that into a connection.
        raise ConnectionUnusable("This link already made its connection.", reason="used")
    code = secrets.token_urlsafe(32)
    row.connection_hash = connect_sessions.token_hash(code)
    row.connection_state = ConnectionState.PENDING
    row.connection_until = now + CONFIRM_WITHIN
    row.email = email
    row.credentials = cipher.encrypt_str(credentials_to_json(creds))
    row.scopes = list(scopes)
    connect_sessions.settle(session, link, ConnectOutcome.CONNECTED)
    return code


def parse_confirm(body: Any) -> tuple[str, str]:
    """The JSON body of `POST /api/connect-sessions/confirm`: (code, ref); InvalidConnectSession names the bad field."""
    if not isinstance(body, dict):
        raise InvalidConnectSession("body", "the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidConnectSession(unknown[0], f"{unknown[0]}: unknown field; use connection, ref")
    code = body.get("connection")
    if not isinstance(code, str) or not 1 <= len(code) <= CODE_MAX or not code.isprintable():
        raise InvalidConnectSession("connection", "connection: the code the user came back to return_to with")
    ref = body.get("ref")
    if not isinstance(ref, str) or not 1 <= len(ref) <= connect_sessions.REF_MAX or not ref.isprintable():
        raise InvalidConnectSession(
            "ref", f"ref: the id of the user signed in to your app, 1-{connect_sessions.REF_MAX} printable characters"
        )
    return code, ref


def confirm(runtime: Runtime, code: str, ref: str) -> Confirmation:
    """Store the held account under `ref` if it is the session's ref; otherwise drop it (RefMismatch).

    The code works once: the first confirmation settles it, whatever its answer
    (ConnectionUnusable for an unknown, used or expired code, changing nothing).
    """
    digest = connect_sessions.token_hash(code)
    now = runtime.clock.now()
    with transaction(runtime.sessions) as db:
        row = db.scalar(select(ConnectSession).where(ConnectSession.connection_hash == digest))
        if row is None:
            raise ConnectionUnusable("No connection has this code.", reason="unknown")
        matches = secrets.compare_digest(row.ref.encode(), ref.encode())
        taken = db.execute(
            update(ConnectSession)
            .where(
                ConnectSession.token_hash == row.token_hash,
                ConnectSession.connection_state == ConnectionState.PENDING,
                ConnectSession.connection_until > now,
            )
            .values(
                connection_state=ConnectionState.CONFIRMED if matches else ConnectionState.REFUSED,
                connection_until=None if matches else now + REVOKE_GRACE,
            )
        )
        if rows_affected(taken) == 0:
            db.refresh(row)
            if row.connection_state in {ConnectionState.PENDING, ConnectionState.EXPIRED}:
                raise ConnectionUnusable(
                    "This connection was dropped: it was not confirmed within 10 minutes, or its account was"
                    " disconnected meanwhile.",
                    reason="expired",
                )
            raise ConnectionUnusable("This connection code was already used.", reason="used")
        db.refresh(row)
        email, stored, scopes = row.email or "", row.credentials or b"", list(row.scopes or [])
        if matches:
            creds = credentials_from_json(runtime.cipher.decrypt_str(stored), runtime.settings)
            account = upsert_account(db, runtime.cipher, email, creds, scopes, now)
            record_connected(db, account, now, ref=row.ref)
            row.account_id = account.id
            row.credentials = None
            runtime.wakeup.notify_after_commit(db)
    if not matches:
        _let_go(runtime, _held(runtime, row.token_hash, email, stored))
        log.warning("connection of %s refused: confirmed for another ref than its session's", email)
        raise RefMismatch("The connection was made through a link for another user of your app; it was dropped.")
    log.info("account %s connected for its app's user", email)
    return Confirmation(account=email, ref=ref)


def drop_unconfirmed(runtime: Runtime) -> int:
    """The scheduler's pass: let go of every connection not confirmed in time; returns how many.

    A read finds them first (one index probe, no write lock when there is nothing to do); each is
    then taken by a conditional update, so two workers never drop the same connection twice.
    """
    now = runtime.clock.now()
    with runtime.sessions() as db:
        statements_alone(db)
        due = list(db.scalars(select(ConnectSession.token_hash).where(ConnectSession.connection_until <= now)))
    dropped = 0
    for digest in due:
        with transaction(runtime.sessions) as db:
            taken = db.execute(
                update(ConnectSession)
                .where(ConnectSession.token_hash == digest, ConnectSession.connection_until <= now)
                .values(
                    connection_state=_expired_if_pending(),
                    connection_until=now + REVOKE_GRACE,
                )
            )
            row = db.get(ConnectSession, digest) if rows_affected(taken) else None
            held = _held(runtime, digest, row.email or "", row.credentials or b"") if row is not None else None
        if held is not None:
            _let_go(runtime, held)
            dropped += 1
    return dropped


def _expired_if_pending() -> Any:
    """A pending connection becomes expired; a refused one stays refused."""
    return case(
        (ConnectSession.connection_state == ConnectionState.PENDING, ConnectionState.EXPIRED.value),
        else_=ConnectSession.connection_state,
    )


def _held(runtime: Runtime, digest: str, email: str, stored: bytes) -> _Held:
    creds = credentials_from_json(runtime.cipher.decrypt_str(stored), runtime.settings) if stored else None
    return _Held(digest=digest, email=email, creds=creds)


def _let_go(runtime: Runtime, held: _Held) -> None:
    """Revoke the held grant unless calsync still lives on it, then forget the tokens.

    Revoking at Google ends the whole grant of that user to this client, the tokens calsync already
    holds for the account included: an account that was active before the consent keeps its own.
    """
    if not release_grant(runtime, held.email, held.creds, keeping=held.digest):
        return  # the tokens stay, and the scheduler's pass tries again after REVOKE_GRACE
    with transaction(runtime.sessions) as db:
        db.execute(
            update(ConnectSession)
            .where(ConnectSession.token_hash == held.digest)
            .values(credentials=None, connection_until=None)
        )


def release_grant(runtime: Runtime, email: str, creds: Credentials | None, *, keeping: str | None = None) -> bool:
    """Revoke a grant nobody will use, unless calsync still lives on it; False if Google could not
    be reached (the caller keeps the tokens to try again).

    It lives on while the account is active, and while another connection of the same Google
    account waits for its app's confirmation (`keeping`: the one being let go): an abandoned first
    attempt dropped after ten minutes, or a refused link an attacker sent, revoked the grant that
    the user's own pending connection then confirmed with dead tokens.
    """
    if creds is None or _in_use(runtime, email, runtime.clock.now(), keeping):
        return True
    token = creds.refresh_token or creds.token
    if not token:
        return True
    try:
        revoke(runtime.settings, token)
    except requests.RequestException as err:
        log.warning("could not revoke the unused grant of %s: %s", email, err)
        return False
    return True


def forget_pending(session: Session, email: str) -> int:
    """A disconnect's part: the account's connections still waiting for confirmation are dropped
    with it (the disconnect revokes the grant they hold, and a confirmation would have brought the
    account back with dead tokens)."""
    dropped = session.execute(
        update(ConnectSession)
        .where(ConnectSession.email == email, ConnectSession.connection_state == ConnectionState.PENDING)
        .values(connection_state=ConnectionState.EXPIRED, credentials=None, connection_until=None)
    )
    return rows_affected(dropped)


def _in_use(runtime: Runtime, email: str, now: datetime, keeping: str | None) -> bool:
    with runtime.sessions() as db:
        if db.scalar(select(Account.status).where(Account.email == email)) == AccountStatus.ACTIVE:
            return True
        waiting = select(ConnectSession.token_hash).where(
            ConnectSession.email == email,
            ConnectSession.connection_state == ConnectionState.PENDING,
            ConnectSession.connection_until > now,
            ConnectSession.credentials.is_not(None),
        )
        if keeping is not None:
            waiting = waiting.where(ConnectSession.token_hash != keeping)
        return db.scalar(waiting.limit(1)) is not None
