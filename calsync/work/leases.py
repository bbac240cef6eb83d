"""Claiming work with leases: calendars to sync and calendar lists to refresh.

A claim takes the oldest due row whose lease is free, in one short transaction: on PostgreSQL with
`FOR UPDATE SKIP LOCKED` so concurrent workers take different rows; on SQLite BEGIN IMMEDIATE already
serialises writers. A lease is free once it ran out or once its holder stopped beating
(`calsync.store.liveness`): a killed worker's work is taken over within seconds, a slow one keeps
it. The claimer remembers `requested` at claim time; finishing sets `done` to that value, so
requests that came in during the work leave exactly one more run owed.

Calendars are claimed most urgent first (`due_priority`: notification syncs, renewals, first syncs,
reconciliations), and only in the classes the quota budget admits now, so a notification that
arrives behind thousands of queued first syncs is the next calendar claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, bindparam, case, select, update
from sqlalchemy.orm import Session

from calsync.clock import utc
from calsync.feed.cursor import newest_seq_value
from calsync.store.db import is_postgres, rows_affected
from calsync.store.liveness import claiming_as, lease_is_free, stale_before
from calsync.store.models import Account, Calendar, Channel
from calsync.store.states import AccountStatus, ChannelKind, ChannelStatus, Priority, SyncState
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
    priority: Priority = Priority.NOTIFICATION  # why the work is owed: the budget's class for its calls
    created_at: datetime | None = None
    last_changed_at: datetime | None = None


def claim_calendar(
    session: Session,
    owner: str,
    now: datetime,
    lease: timedelta,
    renew_before: timedelta | None = None,
    ceiling: Priority = Priority.RECONCILE,
    floor: Priority = Priority.WRITE,
) -> Claim | None:
    """The most urgent calendar owing a sync, longest waiting first, leased to `owner`; None when nothing is due.

    Only classes from `floor` to `ceiling` (the quota budget's answer) are taken. One statement takes the
    lease and returns the job's starting state, whether another calendar is waiting too, and
    (given `renew_before`) whether an active channel outlasts the renewal window.
    """
    claiming_as(session, owner, now)
    params = {
        **_claimable_params(now, ceiling, floor),
        "owner": owner,
        "until": now + lease,
        "horizon": now + (renew_before or timedelta(0)),
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
        created_at=utc(row.created_at),
        last_changed_at=utc(row.last_changed_at),
        activity=row.activity,
        feed_seq=row.feed_seq,
    )
    return Claim(
        id=row.id,
        requested=row.sync_requested,
        owner=owner,
        claimed_at=now,
        calendar=state,
        more_due=bool(row.more_due),
        priority=Priority(row.due_priority),
        created_at=utc(row.created_at),
        last_changed_at=utc(row.last_changed_at),
    )


@dataclass(frozen=True)
class MayBeDue:
    """What a claim now could find: a calendar to sync, a calendar list to refresh (each never False
    when there is one; the claim itself checks again)."""

    calendars: bool
    lists: bool

    def __bool__(self) -> bool:
        return self.calendars or self.lists


def may_be_due(session: Session, now: datetime, ceiling: Priority) -> MayBeDue:
    """Whether a claim now could find work, of each kind.

    A read: on SQLite it runs before a claim's transaction, on no lock, so a worker thread that
    wakes with nothing to take (the usual case once a job is done) does not take the file's one
    write lock, which the notification intake waits for, and a claim with no list due does not
    look for one while it holds that lock.
    """
    row = session.execute(_MAY_BE_DUE, _claimable_params(now, ceiling, Priority.WRITE)).one()
    return MayBeDue(calendars=bool(row.calendars), lists=bool(row.lists))


def passed_by(session: Session, now: datetime, ceiling: Priority, tried: list[tuple[Priority, Priority]]) -> bool:
    """PostgreSQL, after claims that found nothing: whether one of them had work to take all the same,
    a row that SKIP LOCKED passed by because another transaction held it.

    A receiver marking an owed calendar owed once more holds its row for its statement and sends no
    NOTIFY (the work was owed already); a claim made meanwhile spent the wake-up that came with the
    work, and nothing else would make this process look before its next poll. The same reads as the
    claims (`tried`: each calendar claim's ceiling and floor, in order; lists as `claim_account_list`
    takes them at `ceiling`), without their locks.
    """
    lists = _LIST_WAITING if ceiling >= Priority.RECONCILE else _LIST_OWED_WAITING
    (upto, floor), *more = tried  # the lists ride with the first (every pass tries one calendar claim at least)
    if session.execute(_PASSED_BY[lists], _claimable_params(now, upto, floor)).scalar():
        return True
    return any(session.execute(_CALENDAR_WAITING, _claimable_params(now, *r)).scalar() for r in more)


def claim_this_calendar(
    session: Session, calendar_id: int, requested: int, owner: str, now: datetime, lease: timedelta
) -> Claim | None:
    """One named calendar leased to `owner` (an operator's `calsync sync`), due or not; None while another holds it."""
    free = lease_is_free(Calendar.lease_owner, Calendar.lease_until, now, stale_before(now))
    taken = session.execute(
        update(Calendar).where(Calendar.id == calendar_id, free).values(lease_owner=owner, lease_until=now + lease)
    )
    return Claim(id=calendar_id, requested=requested, owner=owner) if rows_affected(taken) else None


def finish_calendar(
    session: Session, claim: Claim, now: datetime, reconcile_in: timedelta, min_interval: timedelta = timedelta(0)
) -> bool:
    """Record a successful sync: one more run if requests arrived meanwhile, else reconcile later."""
    params = {
        "claimed_id": claim.id,
        "claimed_by": claim.owner,
        **finish_params(claim, now, reconcile_in, min_interval),
    }
    return bool(rows_affected(session.execute(_FINISH_CALENDAR, params)))


def finish_params(
    claim: Claim, now: datetime, reconcile_in: timedelta, min_interval: timedelta = timedelta(0)
) -> dict[str, Any]:
    """The values of `FINISHED`'s parameters after a successful sync (for an UPDATE guarded by the lease).

    The one more run waits until `min_interval` after this one began, so a burst that outlasts a
    sync still costs one more call, not one per notification; it is owed to a notification. Else
    the next sync is the reconciliation, `reconcile_in` from now (see calsync.work.quota).
    """
    return {
        "claimed_requested": claim.requested,
        "follow_up_at": max(now, (claim.claimed_at or now) + min_interval),
        "reconcile_at": now + reconcile_in,
    }


def fail_calendar(session: Session, claim: Claim, now: datetime, *, delay: float, state: SyncState, error: str) -> bool:
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


def defer_calendar(session: Session, claim: Claim, until: datetime) -> None:
    """Give the work back for later, untouched otherwise: the quota budget has no room for it yet."""
    session.execute(
        update(Calendar)
        .where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner)
        .values(lease_owner=None, lease_until=None, due_at=until)
    )


def put_off_in_turn(
    session: Session, refused: Claim, account_id: int, first: datetime, spacing: timedelta, now: datetime
) -> int:
    """A claim its user's budget refused (put off to `first`): the user's other calendars due by then,
    of its class or a less urgent one, come due one call apart after it, in the order claims would
    take them (up to PUT_OFF_MAX); how many were put off.

    Left due, each would be claimed at `first` and refused in turn, a write transaction (on SQLite,
    the file's one write lock) for every call the user cannot make yet. On PostgreSQL a calendar
    another transaction holds is passed by (SKIP LOCKED): the claim must not wait behind a sync.
    """
    pick = _PUT_OFF_PICK_PG if is_postgres(session) else _PUT_OFF_PICK
    params = {
        "account_id": account_id,
        "refused": refused.id,
        "class_from": int(refused.priority),
        "first": first,
        "now": now,
        "stale_before": stale_before(now),
    }
    ids = session.scalars(pick, params).all()
    if ids:
        session.execute(_PUT_OFF, [{"put_off": id_, "due": first + spacing * k} for k, id_ in enumerate(ids, 1)])
    return len(ids)


def release_calendar(session: Session, claim: Claim) -> None:
    """Give the work back untouched (shutdown, or a job that must not run now)."""
    session.execute(
        update(Calendar)
        .where(Calendar.id == claim.id, Calendar.lease_owner == claim.owner)
        .values(lease_owner=None, lease_until=None)
    )


def release_held(session: Session, owner: str) -> int:
    """Every calendar and calendar-list lease `owner` holds, given back untouched.

    For a worker thread whose pass failed (the database went away): a claim whose COMMIT reached
    the database but whose answer was lost leased a calendar to a thread that does not know it, and
    whose worker goes on beating, so nobody took it until the lease ran out (minutes of changes
    held back). A thread holds nothing between jobs, so all it holds then is let go of."""
    calendars = session.execute(
        update(Calendar).where(Calendar.lease_owner == owner).values(lease_owner=None, lease_until=None)
    )
    lists = session.execute(
        update(Account).where(Account.list_lease_owner == owner).values(list_lease_owner=None, list_lease_until=None)
    )
    return rows_affected(calendars) + rows_affected(lists)


def calendar_error_count(session: Session, calendar_id: int) -> int:
    return int(session.scalar(select(Calendar.error_count).where(Calendar.id == calendar_id)) or 0)


def claim_account_list(
    session: Session, owner: str, now: datetime, lease: timedelta, ceiling: Priority = Priority.RECONCILE
) -> Claim | None:
    """An active account whose calendar list is due for a refresh, leased to `owner`.

    A refresh owed to a notification (or to a new connection) is urgent; a periodic one is a
    reconciliation, taken only when the budget admits those.
    """
    claiming_as(session, owner, now)
    pick = _PICK_LIST if ceiling >= Priority.RECONCILE else _PICK_LIST_OWED
    row = session.execute(pick, {"now": now, "stale_before": stale_before(now)}).first()
    if row is None:
        return None
    session.execute(_LEASE_LIST, {"claimed": row.id, "owner": owner, "until": now + lease})
    owed = row.list_requested > row.list_done
    return Claim(
        id=row.id,
        requested=row.list_requested,
        owner=owner,
        claimed_at=now,
        priority=Priority.NOTIFICATION if owed else Priority.RECONCILE,
        created_at=utc(row.connected_at or row.created_at),
    )


def defer_account_list(session: Session, claim: Claim, until: datetime) -> None:
    """Give the refresh back for later: the quota budget has no room for it yet."""
    session.execute(
        update(Account)
        .where(Account.id == claim.id, Account.list_lease_owner == claim.owner)
        .values(list_lease_owner=None, list_lease_until=None, list_due_at=until)
    )


def finish_account_list(session: Session, claim: Claim, now: datetime, reconcile_in: timedelta) -> bool:
    result = session.execute(
        update(Account)
        .where(Account.id == claim.id, Account.list_lease_owner == claim.owner)
        .values(
            list_done=claim.requested,
            list_due_at=case((Account.list_requested > claim.requested, now), else_=now + reconcile_in),
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


def _claimable_params(now: datetime, ceiling: Priority, floor: Priority) -> dict[str, Any]:
    """The parameters of `_claimable`: the classes a claim may take, and when it is made."""
    return {"ceiling": int(ceiling), "floor": int(floor), "now": now, "stale_before": stale_before(now)}


def _claimable(cal: Any, acct: Any) -> tuple[ColumnElement[bool], ...]:
    """A calendar that may be claimed now: due, in a class the budget admits, not removed, its
    lease free, its account active."""
    return (
        cal.c.due_priority <= bindparam("ceiling", type_=cal.c.due_priority.type),
        cal.c.due_priority >= bindparam("floor", type_=cal.c.due_priority.type),
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
    _pick_query.order_by(_pick.c.due_priority, _pick.c.due_at, _pick.c.id)
    .limit(1)
    .with_for_update(skip_locked=True, of=_pick)
    .scalar_subquery()
)
_other, _other_query = _claimable_from("other")
_RETURNED = (
    _CAL.c.id,
    _CAL.c.sync_requested,
    _CAL.c.due_priority,
    _CAL.c.created_at,
    _CAL.c.last_changed_at,
    _CAL.c.activity,
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
    newest_seq_value().label("feed_seq"),  # read with the claim: no round trip of its own before the listing
)
_SET_LEASE = {"lease_owner": bindparam("owner"), "lease_until": bindparam("until", type_=_CAL.c.lease_until.type)}
_CLAIM = update(_CAL).where(_CAL.c.id == _PICK).values(**_SET_LEASE).returning(*_RETURNED)
_PEEK = select(*_RETURNED).where(_CAL.c.id == _PICK)
_LEASE = update(_CAL).where(_CAL.c.id == bindparam("claimed")).values(**_SET_LEASE)


_LIST_DUE = (
    _ACC.c.status == AccountStatus.ACTIVE,
    _ACC.c.list_due_at <= _NOW,
    lease_is_free(_ACC.c.list_lease_owner, _ACC.c.list_lease_until, _NOW),
)
_PICK_LIST = (
    select(_ACC.c.id, _ACC.c.list_requested, _ACC.c.list_done, _ACC.c.connected_at, _ACC.c.created_at)
    .where(*_LIST_DUE)
    .order_by(_ACC.c.list_due_at, _ACC.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_LIST_OWED = _ACC.c.list_requested > _ACC.c.list_done  # a refresh owed to a notification or a new connection
_PICK_LIST_OWED = _PICK_LIST.where(_LIST_OWED)
_LEASE_LIST = (
    update(_ACC)
    .where(_ACC.c.id == bindparam("claimed"))
    .values(
        list_lease_owner=bindparam("owner"), list_lease_until=bindparam("until", type_=_ACC.c.list_lease_until.type)
    )
)
# Whether a claim could find anything: a calendar claimable in the classes from WRITE to the
# ceiling, or a calendar list due (owed or periodic; the claim itself tells those apart).
_any, _any_query = _claimable_from("any")
_LIST_WAITING = select(_ACC.c.id).where(*_LIST_DUE).exists()
_MAY_BE_DUE = select(_any_query.exists().label("calendars"), _LIST_WAITING.label("lists"))
# `passed_by`'s reads: the claims' picks as plain reads (a read waits for no row lock).
_CALENDAR_WAITING = select(_any_query.exists())
_LIST_OWED_WAITING = select(_ACC.c.id).where(*_LIST_DUE, _LIST_OWED).exists()
_PASSED_BY = {lists: select(_any_query.exists() | lists) for lists in (_LIST_WAITING, _LIST_OWED_WAITING)}

PUT_OFF_MAX = 100  # a refused claim puts off at most this many of its user's other calendars
_PUT_OFF_PICK = (
    select(_CAL.c.id)
    .where(
        _CAL.c.account_id == bindparam("account_id"),
        _CAL.c.id != bindparam("refused"),
        _CAL.c.due_priority >= bindparam("class_from", type_=_CAL.c.due_priority.type),
        _CAL.c.due_at <= bindparam("first", type_=_CAL.c.due_at.type),
        _CAL.c.removed_at.is_(None),
        lease_is_free(_CAL.c.lease_owner, _CAL.c.lease_until, _NOW),
    )
    .order_by(_CAL.c.due_priority, _CAL.c.due_at, _CAL.c.id)
    .limit(PUT_OFF_MAX)
)
_PUT_OFF_PICK_PG = _PUT_OFF_PICK.with_for_update(skip_locked=True)
_PUT_OFF = (
    update(_CAL)
    .where(_CAL.c.id == bindparam("put_off"), _CAL.c.due_at < bindparam("due", type_=_CAL.c.due_at.type))
    .values(due_at=bindparam("due", type_=_CAL.c.due_at.type))
)


_MORE = _CAL.c.sync_requested > bindparam("claimed_requested", type_=_CAL.c.sync_requested.type)
_RECONCILE_AT = bindparam("reconcile_at", type_=_CAL.c.next_reconcile_at.type)
# A finished sync's queue fields, built once: the sync's last page writes them in its own statement,
# and building these expressions anew cost more than running that statement.
FINISHED: dict[str, Any] = {
    "sync_done": bindparam("claimed_requested", type_=_CAL.c.sync_done.type),
    "due_at": case((_MORE, bindparam("follow_up_at", type_=_CAL.c.due_at.type)), else_=_RECONCILE_AT),
    "due_priority": case((_MORE, int(Priority.NOTIFICATION)), else_=int(Priority.RECONCILE)),
    "next_reconcile_at": _RECONCILE_AT,
    "lease_owner": None,
    "lease_until": None,
    "error_count": 0,
    "retry_at": None,
    "last_error": None,
    "sync_state": SyncState.SYNCED,
}
_FINISH_CALENDAR = (
    update(_CAL)
    .where(_CAL.c.id == bindparam("claimed_id"), _CAL.c.lease_owner == bindparam("claimed_by"))
    .values(**FINISHED)
)
