"""Occurrences of the mirrored events in a window, as Google's `events.list?singleEvents=true` lists them.

This is calsync's own expansion, written apart from the emulator's on purpose: the tests check
the two against each other, so a shared mistake would hide. A timed series is expanded by
dateutil in the naive wall time of its `start.timeZone` and each wall time is then placed in that
zone (a time inside a DST gap takes the offset before the gap, as RFC 5545 says, and is shown
normalised); an all-day series expands as dates, which stand at midnight in the calendar's zone
for window tests and ordering. The expansion of each series is remembered and only extended,
so a series begun ten years ago costs its history once, not on every question.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, NamedTuple

from dateutil import rrule
from dateutil.parser import isoparse

from calsync.clock import event_datetime, event_time, zone_named
from calsync.store.jsontext import loads

MAX_WINDOW = timedelta(days=366)
# The years a window may lie in: far enough from datetime's limits for every widening of it.
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 1, 1, tzinfo=UTC)
# Occurrences remembered per series at most (a daily series over 130 years); windows beyond are
# expanded afresh on each question instead of being kept.
MAX_REMEMBERED = 50_000
# How far past now a series' occurrences are remembered: a question about a later window is expanded
# afresh from near it. One question about the year 2150 made every endless series of the calendar
# remember 130 years of occurrences (6-8 MB each) for the life of the process.
REMEMBER_AHEAD = timedelta(days=5 * 366)
# Slack around a window when bisecting remembered starts: DST moves a wall-time end by hours.
_SLACK = timedelta(days=2)
_UNTIL = re.compile(r"(UNTIL=)([0-9]{8}(?:T[0-9]{6}Z?)?)", re.IGNORECASE)


def zone_of(name: str | None) -> tzinfo:
    """The zone for an IANA name; UTC when there is none or it is unknown."""
    return zone_named(name) or UTC


def known_zone(name: str) -> bool:
    """Whether an IANA zone name is known here."""
    return zone_named(name) is not None


def render(moment: datetime) -> str:
    """RFC 3339 with the zone's real offset at that instant, seconds precision, `Z` for UTC."""
    zone = moment.tzinfo or UTC
    text = moment.astimezone(UTC).astimezone(zone).isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def instance_id(series_id: str, original: datetime | date) -> str:
    """Google's id of an occurrence: the series id and the original start (UTC, or the date)."""
    if isinstance(original, datetime):
        return f"{series_id}_{original.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    return f"{series_id}_{original:%Y%m%d}"


def midnight(day: date, zone: tzinfo) -> datetime:
    """The instant a day begins in a zone (an all-day event's edge), in UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def is_busy(data: dict[str, Any]) -> bool:
    """Busy unless shown as available, cancelled, or declined by the calendar's own attendee entry."""
    if data.get("transparency") == "transparent" or data.get("status") == "cancelled":
        return False
    for attendee in data.get("attendees") or ():
        if isinstance(attendee, dict) and attendee.get("self") and attendee.get("responseStatus") == "declined":
            return False
    return True


class Occurrence(NamedTuple):
    """One item of the expanded listing: its instants, and how to build its JSON."""

    start: datetime  # aware UTC; an all-day start is midnight in the calendar's zone
    end: datetime
    id: str
    all_day: bool
    source: dict[str, Any] | str  # the event (its JSON text when read so), or for a generated one its series
    busy: bool
    series: _Series | None = None
    original: datetime | date | None = None  # generated: the local start (aware) or the date

    def item(self) -> dict[str, Any]:
        """The Event JSON Google lists for this occurrence."""
        if self.series is None or self.original is None:
            return loads(self.source) if isinstance(self.source, str) else self.source
        return self.series.instance(self.original)


