"""The JSON shapes of the read contract, and the queries behind them.

The API, `calsync changes --json` and the outgoing webhooks print the same dicts, so they are
built in one place.
"""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any

from sqlalchemy import Select, bindparam, func, or_, select
from sqlalchemy.orm import Session

from calsync.clock import rfc3339
from calsync.errors import NotFoundError
from calsync.feed.cursor import newest_seq
from calsync.feed.reads import CHANGES_PAGE_BYTES
from calsync.store.db import bytes_before, is_postgres, stored_json_size
from calsync.store.models import Account, Calendar, Channel, Event
from calsync.store.serving import serving_channels

EVENTS_PAGE_SIZE = 1000
EVENTS_PAGE_BYTES = CHANGES_PAGE_BYTES  # an events page holds what a feed page may


class AmbiguousCalendar(ValueError):
    """Two accounts share this calendar id; the caller must name the account."""


def calendar_to_dict(calendar: Calendar, account: Account, channel: Channel | None) -> dict[str, Any]:
    """One entry of `/api/calendars`."""
    return {
        "account": account.email,
        "account_status": account.status,
        "ref": account.ref,
        "calendar_id": calendar.google_id,
        "summary": calendar.summary,
        "sync_state": calendar.sync_state,
        "last_synced_at": rfc3339(calendar.last_synced_at),
        "channel": None if channel is None else {"id": channel.id, "expires_at": rfc3339(channel.expires_at)},
    }


def list_calendars(session: Session) -> list[dict[str, Any]]:
    """Every calendar still in its account's list, with the channel that serves it."""
    rows = session.execute(
        select(Calendar, Account)
        .join(Account, Calendar.account_id == Account.id)
        .where(Calendar.removed_at.is_(None))
        .order_by(Account.email, Calendar.id)
    ).all()
    channels = serving_channels(session, calendar_ids=[cal.id for cal, _ in rows]).calendars
    return [calendar_to_dict(cal, account, channels.get(cal.id)) for cal, account in rows]


def list_accounts(session: Session, ref: str | None = None) -> list[dict[str, Any]]:
    """Every account (or those of one app user's `ref`) with its live calendars, by email."""
    query = select(Account).order_by(Account.email)
    if ref is not None:
        query = query.where(Account.ref == ref)
    accounts = list(session.scalars(query))
    calendars: dict[int, list[dict[str, Any]]] = {a.id: [] for a in accounts}
    if accounts:
        for cal in session.scalars(
            select(Calendar)
            .where(Calendar.account_id.in_(list(calendars)), Calendar.removed_at.is_(None))
            .order_by(Calendar.id)
        ):
            calendars[cal.account_id].append(
                {
                    "calendar_id": cal.google_id,
                    "summary": cal.summary,
                    "sync_state": cal.sync_state,
                    "last_synced_at": rfc3339(cal.last_synced_at),
                }
            )
    return [
        {
            "email": a.email,
            "ref": a.ref,
            "status": a.status,
            "connected_at": rfc3339(a.connected_at),
            "calendars": calendars[a.id],
        }
        for a in accounts
    ]


def find_calendars(
    session: Session, google_id: str, account_email: str | None = None, *, include_removed: bool = True
) -> list[Calendar]:
    """The calendars known under a Google id (one per account sharing it); NotFoundError if none."""
    query = select(Calendar).join(Account, Calendar.account_id == Account.id).where(Calendar.google_id == google_id)
    if account_email is not None:
        query = query.where(Account.email == account_email)
    if not include_removed:
        query = query.where(Calendar.removed_at.is_(None))
    found = list(session.scalars(query.order_by(Calendar.id)))
    if not found:
        owner = f" of account {account_email}" if account_email else ""
        raise NotFoundError(f"no calendar {google_id!r}{owner}")
    return found


