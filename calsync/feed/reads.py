"""The feed's read shapes: the rows of `/api/changes`, `calsync changes --json` and webhook messages.

They print the same dicts, so they are built in one place.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, select
from sqlalchemy.orm import Session

from calsync.clock import rfc3339
from calsync.feed.cursor import check_cursor, newest_seq
from calsync.store.db import bytes_before, is_postgres, stored_json_size
from calsync.store.models import Account, Calendar, Change
from calsync.store.states import LIFECYCLE_OF_CALENDAR, ChangeType, Origin

CHANGES_DEFAULT_LIMIT = 100
CHANGES_MAX_LIMIT = 1000
# A page also ends once the rows before its last one hold this many bytes of stored event JSON (so
# never before its first row): a row holds the event twice, and a thousand rows of a meeting with a
# thousand guests made one answer of 180 MB, all of it in the web process's memory at once.
CHANGES_PAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ChangesPage:
    changes: list[dict[str, Any]]
    next: int

    def to_dict(self) -> dict[str, Any]:
        return {"changes": self.changes, "next": self.next}


def change_to_dict(change: Change, account_email: str, calendar_google_id: str | None) -> dict[str, Any]:
    """One entry of `/api/changes`; a lifecycle row has no event, and says what it adds in keys of its own."""
    kind = change.kind
    row = {
        "seq": change.seq,
        "type": change.type,
        "account": account_email,
        "ref": change.ref,
        "calendar_id": calendar_google_id,
        "event_id": change.event_id,
        "change": kind,
        "fields": list(change.fields or []),
        "before": change.before if kind is not None else None,
        "after": change.after if kind is not None else None,
        "detected_at": rfc3339(change.detected_at),
    }
    if kind is None:
        row.update(lifecycle_details(change))
    else:
        row.update(origin_details(change))
    return row


def origin_details(change: Change) -> dict[str, Any]:
    """Who made an event row's change: `api` rows (writes through calsync) also carry the app's key."""
    origin = change.origin or Origin.GOOGLE
    if origin == Origin.API:
        return {"origin": origin, "idempotency_key": change.idempotency_key}
    return {"origin": origin}


def parse_origin(raw: str) -> Origin:
    """`api` or `google`; ValueError naming the choices."""
    try:
        return Origin(raw)
    except ValueError:
        raise ValueError(f"unknown origin {raw!r}; use {' or '.join(o.value for o in Origin)}") from None


def feed_rows() -> Select[Change, str, str]:
    """Change rows with what their JSON names: the account's email and the calendar's Google id."""
    return (
        select(Change, Account.email, Calendar.google_id)
        .join(Account, Change.account_id == Account.id)
        .outerjoin(Calendar, Change.calendar_id == Calendar.id)
    )


def parse_types(raw: str) -> list[ChangeType]:
    """`event.created,event.updated` as types; ValueError naming an unknown one."""
    wanted = [part.strip() for part in raw.split(",")]
    known = {t.value for t in ChangeType}
    for name in wanted:
        if name not in known:
            raise ValueError(f"unknown type {name!r}; use {', '.join(t.value for t in ChangeType)}")
    return [ChangeType(name) for name in dict.fromkeys(wanted)]


def changes_page(
    session: Session,
    *,
    after: int,
    limit: int,
    calendars: Sequence[Calendar] | None = None,
    types: Collection[str] | None = None,
    origin: Origin | None = None,
) -> ChangesPage:
    """Changes with seq > `after`, oldest first; `next` is the last seq returned, or, on a page that
    is not full, the feed's newest seq when the page was read (else `after`).

    With `types`, only rows of those types are returned, and `next` still moves past the rows left
    out; `origin` likewise keeps the rows of one origin (lifecycle rows count as `google`: only
    writes made through calsync are `api`). A page that is not full held every wanted row up to the
    feed's newest seq, so `next` moves past the rows its filter left out up to there: a filtered
    consumer whose rows were rare kept an old cursor, and once retention passed it got 410
    `cursor_expired` though none of its rows had been deleted. A cursor behind rows that retention
    deleted raises CursorExpired: the page would silently lack them. A page whose rows pass
    `CHANGES_PAGE_BYTES` ends early, its `next` the last seq returned, as after a full page.
    """
    # Read first: every row up to it is committed, so the query below sees them all.
    newest = newest_seq(session)
    params: dict[str, Any] = {"after": after, "limit": limit, "budget": CHANGES_PAGE_BYTES}
    if calendars is not None:
        params["calendars"] = [c.id for c in calendars]
    if types is not None:
        params["types"] = sorted(types)
    if origin is not None:
        params["origin"] = origin.value
    query = _page_query(is_postgres(session), calendars is not None, types is not None, origin is not None)
    rows = session.execute(query, params).all()
    items = [change_to_dict(change, email, google_id) for change, email, google_id, _ in rows]
    found = rows[0][3] if rows else 0  # the rows the page wanted before the cut
    # After the rows: the mark only grows and moves with its deletions, so a mark read now that
    # is not past `after` proves that the rows above were all there when they were read.
    check_cursor(session, after)
    next_seq = items[-1]["seq"] if items else after
    full = len(items) >= limit or len(items) < found  # cut by its size: more may follow, as after a full page
    return ChangesPage(items, next_seq if full else max(next_seq, newest))


@functools.cache
def _page_query(postgres: bool, by_calendar: bool, by_type: bool, by_origin: bool) -> Select[Any]:
    """`changes_page`'s statement, built once per form (building it cost more than running it).

    The page's seqs and sizes first (at most `limit`), then, in the same statement, only the rows
    whose predecessors on the page stay under the byte budget: rows past the cut are never read.
    """
    wanted = select(Change.seq, _stored_size(postgres).label("size")).where(Change.seq > bindparam("after"))
    if by_calendar:
        wanted = wanted.where(Change.calendar_id.in_(bindparam("calendars", expanding=True)))
    if by_type:
        wanted = wanted.where(Change.type.in_(bindparam("types", expanding=True)))
    if by_origin:
        wanted = wanted.where(Change.origin == bindparam("origin"))
    first = wanted.order_by(Change.seq).limit(bindparam("limit")).subquery()
    sized = bytes_before(first, "seq")
    return (
        feed_rows()
        .add_columns(sized.c.wanted)
        .join(sized, sized.c.seq == Change.seq)
        .where(sized.c.before_it < bindparam("budget"))
        .order_by(Change.seq)
    )


def _stored_size(postgres: bool) -> ColumnElement[int]:
    """A row's stored event JSON in bytes, before and after."""
    return stored_json_size(Change.before, postgres) + stored_json_size(Change.after, postgres)


