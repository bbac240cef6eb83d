"""calsync's expansion against the emulator's, on random series (no database: the mirror's rows
are what Google's full listing holds), plus cases worked out by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings

from calsync.readmodels.occurrences import CalendarMirror, check_window, instance_id, parse_instant
from tests.occurrence_support import CALENDAR_ZONES, EmulatorApi, Scenario, scenarios, write_scenario
from tests.sync_support import google_view

OWNER = "olga@example.com"


def _mirror(emu: Any, calendar_id: str, zone: str) -> CalendarMirror:
    return CalendarMirror(google_view(emu, calendar_id).values(), zone)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_expansion_equals_the_emulators_item_for_item(emu: Any, scenario: Scenario) -> None:
    emu.reset()
    emu.create_user(OWNER)
    api = EmulatorApi(emu, OWNER)
    zone = CALENDAR_ZONES[len(scenario.series) % len(CALENDAR_ZONES)]
    calendar_id = emu.create_calendar(OWNER, "random", time_zone=zone)
    write_scenario(emu, api, calendar_id, scenario)
    mirror = _mirror(emu, calendar_id, zone)
    for low, high in scenario.windows:
        expected = api.single_events(calendar_id, low, high)
        got = [o.item() for o in mirror.occurrences(low, high)]
        assert [e["id"] for e in got] == [e["id"] for e in expected]
        assert got == expected


# Cases worked out by hand ---------------------------------------------------------------------------
def _series(rule: list[str], start: str, end: str, zone: str = "America/New_York", **extra: Any) -> dict[str, Any]:
    return {
        "id": "s1",
        "status": "confirmed",
        "summary": "standup",
        "recurrence": rule,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        **extra,
    }


def _window(low: str, high: str) -> tuple[datetime, datetime]:
    return parse_instant(low), parse_instant(high)


def test_wall_time_is_kept_across_dst_and_ids_are_utc() -> None:
    series = _series(["RRULE:FREQ=WEEKLY;COUNT=3"], "2026-03-01T09:00:00-05:00", "2026-03-01T10:00:00-05:00")
    window = _window("2026-02-01T00:00:00Z", "2026-04-01T00:00:00Z")
    items = [o.item() for o in CalendarMirror([series], "UTC").occurrences(*window)]
    assert [i["start"]["dateTime"] for i in items] == [
        "2026-03-01T09:00:00-05:00",
        "2026-03-08T09:00:00-04:00",
        "2026-03-15T09:00:00-04:00",
    ]
    assert [i["id"] for i in items] == ["s1_20260301T140000Z", "s1_20260308T130000Z", "s1_20260315T130000Z"]
    assert items[1]["originalStartTime"] == {"dateTime": "2026-03-08T09:00:00-04:00", "timeZone": "America/New_York"}
    assert items[1]["recurringEventId"] == "s1" and "recurrence" not in items[1]


def test_a_wall_time_in_the_dst_gap_moves_forward_by_the_gap() -> None:
    series = _series(["RRULE:FREQ=DAILY;COUNT=3"], "2026-03-07T02:30:00-05:00", "2026-03-07T03:30:00-05:00")
    window = _window("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")
    items = [o.item() for o in CalendarMirror([series], "UTC").occurrences(*window)]
    assert items[1]["start"]["dateTime"] == "2026-03-08T03:30:00-04:00"
    assert items[1]["end"]["dateTime"] == "2026-03-08T04:30:00-04:00"
    assert items[1]["id"] == "s1_20260308T073000Z"


def test_exceptions_exdates_rdates_and_cancellations() -> None:
    series = _series(
        [
            "RRULE:FREQ=DAILY;COUNT=5",
            "EXDATE;TZID=America/New_York:20260602T090000",
            "RDATE;TZID=America/New_York:20260610T120000",
        ],
        "2026-06-01T09:00:00-04:00",
        "2026-06-01T09:30:00-04:00",
    )
    moved_out = {
        "id": "s1_20260603T130000Z",
        "status": "confirmed",
        "recurringEventId": "s1",
        "summary": "later",
        "originalStartTime": {"dateTime": "2026-06-03T09:00:00-04:00", "timeZone": "America/New_York"},
        "start": {"dateTime": "2026-07-01T09:00:00-04:00"},
        "end": {"dateTime": "2026-07-01T10:00:00-04:00"},
    }
    cancelled = {
        "id": "s1_20260604T130000Z",
        "status": "cancelled",
        "recurringEventId": "s1",
        "originalStartTime": {"dateTime": "2026-06-04T09:00:00-04:00", "timeZone": "America/New_York"},
    }
    mirror = CalendarMirror([series, moved_out, cancelled], "UTC")
    june = [o.id for o in mirror.occurrences(*_window("2026-06-01T00:00:00Z", "2026-06-30T00:00:00Z"))]
    assert june == ["s1_20260601T130000Z", "s1_20260605T130000Z", "s1_20260610T160000Z"]
    july = [o.item() for o in mirror.occurrences(*_window("2026-07-01T00:00:00Z", "2026-07-02T00:00:00Z"))]
    assert july == [moved_out]


def test_bysetpos_last_weekday_of_the_month_and_all_day_ids() -> None:
    series = {
        "id": "pay",
        "status": "confirmed",
        "start": {"date": "2026-01-30"},
        "end": {"date": "2026-01-31"},
        "recurrence": ["RRULE:FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1;COUNT=3"],
    }
    items = [
        o.item()
        for o in CalendarMirror([series], "Europe/Berlin").occurrences(
            *_window("2026-01-01T00:00:00Z", "2026-12-31T00:00:00Z")
        )
    ]
    assert [i["start"]["date"] for i in items] == ["2026-01-30", "2026-02-27", "2026-03-31"]
    assert [i["id"] for i in items] == ["pay_20260130", "pay_20260227", "pay_20260331"]
    assert items[0]["originalStartTime"] == {"date": "2026-01-30"}


def test_window_edges_are_exclusive_and_all_day_days_are_in_the_calendar_zone() -> None:
    day = {"id": "d", "status": "confirmed", "start": {"date": "2026-05-04"}, "end": {"date": "2026-05-05"}}
    mirror = CalendarMirror([day], "Australia/Sydney")  # the day is 2026-05-03T14:00Z to 2026-05-04T14:00Z
    assert mirror.occurrences(*_window("2026-05-04T14:00:00Z", "2026-05-05T00:00:00Z")) == []
    assert mirror.occurrences(*_window("2026-05-03T00:00:00Z", "2026-05-03T14:00:00Z")) == []
    [hit] = mirror.occurrences(*_window("2026-05-04T13:59:00Z", "2026-05-05T00:00:00Z"))
    assert hit.start == datetime(2026, 5, 3, 14, tzinfo=UTC)


def test_window_checks_and_ids() -> None:
    with pytest.raises(ValueError, match="later"):
        check_window(*_window("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"))
    with pytest.raises(ValueError, match="366 days"):
        check_window(*_window("2026-01-01T00:00:00Z", "2027-01-03T00:00:00Z"))
    with pytest.raises(ValueError, match="offset"):
        parse_instant("2026-01-01T00:00:00")
    with pytest.raises(ValueError, match="out of range"):  # before the first instant in UTC
        parse_instant("0001-01-01T00:02:01+00:11")
    assert instance_id("x", datetime(2026, 1, 1, 9, tzinfo=UTC)) == "x_20260101T090000Z"


def test_a_refreshed_mirror_equals_one_parsed_afresh_and_keeps_unchanged_series() -> None:
    weekly = _series(
        ["RRULE:FREQ=WEEKLY"],
        "2026-01-05T09:00:00-05:00",
        "2026-01-05T10:00:00-05:00",
        updated="2026-01-01T00:00:00.000Z",
    )
    daily = dict(
        _series(["RRULE:FREQ=DAILY"], "2026-01-05T12:00:00-05:00", "2026-01-05T12:30:00-05:00"),
        id="s2",
        updated="2026-01-01T00:00:00.000Z",
    )
    lone = {
        "id": "one",
        "status": "confirmed",
        "updated": "2026-01-01T00:00:00.000Z",
        "start": {"dateTime": "2026-01-06T15:00:00Z"},
        "end": {"dateTime": "2026-01-06T16:00:00Z"},
    }
    old = CalendarMirror([weekly, daily, lone], "UTC")
    window = _window("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    assert len(old.busy_blocks(*window)) == 4 + 27 + 1  # four Mondays, 27 days, one meeting
    moved = {
        "id": "s2_20260107T170000Z",
        "status": "confirmed",
        "recurringEventId": "s2",
        "updated": "2026-01-02T00:00:00.000Z",
        "originalStartTime": {"dateTime": "2026-01-07T12:00:00-05:00", "timeZone": "America/New_York"},
        "start": {"dateTime": "2026-01-07T09:30:00-05:00"},
        "end": {"dateTime": "2026-01-07T10:30:00-05:00"},
    }
    renamed = dict(weekly, summary="renamed", updated="2026-01-02T00:00:00.000Z")
    new = old.refreshed([moved, renamed], ["one"])
    fresh = CalendarMirror([renamed, daily, moved], "UTC")
    assert [o.item() for o in new.occurrences(*window)] == [o.item() for o in fresh.occurrences(*window)]
    assert new.busy_blocks(*window) == fresh.busy_blocks(*window)
    blocks = new.busy_blocks(*window)
    assert (datetime(2026, 1, 7, 14, 30, tzinfo=UTC), datetime(2026, 1, 7, 15, 30, tzinfo=UTC)) in blocks
    assert (datetime(2026, 1, 7, 17, tzinfo=UTC), datetime(2026, 1, 7, 17, 30, tzinfo=UTC)) not in blocks
    assert len(blocks) == 4 + 27
    assert next(s for s in new.series if s.id == "s2") is next(s for s in old.series if s.id == "s2")
    assert old.versions()["one"] and "one" not in new.versions()
    # A window far from those asked before is answered as well (the merged span moves).
    later = _window("2029-01-01T00:00:00Z", "2029-01-08T00:00:00Z")
    assert new.busy_blocks(*later) == fresh.busy_blocks(*later) and len(new.busy_blocks(*later)) == 8


def test_fractions_of_a_second_in_a_window_are_ignored_as_google_does() -> None:
    lone = {
        "id": "nine",
        "status": "confirmed",
        "start": {"dateTime": "2030-01-01T09:00:00Z"},
        "end": {"dateTime": "2030-01-01T10:00:00Z"},
    }
    mirror = CalendarMirror([lone], "UTC")
    assert parse_instant("2030-01-01T09:00:00.500Z") == datetime(2030, 1, 1, 9, tzinfo=UTC)
    assert mirror.occurrences(*_window("2030-01-01T08:00:00Z", "2030-01-01T09:00:00.500Z")) == []


def test_past_the_remembered_limit_windows_are_expanded_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    from calsync.readmodels import occurrences

    series = _series(["RRULE:FREQ=DAILY"], "2026-01-01T09:00:00-05:00", "2026-01-01T10:00:00-05:00")
    window = _window("2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z")
    expected = [o.item() for o in CalendarMirror([series], "UTC").occurrences(*window)]
    monkeypatch.setattr(occurrences, "MAX_REMEMBERED", 10)
    capped = CalendarMirror([series], "UTC")
    assert [o.item() for o in capped.occurrences(*window)] == expected and len(expected) == 7
    assert capped.busy_blocks(*window) == [(o.start, o.end) for o in capped.occurrences(*window)]
    assert len(capped.series[0]._starts) == 10  # the first ten kept, the rest not


@pytest.mark.parametrize(
    "rule",
    [
        "RRULE:FREQ=DAILY",
        "RRULE:FREQ=DAILY;INTERVAL=3",
        "RRULE:FREQ=DAILY;COUNT=2000",
        "RRULE:FREQ=DAILY;COUNT=600",
        "RRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH",
        "RRULE:FREQ=WEEKLY;COUNT=400",
        "RRULE:FREQ=HOURLY;INTERVAL=7",
        "RRULE:FREQ=MONTHLY;BYMONTHDAY=31",
        "RRULE:FREQ=MONTHLY;BYDAY=-1FR",
        "RRULE:FREQ=MONTHLY;COUNT=30",
        "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=2SU",
        "RRULE:FREQ=DAILY;UNTIL=20320310T000000Z",
        "RRULE:FREQ=DAILY;BYHOUR=9,17;COUNT=2000",  # two a day: the skip counted one a period, and ran on
    ],
)
def test_windows_past_the_remembered_limit_equal_the_walk_from_dtstart(
    monkeypatch: pytest.MonkeyPatch, rule: str
) -> None:
    """Past the limit, a window's expansion starts near it, not at DTSTART: the same occurrences."""
    from calsync.readmodels import occurrences

    series = _series(
        [rule, "EXDATE;TZID=America/New_York:20320304T090000"], "2026-01-31T09:00:00-05:00", "2026-01-31T10:00:00-05:00"
    )
    windows = [
        _window("2032-03-01T00:00:00Z", "2032-03-20T00:00:00Z"),
        _window("2027-08-01T00:00:00Z", "2028-08-01T00:00:00Z"),
        _window("2028-10-01T00:00:00Z", "2029-03-01T00:00:00Z"),  # where a COUNT of two a day ends
    ]
    expected = [[o.item() for o in CalendarMirror([series], "UTC").occurrences(*w)] for w in windows]
    monkeypatch.setattr(occurrences, "MAX_REMEMBERED", 3)
    capped = CalendarMirror([series], "UTC")
    assert [[o.item() for o in capped.occurrences(*w)] for w in windows] == expected
    assert any(expected)


