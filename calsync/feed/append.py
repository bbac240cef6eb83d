"""Writing the diff log: seq numbers are taken from a locked counter so seq order is commit order.

A reader paging with `after=SEQ` must never see seq 7 committed after it has read seq 8; taking the
counter row's lock as the last step of a transaction serialises the commits that write changes.

A row that carries an Idempotency-Key (a creation through calsync) marks the key's claim committed
at the row's seq, in the same statement as its insert on PostgreSQL: a retry with that key is then
answered from the feed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, bindparam, select, update
from sqlalchemy.orm import Session

from calsync.feed.cursor import SEQ_COUNTER
from calsync.feed.rows import NewChange
from calsync.metrics import CHANGES
from calsync.store.bulk import INSERT_UP_TO, bound, insert_rows, json_text
from calsync.store.models import Account, Calendar, Change, Counter, IdempotencyKey
from calsync.store.states import ChangeType, Origin

_CHANGES = Change.__table__
_COLUMNS = (
    "seq",
    "type",
    "account_id",
    "calendar_id",
    "event_id",
    "ref",
    "fields",
    "before",
    "after",
    "detected_at",
    "origin",
    "idempotency_key",
)


# Built once (every commit that writes changes runs it), on the table: the session runs it as plain
# Core, where a statement naming the ORM class costs several times the CPU.
_COUNTERS = Counter.__table__
_TAKE_SEQS = (
    update(_COUNTERS)
    .where(_COUNTERS.c.name == SEQ_COUNTER)
    .values(value=_COUNTERS.c.value + bindparam("n", type_=BigInteger))
    .returning(_COUNTERS.c.value)
)


def append_changes(
    session: Session, changes: Sequence[NewChange], now: Any, *, refs: Mapping[int, str | None] | None = None
) -> Sequence[NewChange]:
    """Give `changes` their seq numbers and add them; consumers (webhooks among them) read them from here.

    A row that names only its calendar gets the calendar's account, and every row the account's
    `ref` as it stands in this transaction: `refs` when the caller read them in it already (rows
    that all name their account), else read here.
    """
    if not changes:
        return changes
    # What the session holds goes first: from the counter's lock on, the transaction only inserts
    # and commits (the statements below are Core, which does not flush by itself).
    session.flush()
    if refs is not None and all(c.account_id in refs for c in changes):
        for change in changes:
            change.ref = refs[change.account_id or 0]
    else:
        _name_accounts(session, changes)
    # Straight to the driver: a first sync writes a row per event, and the ORM's unit of work per
    # object cost more than the database's own insert. The objects stay as the caller's record.
    connection = session.connection()
    detected_at = bound(connection, _CHANGES.c.detected_at, now)
    for change in changes:
        change.detected_at = now
        change.fields = list(change.fields or [])
        CHANGES.labels(change.type).inc()
    rows = [
        (
            ChangeType(c.type).value,  # a plain word too, checked
            c.account_id,
            c.calendar_id,
            c.event_id,
            c.ref,
            json_text(c.fields),
            json_text(c.before),
            json_text(c.after),
            detected_at,
            Origin(c.origin or Origin.GOOGLE).value,
            c.idempotency_key,
        )
        for c in changes
    ]
    keyed = any(c.idempotency_key is not None for c in changes)
    if connection.dialect.name == "postgresql" and len(rows) <= INSERT_UP_TO:
        # The counter's take, the insert and the keys' marks as one statement: round trips fewer
        # for each commit that writes a few changes (every write through calsync, most syncs).
        flat = tuple(value for row in rows for value in row)
        statement = _numbered_insert_pg(len(rows), keyed)
        last = max(connection.exec_driver_sql(statement, (SEQ_COUNTER, *flat)).scalars())
        first = last - len(rows) + 1
        keyed = False  # marked by the statement
    else:
        first = session.execute(_TAKE_SEQS, {"n": len(rows)}).scalar_one() - len(rows) + 1
        insert_rows(connection, _CHANGES, _COLUMNS, [(first + i, *row) for i, row in enumerate(rows)])
    for offset, change in enumerate(changes):
        change.seq = first + offset
    if keyed:
        last_of = {(c.calendar_id, c.idempotency_key): c.seq for c in changes if c.idempotency_key is not None}
        for (calendar_id, key), seq in last_of.items():
            assert calendar_id is not None and key is not None and seq is not None
            mark_key_committed(session, calendar_id, key, seq)
    return changes


_KEYS = IdempotencyKey.__table__
_MARK_KEY = (
    update(_KEYS)
    .where(
        _KEYS.c.calendar_id == bindparam("calendar"),
        _KEYS.c.key == bindparam("the_key"),
        _KEYS.c.seq.is_(None),
    )
    .values(seq=bindparam("the_seq"))
)


def mark_key_committed(session: Session, calendar_id: int, key: str, seq: int) -> None:
    """The creation claimed by `key` is committed at `seq` (in the transaction that commits it)."""
    session.execute(_MARK_KEY, {"calendar": calendar_id, "the_key": key, "the_seq": seq})


@functools.cache
def _numbered_insert_pg(n: int, keyed: bool) -> str:
    """PostgreSQL: take n seqs from the counter and insert n rows numbered with them, in one statement
    (the counter's row is still locked by the transaction's last writes: seq order stays commit order).
    `keyed`: the same statement marks each row's key committed at the key's last seq (`_MARK_KEY`)."""
    names = ", ".join(f'"{name}"' for name in _COLUMNS)
    marks = ", ".join("%s" for _ in _COLUMNS[1:])
    values = ", ".join(f"((SELECT value FROM taken) - {n - 1 - i}, {marks})" for i in range(n))
    taken = f"WITH taken AS (UPDATE {_COUNTERS.name} SET value = value + {n} WHERE name = %s RETURNING value)"
    insert = f"INSERT INTO {_CHANGES.name} ({names}) VALUES {values}"
    if not keyed:
        return f"{taken} {insert} RETURNING seq"
    keys = _KEYS.name
    return (
        f"{taken}, inserted AS ({insert} RETURNING seq, calendar_id, idempotency_key), "
        f"marked AS (UPDATE {keys} SET seq = last.seq FROM (SELECT calendar_id, idempotency_key, max(seq) AS seq "
        "FROM inserted WHERE idempotency_key IS NOT NULL GROUP BY calendar_id, idempotency_key) AS last "
        f"WHERE {keys}.calendar_id = last.calendar_id AND {keys}.key = last.idempotency_key AND {keys}.seq IS NULL) "
        "SELECT seq FROM inserted"
    )


def _name_accounts(session: Session, changes: Sequence[NewChange]) -> None:
    calendar_ids = {c.calendar_id for c in changes if c.account_id is None and c.calendar_id is not None}
    owners: dict[int, int] = {}
    if calendar_ids:
        owners = dict(
            session.execute(select(Calendar.id, Calendar.account_id).where(Calendar.id.in_(calendar_ids))).all()
        )
    for change in changes:
        if change.account_id is None and change.calendar_id is not None:
            change.account_id = owners[change.calendar_id]
    refs: dict[int, str | None] = dict(
        session.execute(select(Account.id, Account.ref).where(Account.id.in_({c.account_id for c in changes}))).all()
    )
    for change in changes:
        change.ref = refs.get(change.account_id or 0)
