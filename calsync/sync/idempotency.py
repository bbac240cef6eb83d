"""Idempotency keys of event creations: one event in Google per (calendar, key), however often retried.

The Google event id is derived from the calendar and the key, so a second insert of the same
creation is refused by Google itself (409 `duplicate`), even when calsync died between Google's
answer and its own commit and so kept no trace of the first. The key's row is claimed, with the
body's hash, before Google is called: a retry or a concurrent twin with the same body goes on to the
same event id; one with another body is refused before anything is sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from calsync.errors import IdempotencyKeyReused, InvalidWrite
from calsync.feed.append import mark_key_committed
from calsync.runtime import Runtime
from calsync.store.db import is_postgres, rows_affected, transaction
from calsync.store.models import IdempotencyKey

KEY_MAX = 200
# Keys are answered for at least this long after their first use (then pruned by the scheduler).
KEEP_KEYS = timedelta(hours=24)


@dataclass(frozen=True)
class Claim:
    """A key held for one creation: the event id it makes, and its feed row once committed."""

    key: str
    body_hash: str
    event_id: str
    seq: int | None
    found: bool = False  # held already (by an earlier attempt, or a twin still in flight), not claimed now


def check_key(key: str) -> str:
    """1 to 200 printable ASCII characters (what fits an HTTP header and the column)."""
    if not 1 <= len(key) <= KEY_MAX or not all(" " <= ch <= "~" for ch in key):
        raise InvalidWrite("Idempotency-Key", f"Idempotency-Key: 1 to {KEY_MAX} printable ASCII characters")
    return key


def derived_event_id(calendar_id: int, calendar_google_id: str, key: str, digest: str) -> str:
    """A Google event id (base32hex, lower case) that only this calendar, key and body give.

    The calendar's own row (one per account that sees it) as well as its Google id: two accounts
    sharing a calendar keep apart keys, and so apart events. The body's hash too: a key used again
    for another body once its row is gone (pruned after `KEEP_KEYS`, or a claim lost with the
    database) makes a new event, instead of Google's 409 handing back the first one as if it were
    this one. A retry of the same creation still derives the same id.
    """
    raw = hashlib.sha256(f"{calendar_id}\0{calendar_google_id}\0{key}\0{digest}".encode()).digest()
    return base64.b32hexencode(raw).decode().rstrip("=").lower()


def body_hash(body: dict[str, Any]) -> str:
    """The same JSON object, whatever its key order or spacing, has the same hash."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def claim(session: Session, calendar_id: int, key: str, digest: str, event_id: str, now: datetime) -> Claim:
    """Hold `key` for this body in the caller's transaction (committed before Google is called), or
    find it held; another body → IdempotencyKeyReused.

    One statement when the key is new: an INSERT that does nothing on a held key. A twin inserting
    the same key concurrently makes it wait for the twin's commit; the row is then read.
    """
    values = {
        "calendar_id": calendar_id,
        "key": key,
        "body_hash": digest,
        "event_id": event_id,
        "seq": None,
        "created_at": now,
    }
    claiming = _CLAIM_PG if is_postgres(session) else _CLAIM_SQLITE
    for _ in range(2):
        row = session.execute(claiming, values).first()
        found = row is None
        if found:  # held already: read it (a row released meanwhile is claimed on the next turn)
            row = session.execute(_HELD, values).first()
        if row is not None:
            if row.body_hash != digest:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used for another body: use a new key for a new event"
                )
            return Claim(key, row.body_hash, row.event_id, row.seq, found=found)
    raise IdempotencyKeyReused("this Idempotency-Key is being claimed concurrently; retry")


# On the table, not the ORM class: run as plain Core, at a fraction of the ORM's CPU per statement.
_KEYS = IdempotencyKey.__table__
_KEY_COLUMNS = (_KEYS.c.body_hash, _KEYS.c.event_id, _KEYS.c.seq)
_KEY_VALUES: dict[str, Any] = {
    name: bindparam(name) for name in ("calendar_id", "key", "body_hash", "event_id", "seq", "created_at")
}
# Built once: a statement built per call costs more Python than its round trip.
_CLAIM_PG = pg_insert(_KEYS).values(_KEY_VALUES).on_conflict_do_nothing().returning(*_KEY_COLUMNS)
_CLAIM_SQLITE = sqlite_insert(_KEYS).values(_KEY_VALUES).on_conflict_do_nothing().returning(*_KEY_COLUMNS)
_HELD = select(*_KEY_COLUMNS).where(_KEYS.c.calendar_id == bindparam("calendar_id"), _KEYS.c.key == bindparam("key"))


def release(runtime: Runtime, calendar_id: int, key: str, digest: str) -> None:
    """Google refused the creation outright (nothing was made): the key may be used again."""
    with transaction(runtime.sessions) as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.calendar_id == calendar_id,
                IdempotencyKey.key == key,
                IdempotencyKey.body_hash == digest,
                IdempotencyKey.seq.is_(None),
            )
        )


def record(session: Session, calendar_id: int, key: str, seq: int) -> None:
    """The creation is committed at `seq`, where the commit wrote no feed row of its own (an api row
    with the key marks it as it is appended: `calsync.feed.append`)."""
    mark_key_committed(session, calendar_id, key, seq)


def recorded_seq(session: Session, calendar_id: int, key: str) -> int | None:
    return session.scalar(
        select(IdempotencyKey.seq).where(IdempotencyKey.calendar_id == calendar_id, IdempotencyKey.key == key)
    )


def prune_keys(session: Session, now: datetime) -> int:
    """Forget keys older than KEEP_KEYS (the scheduler's prune pass)."""
    return rows_affected(session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - KEEP_KEYS)))