def test_free_busy_in_the_year_9997_of_an_endless_daily_series_is_quick_and_right() -> None:
    """The walk from DTSTART to the window cost 2.9 million steps (seconds of CPU per question)."""
    series = _series(["RRULE:FREQ=DAILY"], "2026-01-01T09:00:00-05:00", "2026-01-01T10:00:00-05:00")
    mirror = CalendarMirror([series], "UTC")
    started = time.process_time()
    busy = mirror.busy_blocks(*_window("9997-06-01T00:00:00Z", "9997-06-08T00:00:00Z"))
    assert time.process_time() - started < 1.0
    new_york = ZoneInfo("America/New_York")
    assert busy == [
        (
            datetime(9997, 6, d, 9, tzinfo=new_york).astimezone(UTC),
            datetime(9997, 6, d, 10, tzinfo=new_york).astimezone(UTC),
        )
        for d in range(1, 8)
    ]
    with pytest.raises(ValueError, match="times must be"):
        check_window(*_window("9999-06-01T00:00:00Z", "9999-06-08T00:00:00Z"))


def test_dtstart_on_a_day_the_rule_skips_is_the_first_occurrence_and_busy() -> None:
    """Google lists the start as the first instance even when the rule skips its day (and the rule's
    COUNT then counts the others); the series' first meeting was missing from the occurrences and
    free/busy. When the start matches the rule it is one of its COUNT, once."""
    series = {
        "id": "s1",
        "status": "confirmed",
        "recurrence": ["RRULE:FREQ=WEEKLY;INTERVAL=1;BYDAY=TU,TH,SA;COUNT=5"],
        "start": {"dateTime": "2020-06-08T13:00:00Z", "timeZone": "UTC"},  # a Monday
        "end": {"dateTime": "2020-06-08T14:00:00Z", "timeZone": "UTC"},
    }
    window = parse_instant("2020-06-01T00:00:00Z"), parse_instant("2020-07-01T00:00:00Z")
    mirror = CalendarMirror([series], "UTC")
    days = [o.id.rsplit("_", 1)[1][:8] for o in mirror.occurrences(*window)]
    assert days == ["20200608", "20200609", "20200611", "20200613", "20200616", "20200618"]
    assert (datetime(2020, 6, 8, 13, tzinfo=UTC), datetime(2020, 6, 8, 14, tzinfo=UTC)) in mirror.busy_blocks(*window)
    on_a_tuesday = {
        **series,
        "start": {"dateTime": "2020-06-09T13:00:00Z"},
        "end": {"dateTime": "2020-06-09T14:00:00Z"},
    }
    assert len(list(CalendarMirror([on_a_tuesday], "UTC").occurrences(*window))) == 5