class _Series:
    """A recurring event and the occurrences generated so far (extended on demand, never shrunk).

    Each generated occurrence is kept with its instants and id, so a question about any window
    already covered is two bisections and a slice.
    """

    def __init__(self, data: dict[str, Any], cal_zone: tzinfo) -> None:
        self.data = data
        self.id = str(data["id"])
        self.cal_zone = cal_zone
        self.busy = is_busy(data)
        start, end = data["start"], data.get("end") or data["start"]
        self.all_day = not start.get("dateTime")
        if self.all_day:
            first = date.fromisoformat(start["date"])
            self.days = date.fromisoformat(end.get("date") or start["date"]) - first
            self._dtstart = datetime(first.year, first.month, first.day)
            self.zone: tzinfo = cal_zone
            self.zone_name = None
            self.end_zone_name = None
            self.duration = timedelta(0)
            self.longest = self.days + timedelta(days=1)
        else:
            self.zone_name = start.get("timeZone")
            self.end_zone_name = end.get("timeZone") or self.zone_name
            begin = event_datetime(start["dateTime"], self.zone_name)
            self.zone = zone_of(self.zone_name) if self.zone_name else (begin.tzinfo or UTC)
            self._dtstart = begin.astimezone(self.zone).replace(tzinfo=None)
            finish = event_datetime(end["dateTime"], end.get("timeZone") or self.zone_name)
            self.duration = finish.astimezone(self.zone).replace(tzinfo=None) - self._dtstart
            self.days = timedelta(0)
            self.longest = self.duration
        # Its rules read now, not at the first question: a line that cannot be read (an X- part, a
        # PERIOD) drops this series alone, as any malformed event is, instead of failing every
        # question about its calendar (free/busy answered 500, a listing blamed its pageToken).
        _rule_set(data.get("recurrence") or [], self._dtstart, self.all_day, self.zone)
        self._generator: Iterator[datetime] | None = None
        self._starts: list[datetime] = []  # UTC instants, in generation (= start) order
        self._ends: list[datetime] = []
        self._originals: list[datetime | date] = []  # the aware local start, or the date
        self._horizon: datetime | None = None  # start of the last occurrence generated
        self._exhausted = False
        self._capped = False  # MAX_REMEMBERED reached: windows beyond are expanded afresh, not kept
        self._remember_until = datetime.now(UTC) + REMEMBER_AHEAD
        self._lock = threading.Lock()

    def between(self, low: datetime, high: datetime, hidden: set[datetime | date]) -> list[Occurrence]:
        """Generated occurrences overlapping [low, high), except the originals in `hidden`."""
        starts, ends, originals, first, last = self._window(low, high)
        out = []
        for i in range(first, last):
            start, end = starts[i], ends[i]
            if start >= high or end <= low:
                continue
            original = originals[i]
            if hidden and (original if self.all_day else start) in hidden:
                continue
            out.append(
                Occurrence(
                    start, end, instance_id(self.id, original), self.all_day, self.data, self.busy, self, original
                )
            )
        return out

    def busy_spans(
        self, low: datetime, high: datetime, hidden: set[datetime | date], out: list[tuple[datetime, datetime]]
    ) -> None:
        """Append the busy generated occurrences overlapping [low, high) to `out`."""
        if not self.busy:
            return
        starts, ends, originals, first, last = self._window(low, high)
        for i in range(first, last):
            start, end = starts[i], ends[i]
            if start >= high or end <= low:
                continue
            if hidden and (originals[i] if self.all_day else start) in hidden:
                continue
            out.append((start, end))

    def instance(self, original: datetime | date) -> dict[str, Any]:
        """The JSON of the unmodified occurrence at `original`: the series' fields, its own times."""
        data = {k: v for k, v in self.data.items() if k != "recurrence"}
        data["id"] = instance_id(self.id, original)
        if isinstance(original, datetime):
            end = _place(original.replace(tzinfo=None) + self.duration, self.zone)
            data["start"] = _when(original, self.zone_name)
            data["end"] = _when(end, self.end_zone_name)
            data["originalStartTime"] = _when(original, self.zone_name)
        else:
            data["start"] = {"date": original.isoformat()}
            data["end"] = {"date": (original + self.days).isoformat()}
            data["originalStartTime"] = {"date": original.isoformat()}
        data["recurringEventId"] = self.id
        return data

    def _window(
        self, low: datetime, high: datetime
    ) -> tuple[list[datetime], list[datetime], list[datetime | date], int, int]:
        """Arrays holding every occurrence that may overlap [low, high), and the index range to look at:
        the remembered ones, or past the remembered limit a one-off expansion of the window."""
        until = high + _SLACK
        with self._lock:
            if until <= self._remember_until:
                self._extend(until)
            remembered = not self._capped or (self._horizon is not None and self._horizon >= until)
            if remembered and (until <= self._remember_until or self._exhausted):
                starts = self._starts
                return (
                    starts,
                    self._ends,
                    self._originals,
                    bisect.bisect_left(starts, low - self.longest - _SLACK),
                    bisect.bisect_left(starts, until),
                )
        starts, ends, originals = [], [], []
        near = (low - self.longest - _SLACK).astimezone(self.zone).replace(tzinfo=None)
        for wall in _rule_set(self.data.get("recurrence") or [], self._dtstart, self.all_day, self.zone, near):
            original, start, end = self._placed(wall)
            if start >= until:
                break
            if starts and start == starts[-1]:
                continue  # as in `_extend`: a DST gap's wall time moved onto the next one
            if end > low - _SLACK:
                starts.append(start)
                ends.append(end)
                originals.append(original)
        return starts, ends, originals, 0, len(starts)

    def _placed(self, wall: datetime) -> tuple[datetime | date, datetime, datetime]:
        """An occurrence's original (aware local start, or date) and its UTC start and end."""
        if self.all_day:
            day = wall.date()
            return day, midnight(day, self.cal_zone), midnight(day + self.days, self.cal_zone)
        start = wall.replace(tzinfo=self.zone).astimezone(UTC)
        original = start.astimezone(self.zone)  # normalised: a time in a DST gap moves past it
        end = (original.replace(tzinfo=None) + self.duration).replace(tzinfo=self.zone).astimezone(UTC)
        return original, start, end

    def _extend(self, until: datetime) -> None:
        if self._generator is None and not self._exhausted:
            self._generator = _rule_set(self.data.get("recurrence") or [], self._dtstart, self.all_day, self.zone)
        while not self._exhausted and not self._capped and (self._horizon is None or self._horizon < until):
            if len(self._starts) >= MAX_REMEMBERED:
                self._capped = True
                break
            wall = next(self._generator, None) if self._generator is not None else None
            if wall is None:
                self._exhausted, self._generator = True, None
                break
            original, start, end = self._placed(wall)
            if self._starts and start == self._starts[-1]:
                continue  # a wall time in a DST gap, moved onto the next one the rule gives: one instance
            self._starts.append(start)
            self._ends.append(end)
            self._originals.append(original)
            self._horizon = start


