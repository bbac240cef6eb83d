from __future__ import annotations

import copy
from typing import Any

import pytest

from calsync.sync.diff import (
    IGNORED_FIELDS,
    changed_fields,
    event_time_text,
    implied_occurrence,
)

EVENT: dict[str, Any] = {
    "kind": "calendar#event",
    "etag": '"3181161784712000"',
    "id": "abc123",
    "status": "confirmed",
    "updated": "2026-01-02T10:00:00.000Z",
    "summary": "Standup",
    "description": "daily",
    "location": "Room 1",
    "start": {"dateTime": "2026-01-05T09:00:00+01:00", "timeZone": "Europe/Berlin"},
    "end": {"dateTime": "2026-01-05T09:15:00+01:00", "timeZone": "Europe/Berlin"},
    "sequence": 0,
    "attendees": [
        {"email": "a@example.com", "responseStatus": "accepted"},
        {"email": "b@example.com", "responseStatus": "needsAction"},
    ],
}


def edited(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(EVENT)
    out.update(changes)
    return out


def test_noise_alone_is_no_change() -> None:
    noisy = edited(etag='"999"', updated="2026-02-01T00:00:00.000Z", sequence=4)
    assert changed_fields(EVENT, noisy) == []
    assert {"etag", "updated", "sequence"} == IGNORED_FIELDS


def test_identical_events_have_no_changed_fields() -> None:
    assert changed_fields(EVENT, copy.deepcopy(EVENT)) == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("summary", "Retro"),
        ("description", "weekly"),
        ("location", "Room 2"),
        ("status", "tentative"),
        ("start", {"dateTime": "2026-01-05T10:00:00+01:00", "timeZone": "Europe/Berlin"}),
        ("end", {"dateTime": "2026-01-05T10:15:00+01:00", "timeZone": "Europe/Berlin"}),
    ],
)
def test_each_changed_field_is_named(field: str, value: Any) -> None:
    assert changed_fields(EVENT, edited(**{field: value})) == [field]


def test_noise_next_to_a_real_change_is_left_out() -> None:
    after = edited(summary="Retro", etag='"1"', updated="2026-03-01T00:00:00.000Z", sequence=1)
    assert changed_fields(EVENT, after) == ["summary"]


def test_fields_are_sorted_top_level_keys() -> None:
    after = edited(
        summary="Retro", location="Room 9", end={"dateTime": "2026-01-05T09:30:00+01:00", "timeZone": "Europe/Berlin"}
    )
    assert changed_fields(EVENT, after) == ["end", "location", "summary"]


def test_a_nested_attendee_response_changes_attendees() -> None:
    after = copy.deepcopy(EVENT)
    after["attendees"][1]["responseStatus"] = "accepted"
    assert changed_fields(EVENT, after) == ["attendees"]


def test_an_added_attendee_changes_attendees() -> None:
    after = copy.deepcopy(EVENT)
    after["attendees"].append({"email": "c@example.com", "responseStatus": "needsAction"})
    assert changed_fields(EVENT, after) == ["attendees"]


def test_a_nested_time_zone_change_changes_start() -> None:
    after = edited(start={"dateTime": "2026-01-05T09:00:00+01:00", "timeZone": "Europe/Paris"})
    assert changed_fields(EVENT, after) == ["start"]


def test_keys_present_on_one_side_only_are_changes() -> None:
    without = {k: v for k, v in EVENT.items() if k != "location"}
    assert changed_fields(EVENT, without) == ["location"]
    assert changed_fields(without, EVENT) == ["location"]
    assert changed_fields(without, {**without, "location": None}) == ["location"]


def test_an_occurrence_implied_by_a_timed_series_keeps_its_duration_and_zone() -> None:
    series = edited(recurrence=["RRULE:FREQ=DAILY"])
    original = {"dateTime": "2026-01-07T09:00:00+01:00", "timeZone": "Europe/Berlin"}
    occurrence = implied_occurrence(series, "abc123_20260107T080000Z", original)
    assert "recurrence" not in occurrence
    assert occurrence["id"] == "abc123_20260107T080000Z"
    assert occurrence["recurringEventId"] == "abc123"
    assert occurrence["originalStartTime"] == original
    assert occurrence["start"] == original
    assert occurrence["end"] == {"dateTime": "2026-01-07T09:15:00+01:00", "timeZone": "Europe/Berlin"}
    assert occurrence["summary"] == "Standup"


def test_an_occurrence_implied_by_an_all_day_series_spans_as_many_days() -> None:
    series = {
        "id": "s1",
        "summary": "Trip",
        "start": {"date": "2026-03-02"},
        "end": {"date": "2026-03-04"},
        "recurrence": ["RRULE:FREQ=WEEKLY"],
    }
    occurrence = implied_occurrence(series, "s1_20260309", {"date": "2026-03-09"})
    assert occurrence["start"] == {"date": "2026-03-09"}
    assert occurrence["end"] == {"date": "2026-03-11"}


def test_event_time_text_reads_date_time_or_date() -> None:
    assert event_time_text({"dateTime": "2026-01-05T09:00:00Z"}) == "2026-01-05T09:00:00Z"
    assert event_time_text({"date": "2026-01-05"}) == "2026-01-05"
    assert event_time_text(None) is None


def test_a_cancelled_occurrence_changes_its_status_alone() -> None:
    """Google sends a cancelled occurrence without its summary or times: leaving them out is no change."""
    before = {"id": "s_1", "status": "confirmed", "summary": "standup", "start": {"date": "2026-01-05"}, "etag": '"1"'}
    after = {"id": "s_1", "status": "cancelled", "etag": '"2"'}
    assert changed_fields(before, after) == ["status"]
    # back from a cancellation, what it carries again is new
    assert changed_fields(after, before) == ["start", "status", "summary"]
