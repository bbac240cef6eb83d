from __future__ import annotations

import json
from datetime import UTC, datetime

from calsync.store.models import Change
from calsync.webhooks.payload import encode, message


def change() -> Change:
    return Change(
        seq=7,
        calendar_id=1,
        event_id="ev1",
        kind="updated",
        fields=["summary"],
        before={"summary": "a"},
        after={"summary": "b"},
        detected_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )


def test_message_carries_the_whole_change_as_api_changes_does() -> None:
    assert message(change(), "alice@example.com", "team@group") == {
        "type": "event.updated",
        "timestamp": "2026-01-01T12:00:00.000Z",
        "data": {
            "seq": 7,
            "type": "event.updated",
            "account": "alice@example.com",
            "ref": None,
            "calendar_id": "team@group",
            "event_id": "ev1",
            "change": "updated",
            "fields": ["summary"],
            "before": {"summary": "a"},
            "after": {"summary": "b"},
            "detected_at": "2026-01-01T12:00:00.000Z",
            "origin": "google",
        },
    }


def test_oversized_message_drops_before_and_after_and_says_so() -> None:
    big = change()
    big.after = {"description": "x" * 300_000}
    body = encode(message(big, "a@example.com", "c"), max_bytes=256 * 1024)
    assert len(body.encode()) < 1024
    data = json.loads(body)["data"]
    assert data["truncated"] is True and data["before"] is None and data["after"] is None and data["seq"] == 7