class _Entry(NamedTuple):
    """One mirrored row, parsed: a series, a placed single event or exception, or only a hidden slot."""

    version: tuple[str | None, str | None]  # (etag, updated): what a refresh compares with the row's
    series: _Series | None
    single: Occurrence | None
    parent: str | None  # the series an exception belongs to
    original: datetime | date | None  # the slot an exception takes from its series


class CalendarMirror:
    """One calendar's mirrored events, parsed, asked for occurrences in any window.

    Immutable once built: `refreshed` makes a new one that shares every unchanged parsed event
    (and so each unchanged series' expansion) with this one.
    """

    def __init__(
        self, rows: Iterable[dict[str, Any] | str], time_zone: str | None, _entries: dict[str, _Entry] | None = None
    ) -> None:
        self.time_zone = time_zone
        self.zone = zone_of(time_zone)
        entries = _entries if _entries is not None else {}
        for row in rows:
            data = loads(row) if isinstance(row, str) else row
            entries[str(data["id"])] = _parse_entry(data, self.zone, row)
        self._entries = entries
        self.series = [e.series for e in entries.values() if e.series is not None]
        self._hidden: dict[str, set[datetime | date]] = {}
        for e in entries.values():
            if e.parent is not None and e.original is not None:
                self._hidden.setdefault(e.parent, set()).add(e.original)
        singles = sorted((e.single for e in entries.values() if e.single is not None), key=lambda o: o.start)
        self._singles = singles
        self._single_starts = [o.start for o in singles]
        self._longest_single = max((o.end - o.start for o in singles), default=timedelta(0))
        self._lock = threading.Lock()
        self._span: tuple[datetime, datetime] | None = None
        self._blocks: list[tuple[datetime, datetime]] = []
        self._block_starts: list[datetime] = []
        self._block_ends: list[datetime] = []

    def versions(self) -> dict[str, tuple[str | None, str | None]]:
        """Each parsed row's (etag, updated), by event id (what a refresh compares).

        The etag, not `updated` alone: Google leaves `updated` as it was when only an event's
        reminders change, and a row compared by `updated` kept its old reminders and etag here."""
        return {event_id: e.version for event_id, e in self._entries.items()}

    def refreshed(self, changed: Iterable[dict[str, Any] | str], removed: Iterable[str]) -> CalendarMirror:
        """A new mirror with these rows (Event JSON, as dicts or text) replaced or added and these ids gone."""
        entries = dict(self._entries)
        for event_id in removed:
            entries.pop(event_id, None)
        return CalendarMirror(changed, self.time_zone, entries)

    def occurrences(self, low: datetime, high: datetime) -> list[Occurrence]:
        """Every occurrence overlapping [low, high) (end > low and start < high), by start then id."""
        found: list[Occurrence] = [o for o in self._singles_near(low, high) if o.end > low]
        for series in self.series:
            found.extend(series.between(low, high, self._hidden.get(series.id, _NOTHING)))
        found.sort(key=lambda o: (o.start, o.id))
        return found

    def busy(self, low: datetime, high: datetime) -> list[tuple[datetime, datetime]]:
        """The (start, end) of every busy occurrence overlapping [low, high), unordered, unclipped."""
        spans = [(o.start, o.end) for o in self._singles_near(low, high) if o.busy and o.end > low]
        for series in self.series:
            series.busy_spans(low, high, self._hidden.get(series.id, _NOTHING), spans)
        return spans

    def busy_blocks(self, low: datetime, high: datetime) -> list[tuple[datetime, datetime]]:
        """The busy time in [low, high): merged blocks (overlapping or touching), clipped, in order.

        Answered from blocks merged once over a span around the windows asked so far, so a
        question inside that span costs a bisection, whatever the number of series.
        """
        with self._lock:
            if self._span is None or low < self._span[0] or high > self._span[1]:
                span_low, span_high = low - _MERGE_BEFORE, high + _MERGE_AFTER
                if self._span is not None and max(high, self._span[1]) - min(low, self._span[0]) <= _MERGE_MAX:
                    span_low, span_high = min(span_low, self._span[0]), max(span_high, self._span[1])
                self._blocks = merge(self.busy(span_low, span_high))
                self._block_starts = [start for start, _ in self._blocks]
                self._block_ends = [end for _, end in self._blocks]
                self._span = (span_low, span_high)
            blocks, ends = self._blocks, self._block_ends
        first = bisect.bisect_right(ends, low)
        last = bisect.bisect_left(self._block_starts, high, lo=first)
        out = blocks[first:last]
        if out:
            out[0] = (max(out[0][0], low), out[0][1])
            out[-1] = (out[-1][0], min(out[-1][1], high))
        return out

    def _singles_near(self, low: datetime, high: datetime) -> list[Occurrence]:
        first = bisect.bisect_left(self._single_starts, low - self._longest_single)
        last = bisect.bisect_left(self._single_starts, high)
        return self._singles[first:last]


