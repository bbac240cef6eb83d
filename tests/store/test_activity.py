"""A calendar's decayed change rate: busy ones stay busy through a night, idle ones read as idle,
one early change does not make a calendar look busy, and the SQL bound agrees with the gap."""

from __future__ import annotations

import pytest

from calsync.store.activity import EPOCH, after_change, expected_gap, from_first_sync, gap_bound, rate

DAY = 86400.0
START = EPOCH + 1000 * DAY


def _changes(times: list[float], created: float) -> float | None:
    activity: float | None = None
    last: float | None = None
    for t in times:
        activity = after_change(activity, last_change=last, created=created, now=t)
        last = t
    return activity


def test_a_busy_calendar_keeps_its_rate_through_the_night() -> None:
    # Fifteen changes in each working day (08:00-18:00) for two weeks.
    times = [START + d * DAY + 8 * 3600 + i * 2400 for d in range(14) for i in range(15)]
    activity = _changes(times, created=START)
    assert activity is not None
    morning = START + 14 * DAY + 7 * 3600  # 13 h after the last change
    assert 1.5 * 3600 < expected_gap(activity, morning) < 2.5 * 3600  # ≈ 24 h / 15, not 13 h
    assert rate(activity, morning) * DAY == pytest.approx(15, rel=0.3)


def test_an_idle_calendar_reads_as_idle_and_its_rate_falls_away() -> None:
    times = [START + d * 30 * DAY for d in range(4)]  # a change a month
    activity = _changes(times, created=START - 60 * DAY)
    assert activity is not None
    at = times[-1] + DAY
    assert expected_gap(activity, at) > 3 * DAY
    assert expected_gap(activity, at + 10 * DAY) > 20 * expected_gap(activity, at)
    assert rate(None, at) == 0.0


def test_one_change_just_after_connecting_reads_as_one_a_day() -> None:
    activity = _changes([START + 600], created=START)
    assert activity is not None
    assert expected_gap(activity, START + 600) == pytest.approx(DAY, rel=0.02)


@pytest.mark.parametrize("gap", [3600.0, 7200.0, 5 * DAY])
def test_the_sql_bound_agrees_with_the_gap(gap: float) -> None:
    activity = _changes([START + i * 3000 for i in range(20)], created=START - DAY)
    assert activity is not None
    for now in (START + DAY, START + 3 * DAY, START + 9 * DAY):
        assert (activity <= gap_bound(gap, now)) == (expected_gap(activity, now) >= gap)


def test_a_first_listing_gives_its_rate_and_later_changes_go_on_from_it() -> None:
    assert from_first_sync(0, now=START) is None  # nothing updated recently: no rate to give
    activity = from_first_sync(105, now=START)  # 105 events updated in the week: 15 a day
    assert activity is not None
    assert rate(activity, START) * DAY == pytest.approx(15)
    after = after_change(activity, last_change=START - 600, created=START, now=START + 3600)
    assert rate(after, START + 3600) * DAY == pytest.approx(15, rel=0.1)  # one more change: still busy
