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

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from calsync.errors import IdempotencyKeyReused, InvalidWrite
from calsync.runtime import Runtime
from calsync.store.db import rows_affected, transaction
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


def check_key(key: str) -> str:
    """1 to 200 printable ASCII characters (what fits an HTTP header and the column)."""
    if not 1 <= len(key) <= KEY_MAX or not all(" " <= ch <= "~" for ch in key):
        raise InvalidWrite("Idempotency-Key", f"Idempotency-Key: 1 to {KEY_MAX} printable ASCII characters")
    return key


def derived_event_id(calendar_google_id: str, key: str) -> str:
    """A Google event id (base32hex, lower case) that only this calendar and key give."""
    digest = hashlib.sha256(f"{calendar_google_id}\0{key}".encode()).digest()
    return base64.b32hexencode(digest).decode().rstrip("=").lower()


def body_hash(body: dict[str, Any]) -> str:
    """The same JSON object, whatever its key order or spacing, has the same hash."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def claim(session: Session, calendar_id: int, key: str, digest: str, event_id: str, now: datetime) -> Claim:
    """Hold `key` for this body in the caller's transaction (committed before Google is called), or
    find it held; another body → IdempotencyKeyReused.

    A concurrent twin that inserted the same key first makes the flush fail with IntegrityError:
    the caller runs its transaction again and then finds the twin's row.
    """
    row = session.get(IdempotencyKey, (calendar_id, key))
    if row is None:
        row = IdempotencyKey(
            calendar_id=calendar_id, key=key, body_hash=digest, event_id=event_id, seq=None, created_at=now
        )
        session.add(row)
        session.flush()
    if row.body_hash != digest:
        raise IdempotencyKeyReused("this Idempotency-Key was used for another body: use a new key for a new event")
    return Claim(row.key, row.body_hash, row.event_id, row.seq)


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
    """The creation is committed at `seq` (in the same transaction as its feed row; one statement)."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.calendar_id == calendar_id, IdempotencyKey.key == key, IdempotencyKey.seq.is_(None))
        .values(seq=seq)
        .execution_options(synchronize_session=False)
    )


def recorded_seq(session: Session, calendar_id: int, key: str) -> int | None:
    return session.scalar(
        select(IdempotencyKey.seq).where(IdempotencyKey.calendar_id == calendar_id, IdempotencyKey.key == key)
    )


def prune_keys(session: Session, now: datetime) -> int:
    """Forget keys older than KEEP_KEYS (the scheduler's prune pass)."""
    return rows_affected(session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - KEEP_KEYS)))
