"""An account's calendar list: which of its Google calendars calsync mirrors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from calsync.accounts.connected import (
    load_credentials,
    mark_reauth_required,
    save_if_refreshed,
)
from calsync.errors import AuthRevoked, LeaseLost, NotFoundError
from calsync.feed.append import append_changes
from calsync.feed.lifecycle import calendar_changes
from calsync.google.calendar import GoogleCalendar
from calsync.runtime import Runtime
from calsync.store.db import rows_affected, transaction
from calsync.store.models import Account, Calendar
from calsync.store.owed import owe_sync
from calsync.store.states import ChangeType, Priority


@dataclass(frozen=True)
class CalendarListResult:
    """Calendar row ids: `added` (new or back on the list), `removed` (gone from it), `kept`."""

    added: list[int]
    removed: list[int]
    kept: list[int]


def refresh_calendar_list(
    runtime: Runtime, account_id: int, priority: Priority = Priority.NOTIFICATION, *, lease_owner: str | None = None
) -> CalendarListResult:
    """Read the account's calendar list from Google and mirror it in Calendar rows, in one transaction.

    New calendars (and ones back on the list) ask for a sync; removed ones leave the work queue but
    keep their changes. Both are announced in the feed (`calendar.added`, `calendar.removed`) in the
    same commit. Channels are the caller's business: it opens and stops them from the result.

    With `lease_owner` (a worker's job), the commit first extends the list's lease, and writes
    nothing (LeaseLost) if the lease has passed to another worker: a refresh whose listing outlived
    its lease would otherwise commit beside the new holder's, each announcing the same change.
    """
    with runtime.sessions() as session:
        account = session.get(Account, account_id)
        if account is None:
            raise NotFoundError(f"no account with id {account_id}")
        creds = load_credentials(runtime, account)
    token_before = creds.token
    try:
        budget = runtime.budget.spender(account_id, priority)
        entries = GoogleCalendar(creds, runtime.settings.calendar_api_endpoint, budget=budget).list_calendars()
    except AuthRevoked as err:
        with transaction(runtime.sessions) as session:
            mark_reauth_required(session, account_id, str(err), runtime.clock.now())
        raise
    with transaction(runtime.sessions) as session:
        now = runtime.clock.now()
        if lease_owner is not None and not _extend_lease(
            session, account_id, lease_owner, now + runtime.settings.lease
        ):
            raise LeaseLost(f"account {account_id}: calendar-list lease no longer held by {lease_owner}")
        result = _apply_list(session, account_id, [e for e in entries if not e.get("deleted")], now)
        save_if_refreshed(session, runtime, account_id, creds, token_before)
        append_changes(
            session,
            [
                *calendar_changes(session, ChangeType.CALENDAR_ADDED, result.added),
                *calendar_changes(session, ChangeType.CALENDAR_REMOVED, result.removed),
            ],
            now,
        )
    return result


def _extend_lease(session: Session, account_id: int, owner: str, until: datetime) -> bool:
    held = session.execute(
        update(Account)
        .where(Account.id == account_id, Account.list_lease_owner == owner)
        .values(list_lease_until=until)
    )
    return bool(rows_affected(held))


def _apply_list(session: Session, account_id: int, entries: list[dict[str, Any]], now: datetime) -> CalendarListResult:
    existing = {c.google_id: c for c in session.scalars(select(Calendar).where(Calendar.account_id == account_id))}
    added: list[Calendar] = []
    returned: list[Calendar] = []  # back in the list after it had dropped them
    kept: list[Calendar] = []
    listed: set[str] = set()
    for entry in entries:
        google_id = entry["id"]
        listed.add(google_id)
        cal = existing.get(google_id)
        if cal is None:
            cal = Calendar(
                account_id=account_id, google_id=google_id, sync_requested=1, sync_done=0, due_at=now, created_at=now
            )
            session.add(cal)
            added.append(cal)
        elif cal.removed_at is not None:
            cal.removed_at = None
            returned.append(cal)
            added.append(cal)
        else:
            kept.append(cal)
        cal.summary = entry.get("summaryOverride") or entry.get("summary")
        cal.time_zone = entry.get("timeZone")
        cal.access_role = entry.get("accessRole")
        cal.primary = bool(entry.get("primary", False))
    removed = [c for gid, c in existing.items() if gid not in listed and c.removed_at is None]
    for cal in removed:
        cal.removed_at = now
        cal.due_at = None
    session.flush()
    if returned:
        session.execute(
            update(Calendar).where(Calendar.id.in_([c.id for c in returned])).values(**owe_sync(now, at_once=True))
        )
    return CalendarListResult(added=[c.id for c in added], removed=[c.id for c in removed], kept=[c.id for c in kept])