@pytest.mark.parametrize(
    "line",
    [
        "RDATE;VALUE=PERIOD:20260305T090000Z/20260305T100000Z",
        "RRULE:FREQ=WEEKLY;X-FOO=1",
        "RRULE:FREQ=WEEKLY;RSCALE=GREGORIAN;SKIP=OMIT",
    ],
)
def test_a_series_whose_rule_cannot_be_read_is_left_out_alone(line: str) -> None:
    """The rule was read at the first question: its error failed every question about the calendar
    (free/busy answered 500, a listing blamed its pageToken)."""
    good = {
        "id": "g",
        "status": "confirmed",
        "start": {"dateTime": "2026-03-02T09:00:00Z"},
        "end": {"dateTime": "2026-03-02T10:00:00Z"},
    }
    series = {
        "id": "s",
        "status": "confirmed",
        "recurrence": [line],
        "start": {"dateTime": "2026-03-02T09:00:00+01:00", "timeZone": "Europe/Paris"},
        "end": {"dateTime": "2026-03-02T10:00:00+01:00", "timeZone": "Europe/Paris"},
    }
    mirror = CalendarMirror([series, good], "UTC")
    window = parse_instant("2026-03-01T00:00:00Z"), parse_instant("2026-04-01T00:00:00Z")
    assert [o.id for o in mirror.occurrences(*window)] == ["g"]
    assert mirror.busy_blocks(*window) == [(datetime(2026, 3, 2, 9, tzinfo=UTC), datetime(2026, 3, 2, 10, tzinfo=UTC))]


