"""The renderings people read on the dashboard, in `calsync status` and in the demo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from calsync.humanize import (
    ago,
    event_title,
    expires_in,
    field_diffs,
    human_duration,
    render_value,
    utc_label,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (3, "3 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (250, "4 min 10 s"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (86400 + 30, "1 d"),
        (6 * 86400 + 23 * 3600 + 59 * 60, "6 d 23 h"),
        (-90, "1 min 30 s"),
    ],
)
def test_human_duration_keeps_the_two_largest_units(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_ages_and_expiries_read_naturally() -> None:
    assert ago(NOW - timedelta(seconds=3), NOW) == "3 s ago"
    assert ago(NOW + timedelta(seconds=40), NOW) == "in 40 s"
    assert ago(NOW, NOW) == "just now"
    assert ago(None, NOW) == "never"
    assert expires_in(NOW + timedelta(days=6, hours=23, minutes=10), NOW) == "expires in 6 d 23 h"
    assert expires_in(NOW - timedelta(hours=2), NOW) == "expired 2 h ago"
    assert utc_label(NOW) == "2026-01-01 12:00:00 UTC"


def test_values_render_as_people_write_them() -> None:
    assert render_value({"dateTime": "2026-12-01T16:00:00Z", "timeZone": "UTC"}) == "2026-12-01 16:00 UTC"
    assert render_value({"dateTime": "2026-12-01T16:00:00+01:00"}) == "2026-12-01 16:00 +01:00"
    assert (
        render_value({"dateTime": "2026-12-01T16:00:00+01:00", "timeZone": "Europe/Paris"})
        == "2026-12-01 16:00 Europe/Paris"
    )
    assert render_value({"date": "2026-12-01"}) == "2026-12-01 (all day)"
    assert (
        render_value([{"email": "a@x.org", "responseStatus": "accepted"}, {"email": "b@x.org"}])
        == "a@x.org (accepted), b@x.org"
    )
    assert (
        render_value(["RRULE:FREQ=WEEKLY", "EXDATE:20260105T093000Z"]) == "RRULE:FREQ=WEEKLY; EXDATE:20260105T093000Z"
    )
    assert render_value(None) == render_value("") == "—"
    assert render_value("x" * 500).endswith("…") and len(render_value("x" * 500)) == 160


def test_field_diffs_come_in_reading_order_with_before_and_after() -> None:
    before = {
        "summary": "Standup",
        "start": {"dateTime": "2026-01-05T10:00:00Z"},
        "end": {"dateTime": "2026-01-05T10:15:00Z"},
    }
    after = {
        "summary": "Daily standup",
        "start": {"dateTime": "2026-01-05T10:30:00Z"},
        "end": {"dateTime": "2026-01-05T10:45:00Z"},
        "location": "Room 4",
    }
    diffs = field_diffs(["end", "location", "start", "summary"], before, after)
    assert [d.name for d in diffs] == ["summary", "start", "end", "location"]
    assert (diffs[0].before, diffs[0].after) == ("Standup", "Daily standup")
    assert (diffs[3].before, diffs[3].after) == ("—", "Room 4")


def test_event_title_falls_back_to_the_series_or_the_id() -> None:
    assert event_title({"summary": "Old"}, {"summary": "New"}) == "New"
    assert event_title({"summary": "Gone"}, None) == "Gone"
    assert event_title(None, {"recurringEventId": "abc", "status": "cancelled"}) == "occurrence of abc"
    assert event_title(None, None, "ev1") == "ev1"