_NOTHING: set[datetime | date] = set()
# Busy blocks are merged over the windows asked, widened (most of all into the future, where
# questions go next) so that the merge is redone rarely, up to a bounded span.
_MERGE_BEFORE = timedelta(days=90)
_MERGE_AFTER = timedelta(days=366)
_MERGE_MAX = timedelta(days=3 * 366)


def merge(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Spans merged where they overlap or touch, in order; empty spans dropped."""
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _parse_entry(data: dict[str, Any], zone: tzinfo, row: dict[str, Any] | str) -> _Entry:
    """A row as the listing sees it. A deleted event, or a shape that cannot be placed, is an entry
    that places nothing: it still holds the row's version, so a refresh neither keeps the event's
    earlier (placeable) entry nor reads the row again at every question.

    A single event or exception keeps the row as it came (text stays text: a few hundred
    thousand dicts held for hours would make every full garbage collection walk them all).
    """
    status = data.get("status")
    parent = data.get("recurringEventId")
    version = (data.get("etag"), data.get("updated"))
    try:
        if parent:
            original = _original_key(data, zone)
            single = None if status == "cancelled" else _single(data, zone, row)
            return _Entry(version, None, single, str(parent), original)
        if status == "cancelled":
            return _Entry(version, None, None, None, None)
        if data.get("recurrence"):
            return _Entry(version, _Series(data, zone), None, None, None)
        return _Entry(version, None, _single(data, zone, row), None, None)
    except (KeyError, TypeError, ValueError, AttributeError):  # AttributeError: a field of another type
        return _Entry(version, None, None, None, None)


def _single(data: dict[str, Any], zone: tzinfo, row: dict[str, Any] | str) -> Occurrence:
    start, end = data["start"], data.get("end") or data["start"]
    if start.get("dateTime"):
        begin = event_datetime(start["dateTime"], start.get("timeZone"), zone)
        finish = event_datetime(end["dateTime"], end.get("timeZone"), zone)
        return Occurrence(begin.astimezone(UTC), finish.astimezone(UTC), str(data["id"]), False, row, is_busy(data))
    first, after = date.fromisoformat(start["date"]), date.fromisoformat(end.get("date") or start["date"])
    return Occurrence(midnight(first, zone), midnight(after, zone), str(data["id"]), True, row, is_busy(data))


def _original_key(data: dict[str, Any], zone: tzinfo) -> datetime | date | None:
    original = data.get("originalStartTime") or {}
    try:
        if original.get("dateTime") or original.get("date"):
            key = event_time(original, fallback=zone)
            return key.astimezone(UTC) if isinstance(key, datetime) else key
    except (TypeError, ValueError):
        return None
    return None


def check_window(low: datetime, high: datetime) -> None:
    """ValueError unless `low < high`, the window is at most MAX_WINDOW long and inside the years answered.

    Answering widens the window (by the longest event, by a few days, and by the merged span around it),
    so a window at the very ends of datetime's range (year 1, year 9999) would overflow as it is widened.
    """
    if low < EARLIEST or high > LATEST:
        raise ValueError(f"times must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}")
    if high <= low:
        raise ValueError("timeMax must be later than timeMin")
    if high - low > MAX_WINDOW:
        raise ValueError(f"the window may be at most {MAX_WINDOW.days} days")


def parse_instant(text: str) -> datetime:
    """An RFC 3339 time with an offset, as an aware UTC datetime in whole seconds; ValueError otherwise."""
    try:
        value: datetime = isoparse(text)
    except (ValueError, OverflowError) as err:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from err
    if value.tzinfo is None:
        raise ValueError(f"an offset is required (e.g. Z or +01:00): {text!r}")
    try:
        return value.astimezone(UTC).replace(microsecond=0)  # Google ignores fractions of a second here
    except OverflowError as err:  # 0001-01-01T00:00:00+01:00 is before the first instant there is
        raise ValueError(f"out of range: {text!r}") from err


# --- helpers --------------------------------------------------------------------------------------
def _place(wall: datetime, zone: tzinfo) -> datetime:
    """A naive wall time in `zone`, normalised (a time in a DST gap moves forward by the gap)."""
    return wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def _when(moment: datetime, zone_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"dateTime": render(moment)}
    if zone_name:
        out["timeZone"] = zone_name
    return out


def _rule_set(
    lines: list[str], dtstart: datetime, all_day: bool, zone: tzinfo, near: datetime | None = None
) -> Iterator[datetime]:
    """The naive wall-time starts of a series: its RRULEs and RDATEs, less its EXDATEs.

    Given `near` (a naive wall time), the rules start from their last period before it instead of
    from DTSTART (`_jumped`): every start from `near` on is the same, and the ones before may be missing.
    """
    rules = rrule.rruleset()
    for line in lines:
        head, _, value = str(line).partition(":")
        name, *params = head.split(";")
        name = name.strip().upper()
        if name == "RRULE":
            rules.rrule(_jumped(_one_rule(_local_until(value, all_day, zone), dtstart), near))
        elif name in ("RDATE", "EXDATE"):
            tzid = next((p.split("=", 1)[1] for p in params if p.upper().startswith("TZID=")), None)
            for text in value.split(","):
                wall = _wall_time(text.strip(), tzid, dtstart, all_day, zone)
                if name == "RDATE":
                    rules.rdate(wall)
                else:
                    rules.exdate(wall)
        elif name == "EXRULE":
            rules.exrule(_jumped(_one_rule(_local_until(value, all_day, zone), dtstart), near))
    # DTSTART is the first instance even on a day its rule skips, as Google shows it (and RFC 5545
    # says); dateutil leaves it out then, and the series' first meeting was missing. It does not
    # count towards COUNT unless the rule gives it too (the set holds it once): Google's count.
    rules.rdate(dtstart)
    return iter(rules)


def _local_until(rule: str, all_day: bool, zone: tzinfo) -> str:
    """UNTIL as a naive wall time, to go with the naive DTSTART: a UTC UNTIL is moved into the
    series' zone; a date UNTIL of a timed series means the end of that day."""
    match = _UNTIL.search(rule)
    if match is None:
        return rule
    raw = match.group(2).upper()
    if all_day:
        local = raw.rstrip("Z")
    elif "T" not in raw:
        local = raw + "T235959"
    elif raw.endswith("Z"):
        instant = datetime.strptime(raw, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        local = instant.astimezone(zone).strftime("%Y%m%dT%H%M%S")
    else:
        local = raw
    return rule[: match.start(2)] + local + rule[match.end(2) :]


def _wall_time(text: str, tzid: str | None, dtstart: datetime, all_day: bool, zone: tzinfo) -> datetime:
    """An RDATE/EXDATE value as a naive wall time of the series."""
    if "T" not in text:
        day = datetime.strptime(text[:8], "%Y%m%d")
        return day if all_day else day.replace(hour=dtstart.hour, minute=dtstart.minute, second=dtstart.second)
    if all_day:
        return datetime.strptime(text.rstrip("Zz")[:15], "%Y%m%dT%H%M%S")
    if text.upper().endswith("Z"):
        instant = datetime.strptime(text[:-1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    else:
        instant = datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=zone_of(tzid) if tzid else zone)
    return instant.astimezone(zone).replace(tzinfo=None)


def _one_rule(text: str, dtstart: datetime) -> rrule.rrule:
    """One RRULE or EXRULE value: dateutil parses a bare rule into a single `rrule`."""
    parsed = rrule.rrulestr(text.rstrip(";"), dtstart=dtstart)  # a trailing `;` is harmless
    assert isinstance(parsed, rrule.rrule)
    return parsed


# What one period of a rule is, in months or in seconds, by its FREQ (dateutil's numbering).
_MONTHS_PER = {rrule.YEARLY: 12, rrule.MONTHLY: 1}
_SECONDS_PER = {rrule.WEEKLY: 7 * 86400, rrule.DAILY: 86400, rrule.HOURLY: 3600, rrule.MINUTELY: 60, rrule.SECONDLY: 1}
_BY_PARTS = (
    "bysetpos",
    "bymonth",
    "bymonthday",
    "byyearday",
    "byeaster",
    "byweekno",
    "byweekday",
    "byhour",  # several times a day: a period holds more than one occurrence
    "byminute",
    "bysecond",
)


def _jumped(rule: rrule.rrule, near: datetime | None) -> rrule.rrule:
    """The rule, started a whole number of its periods after DTSTART, at the last such start before `near`.

    dateutil generates from DTSTART on, so a window in the far future of an endless series cost one
    step per occurrence in between (a daily series asked about the year 9997 walked 2.9 million).
    Moved by whole periods (INTERVAL x FREQ), DTSTART keeps its weekday, day of the month, month
    and time, so the defaults dateutil takes from it, and so every occurrence from the new start
    on, are unchanged. A COUNT counts from the first occurrence: a rule with one is moved only when
    each period holds exactly one occurrence (weekly or shorter, no BY parts; a monthly rule on the
    31st skips months), its COUNT reduced by the periods skipped.
    """
    parts: Any = rule  # dateutil keeps a rule's parts only as private attributes
    dtstart = parts._dtstart
    if near is None or near <= dtstart:
        return rule
    interval, count = parts._interval, parts._count
    if count is not None and (parts._freq in _MONTHS_PER or any(p in parts._original_rule for p in _BY_PARTS)):
        return rule
    months = _MONTHS_PER.get(parts._freq)
    if months is not None:
        step = months * interval
        periods = ((near.year - dtstart.year) * 12 + near.month - dtstart.month) // step - 1
        start = None
        while periods > 0 and start is None:  # a 31st or a 29 February exists only in some periods
            total = dtstart.month - 1 + periods * step
            try:
                start = dtstart.replace(year=dtstart.year + total // 12, month=total % 12 + 1)
            except ValueError:
                periods -= 1
        if start is None:
            return rule
    else:
        step_seconds = _SECONDS_PER[parts._freq] * interval
        periods = int((near - dtstart).total_seconds() // step_seconds) - 1
        if periods <= 0:
            return rule
        start = dtstart + timedelta(seconds=periods * step_seconds)
    if count is not None:
        if periods >= count:
            return rrule.rrule(rrule.DAILY, dtstart=dtstart, count=0)  # nothing left
        return rule.replace(dtstart=start, count=count - periods)
    return rule.replace(dtstart=start)