def test_a_trailing_semicolon_in_a_rule_is_harmless() -> None:
    series = {
        "id": "s",
        "status": "confirmed",
        "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=3;"],
        "start": {"dateTime": "2026-03-02T09:00:00Z", "timeZone": "UTC"},
        "end": {"dateTime": "2026-03-02T10:00:00Z", "timeZone": "UTC"},
    }
    window = parse_instant("2026-03-01T00:00:00Z"), parse_instant("2026-04-01T00:00:00Z")
    assert len(CalendarMirror([series], "UTC").occurrences(*window)) == 3


@pytest.mark.parametrize(
    ("rule", "start"),
    [("RRULE:FREQ=DAILY;BYHOUR=2,3;COUNT=6", "2026-03-07T02:00:00-05:00"), ("RRULE:FREQ=HOURLY;COUNT=5", None)],
)
def test_a_wall_time_in_the_dst_gap_moved_onto_the_next_instance_is_one_instance(rule: str, start: str | None) -> None:
    """02:00 does not exist in New York on 8 March 2026: moved forward by the gap, it landed on the
    rule's own 03:00, and two occurrences had one id."""
    begin = start or "2026-03-08T00:00:00-05:00"
    series = {
        "id": "s1",
        "status": "confirmed",
        "recurrence": [rule],
        "start": {"dateTime": begin, "timeZone": "America/New_York"},
        "end": {"dateTime": begin.replace(":00:00-", ":30:00-"), "timeZone": "America/New_York"},
    }
    window = parse_instant("2026-03-07T00:00:00Z"), parse_instant("2026-03-10T00:00:00Z")
    ids = [o.id for o in CalendarMirror([series], "UTC").occurrences(*window)]
    assert len(ids) == len(set(ids)) and "s1_20260308T070000Z" in ids


