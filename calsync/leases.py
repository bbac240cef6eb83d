"""Claiming work with leases: calendars to sync and calendar lists to refresh.

A claim takes the oldest due row whose lease is free, in one short transaction: on PostgreSQL with
`FOR UPDATE SKIP LOCKED` so concurrent workers take different rows; on SQLite BEGIN IMMEDIATE already
serialises writers. The claimer remembers `requested` at claim time; finishing sets `done` to that
value, so requests that came in during the work leave exactly one more run owed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from calsync.models import Account, Calendar


@dataclass(frozen=True)
class Claim:
    """One piece of work held under a lease: ids only, never ORM objects."""

    id: int
    requested: int
    owner: str
    claimed_at: datetime | None = None


def claim_calendar(session: Session, owner: str, now: datetime, lease_seconds: float) -> Claim | None:
    """The calendar that has waited longest for a sync, leased to `owner`; None when nothing is due."""
    stmt = (
        select(Calendar.id, Calendar.sync_requested)
        .join(Account, Account.id == Calendar.account_id)
        .where(Calendar.due_at <= now, Calendar.removed_at.is_(None), Account.status == "active",
               (Calendar.lease_until.is_(None)) | (Calendar.lease_until < now))
        .order_by(Calendar.due_at, Calendar.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Calendar)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    session.execute(update(Calendar).where(Calendar.id == row.id).values(
        lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds)))
    return Claim(id=row.id, requested=row.sync_requested, owner=owner, claimed_at=now)


def finish_calendar(session: Session, claim: Claim, now: datetime, reconcile_every: float,
                    min_interval: float = 0.0) -> bool:
    """Record a successful sync: one more run if requests arrived meanwhile, else reconcile later.

    The one more run waits until `min_interval` after this one began, so a burst that outlasts a
    sync still costs one more call, not one per notification.
    """
    follow_up = max(now, (claim.claimed_at or now) + timedelta(seconds=min_interval))
    result = session.execute(update(Calendar).where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner).values(
        sync_done=claim.requested,
        due_at=case((Calendar.sync_requested > claim.requested, follow_up),
                    else_=now + timedelta(seconds=reconcile_every)),
        next_reconcile_at=now + timedelta(seconds=reconcile_every),
        lease_owner=None, lease_until=None, error_count=0, retry_at=None, last_error=None,
        sync_state="synced"))
    return bool(result.rowcount)


def fail_calendar(session: Session, claim: Claim, now: datetime, *, delay: float, state: str, error: str) -> bool:
    """Record a failed sync: the owed work stays owed, due again after `delay`."""
    retry_at = now + timedelta(seconds=delay)
    result = session.execute(update(Calendar).where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner).values(
        error_count=Calendar.error_count + 1, retry_at=retry_at, due_at=retry_at, sync_state=state,
        last_error=error[:2000], lease_owner=None, lease_until=None))
    return bool(result.rowcount)


def release_calendar(session: Session, claim: Claim) -> None:
    """Give the work back untouched (shutdown, or a job that must not run now)."""
    session.execute(update(Calendar).where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner)
                    .values(lease_owner=None, lease_until=None))


def calendar_error_count(session: Session, calendar_id: int) -> int:
    return int(session.scalar(select(Calendar.error_count).where(Calendar.id == calendar_id)) or 0)


def claim_account_list(session: Session, owner: str, now: datetime, lease_seconds: float) -> Claim | None:
    """An active account whose calendar list is due for a refresh, leased to `owner`."""
    stmt = (
        select(Account.id, Account.list_requested)
        .where(Account.status == "active", Account.list_due_at <= now,
               (Account.list_lease_until.is_(None)) | (Account.list_lease_until < now))
        .order_by(Account.list_due_at, Account.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    session.execute(update(Account).where(Account.id == row.id).values(
        list_lease_owner=owner, list_lease_until=now + timedelta(seconds=lease_seconds)))
    return Claim(id=row.id, requested=row.list_requested, owner=owner, claimed_at=now)


def finish_account_list(session: Session, claim: Claim, now: datetime, reconcile_every: float) -> bool:
    result = session.execute(update(Account).where(Account.id == claim.id, Account.list_lease_owner == claim.owner).values(
        list_done=claim.requested,
        list_due_at=case((Account.list_requested > claim.requested, now),
                         else_=now + timedelta(seconds=reconcile_every)),
        list_lease_owner=None, list_lease_until=None, list_error_count=0,
        last_error=case((Account.status == "active", None), else_=Account.last_error)))
    return bool(result.rowcount)


def fail_account_list(session: Session, claim: Claim, now: datetime, *, delay: float, error: str) -> bool:
    result = session.execute(update(Account).where(Account.id == claim.id, Account.list_lease_owner == claim.owner).values(
        list_error_count=Account.list_error_count + 1, list_due_at=now + timedelta(seconds=delay),
        last_error=error[:1000], list_lease_owner=None, list_lease_until=None))
    return bool(result.rowcount)


def release_account_list(session: Session, claim: Claim) -> None:
    session.execute(update(Account).where(Account.id == claim.id, Account.list_lease_owner == claim.owner)
                    .values(list_lease_owner=None, list_lease_until=None))


def account_list_error_count(session: Session, account_id: int) -> int:
    return int(session.scalar(select(Account.list_error_count).where(Account.id == account_id)) or 0)
