"""How active a calendar is: its rate of changes, decayed, kept in one column the sync's commit writes.

The daily quota stretches the reconciliations of the least active calendars first. "Least active"
cannot be the time since the last change: a calendar changed fifteen times a day is quiet all
night, and would stretch like an idle one. Instead each sync that finds a change adds one to a
count that decays by e every `TAU` seconds, divided by how long the calendar has been watched
(also decayed, plus `PRIOR` so a single early change does not make a calendar look busy): an
exponentially weighted rate of changes. A busy calendar keeps its rate overnight (×0.8 after
14 h); an idle one's falls away.

The column holds `ln(rate at the last change) + (last change - EPOCH) / TAU`, so that the rate at
any later time is `exp(activity - (now - EPOCH) / TAU)`: no other column needed, and "rate below r
at `now`" is `activity <= constant`, one comparison a plain SQL scan can count. NULL means no
change measured yet (a calendar connected before the column came, not changed since).

A newly connected calendar has no history of syncs, but its first listing has one: each event's
`updated`. The events updated within `RECENT` before the first sync give its starting rate
(`from_first_sync`), so a busy calendar connected in a mass onboarding is busy from its first sync
on. One event edited several times counts once, so this errs towards quiet.
"""

from __future__ import annotations

import math

TAU = 3 * 86400.0  # the rate's memory: a weekend away from a busy calendar slows it ≈ 2.4 times
PRIOR = 86400.0  # seconds of watching credited before the first: one change reads as one a day
EPOCH = 1_700_000_000.0  # any fixed instant; keeps the stored numbers small
RECENT = 7 * 86400.0  # the first listing's events updated within this long count towards its rate
_MAX_EXP = 700.0  # exp() of more overflows a float: such a calendar is idle for any purpose


def _exposure(age: float) -> float:
    """The decayed length of watching (seconds) after `age` seconds: PRIOR at first, TAU in the end."""
    return TAU + (PRIOR - TAU) * math.exp(-max(0.0, age) / TAU)


def rate(activity: float | None, now: float) -> float:
    """Changes per second at `now` (0.0 when nothing was measured)."""
    if activity is None:
        return 0.0
    return math.exp(max(-_MAX_EXP, min(_MAX_EXP, activity - (now - EPOCH) / TAU)))


def expected_gap(activity: float, now: float) -> float:
    """Seconds between changes at the measured rate: what the stretch is proportional to."""
    return math.exp(min(_MAX_EXP, (now - EPOCH) / TAU - activity))


def gap_bound(gap: float, now: float) -> float:
    """The `activity` at or below which a calendar's expected gap at `now` is at least `gap` seconds."""
    return (now - EPOCH) / TAU - math.log(gap)


def after_change(activity: float | None, *, last_change: float | None, created: float, now: float) -> float:
    """The column's value once a sync at `now` found a change.

    The previous rate is turned back into its decayed count (rate × exposure at the last change),
    decayed to now, and one is added; the new rate is that count over the exposure now.
    """
    count = 1.0
    if activity is not None and last_change is not None:
        before = rate(activity, last_change) * _exposure(last_change - created)
        count += before * math.exp(-max(0.0, now - last_change) / TAU)
    return math.log(count / _exposure(now - created)) + (now - EPOCH) / TAU


def from_first_sync(recent: int, *, now: float) -> float | None:
    """The column's value after a first sync that listed `recent` events updated within `RECENT`.

    None when none was: the calendar's last change (the newest `updated`) then stands in. Later
    changes go on from this rate as from a measured one (`after_change` counts it back as
    rate × `PRIOR` changes).
    """
    if recent <= 0:
        return None
    return math.log(recent / RECENT) + (now - EPOCH) / TAU
