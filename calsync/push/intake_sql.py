"""What one batch of notifications does to the database: decide each outcome, then write it all.

These few statements run for every batch the receiver commits, so they are written against the
driver's cursor of a pooled connection (`Engine.raw_connection`): SQLAlchemy's execution layer
costs several times what the statements themselves do, and would be most of a notification's
price. The SQL is the same on both engines but for how the batch is passed: SQLite takes one
executemany per table, PostgreSQL one statement for the whole batch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Dialect, text
from sqlalchemy.orm import Session

from calsync.store.db import rows_affected
from calsync.store.models import Notification
from calsync.store.owed import owe_list_sql, owe_sync_sql
from calsync.store.states import (
    LIVE_CHANNEL,
    NOT_ACCEPTED_NOTIFICATION,
    AccountStatus,
    ChannelKind,
    ChannelStatus,
    NotificationOutcome,
    sql_list,
)
from calsync.wakeup import CHANNEL as WAKEUP_CHANNEL

# How far above a channel's high-water mark a message number may be and still move it. Google's numbers
# start at 1 (the sync message) and grow by small steps; a number beyond this came from someone who holds
# the channel's token but not Google's counter (a leaked token), and moving the mark there would make every
# later real message look like a duplicate. Such a message still owes a sync (as any accepted message
# does), but leaves the mark where it was.
MAX_STEP = 10_000
# Only numbers this close below the mark are duplicates (a redelivery, or an older message overtaken by
# the one that owed the sync). With the window as wide as MAX_STEP, one forged message at the mark plus
# MAX_STEP made the next ten thousand real ones "duplicates", and their changes waited for the
# reconciliation. A real message farther below the mark now owes a sync: at worst one sync too many.
DUPLICATE_WINDOW = 100


@dataclass(frozen=True)
class Push:
    """The X-Goog-* headers of one notification, parsed."""

    channel_id: str
    state: str
    message_number: int
    resource_id: str | None
    token: str | None


def _held_lock() -> Any:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class Item:
    """One notification waiting in the intake, and what became of it."""

    push: Push | None  # None: malformed, only logged
    headers: dict[str, str]
    received_at: datetime
    outcome: NotificationOutcome | None = None  # decided by its batch
    failed: bool = False
    # A bare lock as a one-shot latch, held until the writer is done with the item: one futex
    # operation each way, where an Event is a Condition and a lock.
    done: Any = field(default_factory=_held_lock)
    next: Item | None = None  # the next item of its batch, woken by this item's request (see Intake)
    abandoned: bool = False  # its request stopped waiting; the wake-up passes it by
    # Set for an item submitted without a waiting thread (`Intake.submit`): called, from the writer,
    # once per batch with the batch's items that carry it; `tag` is the submitter's own.
    on_done: Callable[[list[Item]], None] | None = None
    tag: Any = None


class ChannelRow(NamedTuple):
    id: str
    token_hash: str
    resource_id: str | None
    status: str
    kind: str
    account_id: int
    calendar_id: int | None
    last_message_number: int | None
    account_status: str | None
    owing: bool  # its calendar already owes a sync (its account a list refresh, for a calendar-list channel)


@dataclass
class Owed:
    """What a batch writes besides its log rows."""

    seen: dict[str, int] = field(default_factory=dict)  # channel id -> newest message number
    calendars: set[int] = field(default_factory=set)  # owe one more sync
    accounts: set[int] = field(default_factory=set)  # owe one more calendar-list refresh
    newly_owed: bool = False  # some of that work was not owed before: a worker must hear of it


def record_batch(cursor: Any, dialect: Dialect, batch: list[Item], now: datetime) -> bool:
    """Decide each item's outcome, in arrival order, and write the log and what the accepted ones owe;
    whether the batch made a calendar (or a calendar list) owe work it did not owe before.

    Only then need a worker be woken: work already owed is known to the workers (they were woken
    when it became owed, or it waits for a time of its own, a burst's follow-up or a retry).

    On SQLite, inside the caller's BEGIN IMMEDIATE (which serialises writers), the channels are read
    and the outcomes decided here. On PostgreSQL one statement decides and writes everything, so that
    on an autocommit connection a batch costs one round trip; see `_RECORD_PG`.
    """
    if dialect.name == "postgresql":
        return _record_pg(cursor, batch, now)
    ids = sorted({item.push.channel_id for item in batch if item.push is not None})
    marks = ",".join("?" * len(ids))
    channels = _lookup(cursor, _LOOKUP_SQLITE.format(marks=marks), ids) if ids else {}
    owed = decide(batch, channels)
    _write_sqlite(cursor, batch, owed, now, _sqlite_time(dialect))
    return owed.newly_owed


def decide(batch: list[Item], channels: dict[str, ChannelRow]) -> Owed:
    """Set each item's outcome as if the items had come one by one; what they owe together.

    The mark a message is measured against is the stored one (no mark counts as 0) raised by the batch's
    earlier messages that moved it; only a number within `MAX_STEP` above the stored mark moves it.
    """
    owed = Owed()
    stored = {cid: row.last_message_number or 0 for cid, row in channels.items()}
    mark = dict(stored)
    for item in batch:
        push = item.push
        if push is None:
            item.outcome = NotificationOutcome.MALFORMED
            continue
        channel = channels.get(push.channel_id)
        refusal = _refusal(channel, push)
        if refusal is not None or channel is None:
            item.outcome = refusal or NotificationOutcome.UNKNOWN_CHANNEL
            continue
        number, base, newest = push.message_number, stored[push.channel_id], mark[push.channel_id]
        newer = base < number <= base + MAX_STEP and number > newest
        if newer:
            mark[push.channel_id] = owed.seen[push.channel_id] = number
        if push.state == "sync":
            item.outcome = NotificationOutcome.SYNC
        elif not newer and newest - DUPLICATE_WINDOW < number <= newest:
            item.outcome = NotificationOutcome.DUPLICATE
        else:
            item.outcome = NotificationOutcome.QUEUED
            owed.newly_owed = owed.newly_owed or not channel.owing
            if channel.kind == ChannelKind.CALENDAR_LIST:
                owed.accounts.add(channel.account_id)
            elif channel.calendar_id is not None:
                owed.calendars.add(channel.calendar_id)
    return owed


def token_matches(token_hash: str, token: str | None) -> bool:
    """Constant-time comparison of the presented token's digest with the stored one."""
    presented = hashlib.sha256((token or "").encode("utf-8")).hexdigest()
    return hmac.compare_digest(presented.encode(), token_hash.encode()) and token is not None


def _refusal(channel: ChannelRow | None, push: Push) -> NotificationOutcome | None:
    if channel is None:
        return NotificationOutcome.UNKNOWN_CHANNEL
    if not token_matches(channel.token_hash, push.token):
        return NotificationOutcome.BAD_TOKEN
    if channel.resource_id and push.resource_id != channel.resource_id:
        return NotificationOutcome.BAD_RESOURCE
    if channel.status not in LIVE_CHANNEL:
        return NotificationOutcome.STOPPED_CHANNEL
    if channel.account_status != AccountStatus.ACTIVE:
        return NotificationOutcome.ACCOUNT_INACTIVE
    return None


def _lookup(cursor: Any, sql: str, params: Any) -> dict[str, ChannelRow]:
    cursor.execute(sql, params)
    return {row[0]: ChannelRow(*row) for row in cursor.fetchall()}


def _log_row(item: Item) -> tuple[Any, ...]:
    """(channel_id, resource_state, message_number, resource_id, headers, outcome)."""
    push, headers = item.push, item.headers
    if push is None:
        return (
            (headers.get("X-Goog-Channel-ID") or "")[:255] or None,
            (headers.get("X-Goog-Resource-State") or "")[:20] or None,
            None,
            None,
            headers,
            _stored(item.outcome),
        )
    return (
        push.channel_id,
        push.state,
        push.message_number,
        (push.resource_id or "")[:255] or None,
        headers,
        _stored(item.outcome),
    )


def _stored(outcome: NotificationOutcome | None) -> str:
    return "" if outcome is None else outcome.value  # None: PostgreSQL's statement decides it


def _write_sqlite(cursor: Any, batch: list[Item], owed: Owed, at: datetime, stamp: Callable[[datetime], str]) -> None:
    now = stamp(at)
    if owed.seen:
        cursor.executemany(_MARK_SEEN_SQLITE, [(n, cid, n) for cid, n in sorted(owed.seen.items())])
    if owed.calendars:
        cursor.executemany(_OWE_CALENDAR_SQLITE, [{"id": c, "now": now} for c in sorted(owed.calendars)])
    if owed.accounts:
        cursor.executemany(_OWE_LIST_SQLITE, [{"id": a, "now": now} for a in sorted(owed.accounts)])
    rows = []
    for item in batch:
        channel_id, state, number, resource_id, headers, outcome = _log_row(item)
        rows.append((channel_id, state, number, resource_id, json.dumps(headers), outcome, stamp(item.received_at)))
    cursor.executemany(_INSERT_LOG_SQLITE, rows)


def _record_pg(cursor: Any, batch: list[Item], now: datetime) -> bool:
    # One JSON document for the batch, where a text array per column would have psycopg quote every
    # string in Python; the headers ride in it as an object, not as a string parsed a second time.
    # Only the token's digest travels: the stored one is a digest too.
    rows = []
    for item in batch:
        push = item.push
        token = None if push is None or push.token is None else hashlib.sha256(push.token.encode()).hexdigest()
        rows.append((*_log_row(item), item.received_at.isoformat(), token, push is None))
    cursor.execute(_RECORD_PG, {"rows": json.dumps(rows), "now": now})
    outcomes = dict(cursor.fetchall())
    for i, item in enumerate(batch, start=1):
        item.outcome = NotificationOutcome(outcomes[i])
    return 0 in outcomes  # the statement's NOTIFY row


def _sqlite_time(dialect: Dialect) -> Callable[[datetime], str]:
    """The column type's own conversion, so stored times compare with those SQLAlchemy writes."""
    process = _TIME_PROCESSORS.get(dialect)
    if process is None:
        process = Notification.__table__.c.received_at.type.bind_processor(dialect)
        assert process is not None
        _TIME_PROCESSORS[dialect] = process
    return process


_TIME_PROCESSORS: weakref.WeakKeyDictionary[Dialect, Callable[[datetime], str]] = weakref.WeakKeyDictionary()


_COLUMNS = (
    "c.id, c.token_hash, c.resource_id, c.status, c.kind, c.account_id, c.calendar_id, c.last_message_number, a.status,"
    f" CASE WHEN c.kind = '{ChannelKind.CALENDAR_LIST}' THEN coalesce(a.list_requested > a.list_done, 0)"
    " ELSE coalesce(k.sync_requested > k.sync_done, 0) END"
)
_LOOKUP_SQLITE = (
    f"SELECT {_COLUMNS} FROM channels AS c LEFT JOIN accounts AS a ON a.id = c.account_id"
    " LEFT JOIN calendars AS k ON k.id = c.calendar_id WHERE c.id IN ({marks})"
)
# What a batch owes: the scheduler's rules, as SQL for both engines ({now} is each driver's placeholder).
# A channel's number only ever moves forward, whoever else writes it.
_MARK_SEEN = (
    f"CASE WHEN {{table}}status = '{ChannelStatus.PENDING.value}' THEN '{ChannelStatus.ACTIVE.value}'"
    " ELSE {table}status END"
)

_MARK_SEEN_SQLITE = f"""
UPDATE channels SET last_message_number = ?, status = {_MARK_SEEN.format(table="")}
 WHERE id = ? AND (last_message_number IS NULL OR last_message_number < ?)"""
_OWE_CALENDAR_SQLITE = f"UPDATE calendars SET {owe_sync_sql(':now')} WHERE id = :id"
_OWE_LIST_SQLITE = f"UPDATE accounts SET {owe_list_sql(':now')} WHERE id = :id"
_INSERT_LOG_SQLITE = """
INSERT INTO notifications (channel_id, resource_state, message_number, resource_id, headers, outcome, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?)"""

# PostgreSQL: the whole batch in one statement, the same decisions as `decide` (in arrival order:
# `newest` is the stored mark raised by the batch's earlier messages of the channel that moved it). The
# channel rows are not read FOR UPDATE: when two processes' batches race on one channel, the
# guarded UPDATE still only moves its number forward, and the worst case is one message counted
# as new twice, which owes one sync that coalescing absorbs. Data-modifying CTEs run to completion
# whether referenced or not. The NOTIFY (delivered at commit) goes out only when the batch made a
# calendar or a calendar list owe work it did not owe before: the workers already know of work that
# was owed, and PostgreSQL serialises the commits of notifying transactions (a lock held through the
# WAL flush), which queued the batches of several web processes behind each other.
_O, _LIST = NotificationOutcome, ChannelKind.CALENDAR_LIST.value
_RECORD_PG = f"""
WITH input AS (
    SELECT r->>0 AS channel_id, r->>1 AS state, (r->>2)::bigint AS number, r->>3 AS resource_id,
           r->4 AS headers, r->>5 AS unused, (r->>6)::timestamptz AS received_at,
           r->>7 AS token_digest, (r->>8)::boolean AS malformed, l.ord
      FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS l(r, ord)
), checked AS (
    SELECT i.*, c.kind, c.account_id, c.calendar_id, c.last_message_number AS stored,
           CASE WHEN i.malformed THEN '{_O.MALFORMED.value}'
                WHEN c.id IS NULL THEN '{_O.UNKNOWN_CHANNEL.value}'
                WHEN i.token_digest IS NULL OR c.token_hash <> i.token_digest THEN '{_O.BAD_TOKEN.value}'
                WHEN coalesce(c.resource_id, '') <> '' AND i.resource_id IS DISTINCT FROM c.resource_id
                     THEN '{_O.BAD_RESOURCE.value}'
                WHEN c.status NOT IN ({sql_list(LIVE_CHANNEL)}) THEN '{_O.STOPPED_CHANNEL.value}'
                WHEN a.status IS DISTINCT FROM '{AccountStatus.ACTIVE.value}' THEN '{_O.ACCOUNT_INACTIVE.value}'
           END AS refusal
      FROM input AS i
      LEFT JOIN channels AS c ON c.id = i.channel_id AND NOT i.malformed
      LEFT JOIN accounts AS a ON a.id = c.account_id
), ranked AS (
    SELECT k.*, coalesce(stored, 0) AS base,
           number > coalesce(stored, 0) AND number <= coalesce(stored, 0) + {MAX_STEP} AS within,
           greatest(coalesce(stored, 0), coalesce(max(number) FILTER (
               WHERE refusal IS NULL AND number > coalesce(stored, 0) AND number <= coalesce(stored, 0) + {MAX_STEP})
               OVER (PARTITION BY channel_id ORDER BY ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))
               AS newest
      FROM checked AS k
), decided AS (
    SELECT d.*,
           CASE WHEN refusal IS NOT NULL THEN refusal
                WHEN state = 'sync' THEN '{_O.SYNC.value}'
                WHEN NOT newer AND number > newest - {DUPLICATE_WINDOW} AND number <= newest
                     THEN '{_O.DUPLICATE.value}'
                ELSE '{_O.QUEUED.value}' END AS outcome
      FROM (SELECT r.*, refusal IS NULL AND within AND number > newest AS newer FROM ranked AS r) AS d
), seen AS (
    UPDATE channels AS c
       SET last_message_number = v.n, status = {_MARK_SEEN.format(table="c.")}
      FROM (SELECT channel_id, max(number) AS n FROM decided WHERE newer GROUP BY channel_id) AS v
     WHERE c.id = v.channel_id AND (c.last_message_number IS NULL OR c.last_message_number < v.n)
), owe_calendar_sync AS (
    UPDATE calendars SET {owe_sync_sql("%(now)s")}
     WHERE id IN (SELECT calendar_id FROM decided WHERE outcome = '{_O.QUEUED.value}' AND kind <> '{_LIST}')
    RETURNING sync_requested - 1 = sync_done AS newly_owed
), owe_list_refresh AS (
    UPDATE accounts SET {owe_list_sql("%(now)s")}
     WHERE id IN (SELECT account_id FROM decided WHERE outcome = '{_O.QUEUED.value}' AND kind = '{_LIST}')
    RETURNING list_requested - 1 = list_done AS newly_owed
), logged AS (
    INSERT INTO notifications (channel_id, resource_state, message_number, resource_id, headers, outcome, received_at)
    SELECT channel_id, state, number, resource_id, headers, outcome, received_at FROM decided ORDER BY ord
)
SELECT ord, outcome FROM decided
UNION ALL
SELECT 0, 'notified' FROM (
    SELECT pg_notify('{WAKEUP_CHANNEL}', '')
      FROM (SELECT 1 WHERE EXISTS (SELECT FROM owe_calendar_sync WHERE newly_owed)
                        OR EXISTS (SELECT FROM owe_list_refresh WHERE newly_owed)) AS owed) AS woken"""


# The log keeps two histories, each bounded on its own: notifications of our channels (accepted, even as
# duplicates) and the rest (refused or malformed). Anyone can send the second kind, so a flood of forged
# ones must not push the real history out of the inspector.
_NOT_ACCEPTED_SQL = sql_list(NOT_ACCEPTED_NOTIFICATION)
_TRIM_ONE = (
    "DELETE FROM notifications WHERE outcome {op} ({names}) AND id <= (SELECT id FROM notifications"
    " WHERE outcome {op} ({names}) ORDER BY id DESC LIMIT 1 OFFSET {{p}})"
)
TRIM_LOG = tuple(_TRIM_ONE.format(op=op, names=_NOT_ACCEPTED_SQL) for op in ("NOT IN", "IN"))


def trim_log(session: Session, keep: int) -> int:
    """Keep only the newest `keep` accepted notifications and the newest `keep` others."""
    return sum(rows_affected(session.execute(text(sql.format(p=":keep")), {"keep": keep})) for sql in TRIM_LOG)
