"""Operators' dashboard sign-ins: sessions kept server-side, and a delay that slows password guessing.

A signed cookie alone cannot be revoked, so each sign-in is a row the cookie names by a random id
(stored only as its hash); signing out deletes the row and every copy of the cookie stops working.

Guessing is slowed per client, never for everyone: after a few free failures a client waits 1 s,
then 2 s, 4 s … up to 5 minutes before its next attempt is even checked, while a right password
from any other client goes straight in. A client is the connection's address (behind trusted
proxies, the address they forwarded); an IPv6 client is its /64, which one host can fill at will.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from calsync.store.db import is_postgres, rows_affected
from calsync.store.models import LoginFailure, OperatorSession

SESSION_LIFETIME = timedelta(hours=12)
FREE_FAILURES = 5  # typing mistakes cost nothing
FIRST_DELAY = 1.0
MAX_DELAY = 300.0
# A client whose last failure is this old starts again from nothing.
FORGET_AFTER = timedelta(hours=1)


def client_key(address: str | None) -> str:
    """The unit the delay applies to: an IPv4 address, or the /64 network of an IPv6 one."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return (address or "unknown")[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def delay_after(failures: int) -> float:
    """Seconds a client must wait after its last failure before it may try again."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(FIRST_DELAY * 2.0 ** min(failures - FREE_FAILURES, 32), MAX_DELAY)


def claim_attempt(session: Session, client: str, now: datetime) -> float:
    """Take the right to check one password for `client`: 0 when taken, else the seconds to wait.

    A taken attempt counts as a failure until `forget_failures` clears it, so that attempts sent
    side by side cannot all slip through within one delay.
    """
    session.execute(delete(LoginFailure).where(LoginFailure.last_failure_at < now - FORGET_AFTER))
    insert = pg_insert if is_postgres(session) else sqlite_insert
    session.execute(
        insert(LoginFailure).values(client=client, failures=0, last_failure_at=now).on_conflict_do_nothing()
    )
    row = session.scalars(select(LoginFailure).where(LoginFailure.client == client).with_for_update()).one()
    wait = (row.last_failure_at + timedelta(seconds=delay_after(row.failures)) - now).total_seconds()
    if wait > 0:
        return wait
    row.failures += 1
    row.last_failure_at = now
    return 0.0


def forget_failures(session: Session, client: str) -> None:
    """The client gave the right password: its count starts again."""
    session.execute(delete(LoginFailure).where(LoginFailure.client == client))


def start_session(session: Session, now: datetime) -> str:
    """A new sign-in; returns the id for the cookie (the table keeps only its hash)."""
    session.execute(delete(OperatorSession).where(OperatorSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(OperatorSession(id_hash=_hash(token), created_at=now, expires_at=now + SESSION_LIFETIME))
    return token


def session_is_live(session: Session, token: str, now: datetime) -> bool:
    expires_at = session.scalar(select(OperatorSession.expires_at).where(OperatorSession.id_hash == _hash(token)))
    return expires_at is not None and expires_at > now


def end_session(session: Session, token: str) -> bool:
    """Sign out: the session's row goes, and with it every copy of its cookie."""
    return rows_affected(session.execute(delete(OperatorSession).where(OperatorSession.id_hash == _hash(token)))) > 0


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