def test_a_refresh_that_cannot_place_an_events_new_version_drops_its_old_one() -> None:
    """A mirror kept for hours is refreshed, not rebuilt: an event changed into a shape calsync cannot
    place (here a series with a period RDATE) must not go on answering its earlier time, which a
    mirror built afresh would not show, and must not be read again at every question."""
    one = {
        "id": "e1",
        "status": "confirmed",
        "etag": '"1"',
        "updated": "2026-01-01T00:00:00.000Z",
        "start": {"dateTime": "2026-01-06T15:00:00Z"},
        "end": {"dateTime": "2026-01-06T16:00:00Z"},
    }
    two = dict(
        one,
        etag='"2"',
        updated="2026-01-02T00:00:00.000Z",
        start={"dateTime": "2026-01-08T15:00:00Z", "timeZone": "UTC"},
        end={"dateTime": "2026-01-08T16:00:00Z", "timeZone": "UTC"},
        recurrence=["RRULE:FREQ=WEEKLY;COUNT=2", "RDATE;VALUE=PERIOD:20260120T150000Z/PT1H"],
    )
    window = _window("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    old = CalendarMirror([one], "UTC")
    assert old.busy_blocks(*window)
    refreshed, fresh = old.refreshed([two], []), CalendarMirror([two], "UTC")
    assert refreshed.busy_blocks(*window) == fresh.busy_blocks(*window) == []
    assert refreshed.occurrences(*window) == []
    assert refreshed.versions()["e1"] == ('"2"', "2026-01-02T00:00:00.000Z")  # held: not read again


def test_a_far_future_window_is_expanded_afresh_and_not_remembered() -> None:
    """The web process keeps parsed calendars for hours: a question about the year 2150 (anyone with
    the API token can ask one) must not make each endless series remember 130 years of occurrences."""
    daily = {
        "id": "d1",
        "status": "confirmed",
        "etag": '"1"',
        "updated": "2020-01-01T00:00:00.000Z",
        "start": {"dateTime": "2020-01-01T09:00:00Z", "timeZone": "UTC"},
        "end": {"dateTime": "2020-01-01T09:30:00Z", "timeZone": "UTC"},
        "recurrence": ["RRULE:FREQ=DAILY"],
    }
    mirror = CalendarMirror([daily], "UTC")
    far = _window("2150-03-01T00:00:00Z", "2150-03-08T00:00:00Z")
    found = mirror.occurrences(*far)
    assert [o.start for o in found] == [datetime(2150, 3, d, 9, tzinfo=UTC) for d in range(1, 8)]
    assert mirror.series[0]._starts == []  # nothing kept for it
    near = _window("2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z")
    assert len(mirror.occurrences(*near)) == 7
    assert 2_000 < len(mirror.series[0]._starts) < 2_500  # 2020 to the week asked, kept for the next question
    assert [o.start for o in mirror.occurrences(*far)] == [o.start for o in found]
