"""Claiming work with leases: calendars to sync and calendar lists to refresh.

A claim takes the oldest due row whose lease is free, in one short transaction: on PostgreSQL with
`FOR UPDATE SKIP LOCKED` so concurrent workers take different rows; on SQLite BEGIN IMMEDIATE already
serialises writers. A lease is free once it ran out or once its holder stopped beating
(`calsync.store.liveness`): a killed worker's work is taken over within seconds, a slow one keeps
it. The claimer remembers `requested` at claim time; finishing sets `done` to that value, so
requests that came in during the work leave exactly one more run owed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, bindparam, case, select, update
from sqlalchemy.orm import Session

from calsync.store.db import is_postgres, rows_affected
from calsync.store.liveness import claiming_as, lease_is_free, stale_before
from calsync.store.models import Account, Calendar, Channel
from calsync.store.states import AccountStatus, ChannelKind, ChannelStatus, SyncState
from calsync.sync.state import CalendarState


@dataclass(frozen=True)
class Claim:
    """One piece of work held under a lease: ids and plain values, never ORM objects."""

    id: int
    requested: int
    owner: str
    claimed_at: datetime | None = None
    calendar: CalendarState | None = None
    more_due: bool = False  # another calendar was due and free when this one was claimed


def claim_calendar(
    session: Session, owner: str, now: datetime, lease_seconds: float, renew_before: float | None = None
) -> Claim | None:
    """The calendar that has waited longest for a sync, leased to `owner`; None when nothing is due.

    One statement takes the lease and returns the job's starting state, whether another calendar
    is waiting too, and (given `renew_before`) whether an active channel outlasts the renewal window.
    """
    claiming_as(session, owner, now)
    params = {
        "now": now,
        "stale_before": stale_before(now),
        "owner": owner,
        "until": now + timedelta(seconds=lease_seconds),
        "horizon": now + timedelta(seconds=renew_before or 0.0),
    }
    if is_postgres(session):
        row = session.execute(_CLAIM, params).first()
    else:
        # SQLite's RETURNING cannot hold correlated subqueries; a read then a write costs no round trip.
        row = session.execute(_PEEK, params).first()
        if row is not None:
            session.execute(_LEASE, {**params, "claimed": row.id})
    if row is None:
        return None
    state = CalendarState(
        account_id=row.account_id,
        google_id=row.google_id,
        sync_token=row.sync_token,
        baseline_done=bool(row.baseline_done),
        credentials=row.credentials,
        channel_ok=bool(row.channel_ok) if renew_before is not None else None,
    )
    return Claim(
        id=row.id,
        requested=row.sync_requested,
        owner=owner,
        claimed_at=now,
        calendar=state,
        more_due=bool(row.more_due),
    )


def finish_calendar(
    session: Session, claim: Claim, now: datetime, reconcile_every: float, min_interval: float = 0.0
) -> bool:
    """Record a successful sync: one more run if requests arrived meanwhile, else reconcile later."""
    result = session.execute(
        update(Calendar)
        .where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner)
        .values(**finish_values(claim, now, reconcile_every, min_interval))
    )
    return bool(rows_affected(result))


def finish_values(claim: Claim, now: datetime, reconcile_every: float, min_interval: float = 0.0) -> dict[str, Any]:
    """The calendar's queue fields after a successful sync (for an UPDATE guarded by the lease).

    The one more run waits until `min_interval` after this one began, so a burst that outlasts a
    sync still costs one more call, not one per notification.
    """
    follow_up = max(now, (claim.claimed_at or now) + timedelta(seconds=min_interval))
    return {
        "sync_done": claim.requested,
        "due_at": case(
            (Calendar.sync_requested > claim.requested, follow_up), else_=now + timedelta(seconds=reconcile_every)
        ),
        "next_reconcile_at": now + timedelta(seconds=reconcile_every),
        "lease_owner": None,
        "lease_until": None,
        "error_count": 0,
        "retry_at": None,
        "last_error": None,
        "sync_state": SyncState.SYNCED,
    }


def fail_calendar(session: Session, claim: Claim, now: datetime, *, delay: float, state: str, error: str) -> bool:
    """Record a failed sync: the owed work stays owed, due again after `delay`."""
    retry_at = now + timedelta(seconds=delay)
    result = session.execute(
        update(Calendar)
        .where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner)
        .values(
            error_count=Calendar.error_count + 1,
            retry_at=retry_at,
            due_at=retry_at,
            sync_state=state,
            last_error=error[:2000],
            lease_owner=None,
            lease_until=None,
        )
    )
    return bool(rows_affected(result))


def release_calendar(session: Session, claim: Claim) -> None:
    """Give the work back untouched (shutdown, or a job that must not run now)."""
    session.execute(
        update(Calendar)
        .where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner)
        .values(lease_owner=None, lease_until=None)
    )


def calendar_error_count(session: Session, calendar_id: int) -> int:
    return int(session.scalar(select(Calendar.error_count).where(Calendar.id == calendar_id)) or 0)


def claim_account_list(session: Session, owner: str, now: datetime, lease_seconds: float) -> Claim | None:
    """An active account whose calendar list is due for a refresh, leased to `owner`."""
    claiming_as(session, owner, now)
    row = session.execute(_PICK_LIST, {"now": now, "stale_before": stale_before(now)}).first()
    if row is None:
        return None
    session.execute(
        update(Account)
        .where(Account.id == row.id)
        .values(list_lease_owner=owner, list_lease_until=now + timedelta(seconds=lease_seconds))
    )
    return Claim(id=row.id, requested=row.list_requested, owner=owner, claimed_at=now)


def finish_account_list(session: Session, claim: Claim, now: datetime, reconcile_every: float) -> bool:
    result = session.execute(
        update(Account)
        .where(Account.id == claim.id, Account.list_lease_owner == claim.owner)
        .values(
            list_done=claim.requested,
            list_due_at=case(
                (Account.list_requested > claim.requested, now), else_=now + timedelta(seconds=reconcile_every)
            ),
            list_lease_owner=None,
            list_lease_until=None,
            list_error_count=0,
            last_error=case((Account.status == AccountStatus.ACTIVE, None), else_=Account.last_error),
        )
    )
    return bool(rows_affected(result))


def fail_account_list(session: Session, claim: Claim, now: datetime, *, delay: float, error: str) -> bool:
    result = session.execute(
        update(Account)
        .where(Account.id == claim.id, Account.list_lease_owner == claim.owner)
        .values(
            list_error_count=Account.list_error_count + 1,
            list_due_at=now + timedelta(seconds=delay),
            last_error=error[:1000],
            list_lease_owner=None,
            list_lease_until=None,
        )
    )
    return bool(rows_affected(result))


def release_account_list(session: Session, claim: Claim) -> None:
    session.execute(
        update(Account)
        .where(Account.id == claim.id, Account.list_lease_owner == claim.owner)
        .values(list_lease_owner=None, list_lease_until=None)
    )


def account_list_error_count(session: Session, account_id: int) -> int:
    return int(session.scalar(select(Account.list_error_count).where(Account.id == account_id)) or 0)


# The claim, built once (SQLAlchemy's compiled cache then serves every call) -------------------
_CAL, _ACC, _CH = Calendar.__table__, Account.__table__, Channel.__table__
_NOW = bindparam("now", type_=_CAL.c.due_at.type)


def _claimable(cal: Any, acct: Any) -> tuple[ColumnElement[bool], ...]:
    """A calendar that may be claimed now: due, not removed, its lease free, its account active."""
    return (
        cal.c.due_at <= _NOW,
        cal.c.removed_at.is_(None),
        lease_is_free(cal.c.lease_owner, cal.c.lease_until, _NOW),
        acct.c.status == AccountStatus.ACTIVE,
    )


def _claimable_from(name: str) -> tuple[Any, Any]:
    cal, acct = _CAL.alias(f"{name}_cal"), _ACC.alias(f"{name}_acct")
    return cal, select(cal.c.id).select_from(cal.join(acct, acct.c.id == cal.c.account_id)).where(
        *_claimable(cal, acct)
    )


_pick, _pick_query = _claimable_from("pick")
_PICK = (
    _pick_query.order_by(_pick.c.due_at, _pick.c.id)
    .limit(1)
    .with_for_update(skip_locked=True, of=_pick)
    .scalar_subquery()
)
_other, _other_query = _claimable_from("other")
_RETURNED = (
    _CAL.c.id,
    _CAL.c.sync_requested,
    _CAL.c.account_id,
    _CAL.c.google_id,
    _CAL.c.sync_token,
    _CAL.c.baseline_done,
    select(_ACC.c.credentials)
    .where(_ACC.c.id == _CAL.c.account_id)
    .correlate(_CAL)
    .scalar_subquery()
    .label("credentials"),
    _other_query.where(_other.c.id != _CAL.c.id).correlate(_CAL).exists().label("more_due"),
    select(_CH.c.id)
    .where(
        _CH.c.calendar_id == _CAL.c.id,
        _CH.c.kind == ChannelKind.EVENTS,
        _CH.c.status == ChannelStatus.ACTIVE,
        _CH.c.expires_at > bindparam("horizon", type_=_CH.c.expires_at.type),
    )
    .correlate(_CAL)
    .exists()
    .label("channel_ok"),
)
_SET_LEASE = {"lease_owner": bindparam("owner"), "lease_until": bindparam("until", type_=_CAL.c.lease_until.type)}
_CLAIM = update(_CAL).where(_CAL.c.id == _PICK).values(**_SET_LEASE).returning(*_RETURNED)
_PEEK = select(*_RETURNED).where(_CAL.c.id == _PICK)
_LEASE = update(_CAL).where(_CAL.c.id == bindparam("claimed")).values(**_SET_LEASE)


_PICK_LIST = (
    select(_ACC.c.id, _ACC.c.list_requested)
    .where(
        _ACC.c.status == AccountStatus.ACTIVE,
        _ACC.c.list_due_at <= _NOW,
        lease_is_free(_ACC.c.list_lease_owner, _ACC.c.list_lease_until, _NOW),
    )
    .order_by(_ACC.c.list_due_at, _ACC.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
