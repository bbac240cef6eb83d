"""Google's event times parsed once: an offset wins, a bare wall time takes its zone, a date is all day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import format_datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsync.clock import (
    at_least,
    day_ends,
    day_started,
    event_datetime,
    event_time,
    parse_retry_after,
    parse_timestamp,
    quota_day,
    zone_named,
)

ZONES = ["Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
moments = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
zone_names = st.sampled_from([*ZONES, "Not/AZone", None])


@given(moment=moments, offset=offsets, zone_name=zone_names)
def test_a_time_with_an_offset_is_that_instant_whatever_the_zone_name(
    moment: datetime, offset: timezone, zone_name: str | None
) -> None:
    text = moment.astimezone(offset).isoformat()
    parsed = event_datetime(text, zone_name)
    assert parsed == moment and parsed.utcoffset() == offset.utcoffset(None)
    assert event_time({"dateTime": text, "timeZone": zone_name}) == moment


@given(moment=moments, zone_name=st.sampled_from(ZONES))
def test_a_wall_time_without_an_offset_is_in_its_zone(moment: datetime, zone_name: str) -> None:
    wall = moment.replace(tzinfo=None, microsecond=0)
    parsed = event_datetime(wall.isoformat(), zone_name)
    assert parsed.replace(tzinfo=None) == wall and parsed.tzinfo == ZoneInfo(zone_name)
    # The event's own zone wins over the calendar's
    assert event_time({"dateTime": wall.isoformat(), "timeZone": zone_name}, "Asia/Tokyo") == parsed


def test_a_wall_time_in_an_unknown_zone_is_utc_and_without_any_zone_takes_the_fallback() -> None:
    paris = ZoneInfo("Europe/Paris")
    assert event_datetime("2026-03-01T09:30:00", "Not/AZone", paris) == datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert event_datetime("2026-03-01T09:30:00", None, paris) == datetime(2026, 3, 1, 9, 30, tzinfo=paris)
    assert event_time({"dateTime": "2026-03-01T09:30:00"}, "Asia/Tokyo") == datetime(
        2026, 3, 1, 9, 30, tzinfo=ZoneInfo("Asia/Tokyo")
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T09:30:00Z", datetime(2026, 3, 1, 9, 30, tzinfo=UTC)),
        ("2026-03-01T09:30:00.123456789Z", datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)),
        ("2026-03-01T09:30:00+05", datetime(2026, 3, 1, 4, 30, tzinfo=UTC)),
    ],
)
def test_the_forms_google_and_rfc_3339_allow(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@given(day=st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)))
def test_an_all_day_date_is_a_date(day: date) -> None:
    parsed = event_time({"date": day.isoformat(), "timeZone": "Europe/Paris"})
    assert parsed == day and not isinstance(parsed, datetime)


@pytest.mark.parametrize("when", [{}, {"dateTime": ""}, {"date": "tomorrow"}, {"dateTime": "noon"}, {"date": None}])
def test_neither_a_time_nor_a_date_is_an_error(when: dict[str, str | None]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        event_time(when)


def test_zone_names() -> None:
    assert zone_named("Europe/Paris") == ZoneInfo("Europe/Paris")
    assert zone_named("Not/AZone") is None and zone_named("") is None and zone_named(None) is None
    assert zone_named("../etc/passwd") is None


@given(st.floats(min_value=0, max_value=86_400 * 365, allow_nan=False))
def test_at_least_never_rounds_a_wait_down_and_adds_less_than_a_microsecond(seconds: float) -> None:
    waited = at_least(seconds)
    assert waited.total_seconds() >= seconds - 1e-9 * max(1.0, seconds)  # float's own error only
    assert waited - timedelta(seconds=seconds) < timedelta(microseconds=2)


def test_at_least_rounds_up_where_timedelta_rounds_to_the_nearest() -> None:
    assert timedelta(seconds=1.0000004) == timedelta(seconds=1)  # early by 0.4 µs
    assert at_least(1.0000004) == timedelta(seconds=1, microseconds=1)
    assert at_least(2.5) == timedelta(seconds=2.5)


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(minutes=3), usegmt=True), now) == 180
    assert parse_retry_after(format_datetime(now - timedelta(minutes=3), usegmt=True), now) == 0
    assert parse_retry_after("-5", now) == 0
    for unreadable in ("soon", "nan", "inf", "", None):
        assert parse_retry_after(unreadable, now) is None


@pytest.mark.parametrize(
    ("moment", "hours"),
    [
        (datetime(2026, 12, 6, 12, 0, tzinfo=UTC), 24),
        (datetime(2026, 3, 8, 12, 0, tzinfo=UTC), 23),  # the clocks go forward in the night
        (datetime(2026, 11, 1, 12, 0, tzinfo=UTC), 25),  # and back
    ],
)
def test_a_quota_day_lasts_as_long_as_the_pacific_day(moment: datetime, hours: int) -> None:
    """The day's plan counted 86,400 s from its start: on the 25-hour day its last hour had no
    time left (nothing stretched, its calls never projected); on the 23-hour day, an hour too many."""
    assert day_ends(moment) - day_started(moment) == timedelta(hours=hours)
    assert quota_day(day_ends(moment)) != quota_day(moment) == quota_day(day_ends(moment) - timedelta(seconds=1))


def test_the_quota_day_ends_at_midnight_pacific() -> None:
    assert quota_day(datetime(2026, 12, 6, 7, 59, tzinfo=UTC)) == 20261205
    assert quota_day(datetime(2026, 12, 6, 8, 0, tzinfo=UTC)) == 20261206