def lifecycle_details(change: Change) -> dict[str, Any]:
    """The keys a lifecycle row adds to its API row: `summary` for a calendar, `reason` and
    `reconnect` when an account needs consent again."""
    stored = change.after or {}
    if change.type in LIFECYCLE_OF_CALENDAR:
        return {"summary": stored.get("summary")}
    if change.type == ChangeType.ACCOUNT_REAUTH_REQUIRED:
        return {"reason": stored.get("reason"), "reconnect": reconnect_hint(change.ref)}
    return {}


def reconnect_hint(ref: str | None) -> str:
    """How the account's user gets connected again, for the app (or the operator) reading the row."""
    if ref is None:
        return "The user must consent again: send them to /connect."
    return (
        f"Create a connect session for the same ref (POST /api/connect-sessions with "
        f'{{"ref": {json.dumps(ref, ensure_ascii=False)}, "return_to": ...}}) and send the user to its url; '
        "when they come back to return_to with connection=..., confirm it from your server for the signed-in "
        'user: POST /api/connect-sessions/confirm with {"connection": ..., "ref": <that user\'s ref>}.'
    )


_WRITTEN_SINCE = (
    select(Change.event_id, Change.after, Change.detected_at)
    .where(
        Change.calendar_id == bindparam("calendar"),
        Change.seq > bindparam("after"),
        Change.origin == Origin.API,
        Change.event_id.is_not(None),
    )
    .order_by(Change.seq)
)


def written_through_api_since(session: Session, calendar_id: int, after: int) -> dict[str, str | None]:
    """Events of a calendar that calsync wrote to Google after feed position `after`, each with the
    time of its last such write as an RFC 3339 `updated`: the version written's own, or for a
    deletion the moment it was committed (no version of a deleted event is newer, but one restored).

    A sync listing that began at `after` may predate those writes (calsync.sync.mirror). The index on
    (calendar_id, seq) reads only the rows since `after`.
    """
    written: dict[str, str | None] = {}
    rows = session.execute(_WRITTEN_SINCE, {"calendar": calendar_id, "after": after})
    for event_id, version, detected_at in rows:
        updated = version.get("updated") if isinstance(version, dict) else rfc3339(detected_at)
        written[str(event_id)] = updated if isinstance(updated, str) else None
    return written
