"""A change-feed row on its way to the `changes` table, as a plain object.

A first sync makes one per event; an ORM `Change` costs a dozen attribute events to fill, more than
the database's own insert of the row. The writer (`sync.changelog.append_changes`) takes these and
ORM `Change` objects alike: both carry the same attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from calsync.store.models import Change
from calsync.store.states import ChangeKind, ChangeType, Origin


@dataclass(slots=True, eq=False)
class FeedRow:
    type: ChangeType
    calendar_id: int | None = None
    event_id: str | None = None
    fields: list[str] = field(default_factory=list)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    account_id: int | None = None
    ref: str | None = None
    seq: int = 0  # given by the writer
    detected_at: datetime | None = None
    origin: Origin = Origin.GOOGLE  # `api` for a write made through calsync
    idempotency_key: str | None = None

    @property
    def kind(self) -> ChangeKind | None:
        """As `Change.kind`: the event change, or None for a lifecycle row."""
        return ChangeType(self.type).kind


# What the writer and the outbox take: rows being written, or ORM objects made by hand.
NewChange = FeedRow | Change