def one_calendar(session: Session, google_id: str, account_email: str | None = None) -> Calendar:
    """The single live calendar meant by a Google id, or AmbiguousCalendar when accounts share it."""
    found = find_calendars(session, google_id, account_email, include_removed=False)
    if len(found) > 1:
        raise AmbiguousCalendar(f"calendar {google_id!r} belongs to {len(found)} accounts: add account=EMAIL")
    return found[0]


def calendars_named(session: Session, name: str, account_email: str | None = None) -> list[Calendar]:
    """The live calendars an operator means by `name`: by Google id, or failing that by title (any case).

    NotFoundError when `account_email` names no account; an empty list when no calendar matches.
    """
    query = (
        select(Calendar)
        .join(Account, Account.id == Calendar.account_id)
        .where(Calendar.removed_at.is_(None))
        .order_by(Calendar.id)
    )
    if account_email:
        if session.scalar(select(Account.id).where(Account.email == account_email)) is None:
            raise NotFoundError(f"no account {account_email!r} (see `calsync status`)")
        query = query.where(Account.email == account_email)
    found = list(session.scalars(query.where(Calendar.google_id == name)))
    return found or list(session.scalars(query.where(func.lower(Calendar.summary) == name.lower())))


def events_page(
    session: Session, calendar: Calendar, page_token: str | None, page_size: int = EVENTS_PAGE_SIZE
) -> dict[str, Any]:
    """A page of the mirrored events in row order; the page token is the last row id, opaque.

    `as_of_seq` is the newest change the page shows: read in the caller's snapshot
    (`calsync.store.db.reading`), so a consumer that follows the feed after the smallest `as_of_seq`
    of its pages misses nothing that happened while it paged. A page ends early once the events
    before its last hold `EVENTS_PAGE_BYTES` (never before its first): a thousand meetings with a
    thousand guests each were one answer of about 180 MB, built in memory.
    """
    after = decode_page_token(page_token) if page_token else 0
    seq = newest_seq(session)
    params = {"calendar": calendar.id, "after": after, "limit": page_size + 1, "budget": EVENTS_PAGE_BYTES}
    rows = session.execute(_events_page_query(is_postgres(session)), params).all()
    wanted = rows[0].wanted if rows else 0  # the rows the page wanted before the cut
    more = wanted > page_size or len(rows) < wanted
    rows = rows[:page_size]
    return {
        "items": [row.data for row in rows],
        "nextPageToken": encode_page_token(rows[-1].id) if more else None,
        "as_of_seq": seq,
    }


@functools.cache
def _events_page_query(postgres: bool) -> Select[Any]:
    """`events_page`'s statement, built once per engine: the page's ids and sizes first, then, in the
    same statement, only the events whose predecessors on the page stay under the byte budget."""
    first = (
        select(Event.id, stored_json_size(Event.data, postgres).label("size"))
        .where(
            Event.calendar_id == bindparam("calendar"),
            Event.id > bindparam("after"),
            # Deleted events are not in the mirror; a cancelled occurrence of a series is kept.
            or_(Event.status != "cancelled", Event.recurring_event_id.is_not(None)),
        )
        .order_by(Event.id)
        .limit(bindparam("limit"))
        .subquery()
    )
    sized = bytes_before(first, "id")
    return (
        select(Event.id, Event.data, sized.c.wanted)
        .join(sized, sized.c.id == Event.id)
        .where(sized.c.before_it < bindparam("budget"))
        .order_by(Event.id)
    )


_MAX_EVENT_ID = 2**31 - 1  # events.id is an INTEGER on PostgreSQL


def encode_page_token(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"e:{row_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The row id inside a page token; ValueError for anything calsync did not hand out."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as err:
        raise ValueError("malformed pageToken") from err
    prefix, _, number = text.partition(":")
    # ASCII digits of an id the events table can hold: anything else is no token calsync made.
    if prefix != "e" or not (number.isascii() and number.isdigit()) or len(number) > 10 or int(number) > _MAX_EVENT_ID:
        raise ValueError("malformed pageToken")
    return int(number)
