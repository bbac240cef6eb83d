"""The simulated person of `calsync demo`: a few calendars in the emulator, edited like a busy week.

Every kind of change calsync must notice appears in turn: new events, moves, renames, new
locations, deletions, and one occurrence of a weekly series edited or cancelled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

CALENDARS = ("Work", "Family", "Team")
TITLES = {
    "Work": ["Design review", "1:1 with Alex", "Budget sync", "Quarterly planning", "Customer call", "Hiring debrief"],
    "Family": ["Dentist", "Swim practice", "Parents' evening", "Dinner at Grandma's", "Piano lesson", "Vet"],
    "Team": ["Retro", "Demo day", "Incident review", "Lunch and learn", "Roadmap jam", "Offsite planning"],
}
PLACES = ["Room 4.12", "Café Nero, High St", "Zoom", "Library, 2nd floor", "Home", "Main office"]
SERIES_TITLE = "Team standup"
SERIES_WEEKS = 52


class EmulatorLike(Protocol):
    """The part of the emulator the person uses (the real Google has the same verbs)."""

    def create_user(self, email: str, name: str | None = None) -> str: ...
    def create_calendar(self, email: str, summary: str, time_zone: str = "UTC") -> str: ...
    def insert_event(self, calendar_id: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def patch_event(self, calendar_id: str, event_id: str, changes: dict[str, Any]) -> dict[str, Any]: ...
    def delete_event(self, calendar_id: str, event_id: str) -> None: ...
    def patch_instance(
        self, calendar_id: str, series_id: str, original_start: str, changes: dict[str, Any]
    ) -> dict[str, Any]: ...
    def cancel_instance(self, calendar_id: str, series_id: str, original_start: str) -> dict[str, Any]: ...


@dataclass
class _Entry:
    calendar: str
    event_id: str
    summary: str
    start: datetime
    minutes: int


@dataclass
class DemoPerson:
    """Owns a demo account in the emulator and makes one edit per `step()`."""

    emu: EmulatorLike
    email: str = "demo.person@example.com"
    seed: int | None = None
    calendars: dict[str, str] = field(default_factory=dict)  # title → Google calendar id
    _entries: list[_Entry] = field(default_factory=list)
    _series: tuple[str, str, datetime] | None = None  # calendar id, series id, first start
    _week: int = 0
    _turn: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def setup(self, now: datetime) -> None:
        """The account, its calendars and a plausible week of events, including a weekly series."""
        self.emu.create_user(self.email, "Demo Person")
        self.calendars = {"Primary": self.email}
        for title in CALENDARS:
            self.calendars[title] = self.emu.create_calendar(self.email, title)
        monday = (now + timedelta(days=7 - now.weekday())).replace(hour=9, minute=30, second=0, microsecond=0)
        for title in CALENDARS:
            for n, summary in enumerate(TITLES[title][:2]):
                self._create(title, summary, monday + timedelta(days=n + 1, hours=n * 2 + 1), 60)
        self._create("Primary", "Gym", monday + timedelta(days=2, hours=-2), 45)
        series = self.emu.insert_event(
            self.calendars["Team"],
            {
                "summary": SERIES_TITLE,
                "location": "Room 4.12",
                "start": _when(monday),
                "end": _when(monday + timedelta(minutes=15)),
                "recurrence": [f"RRULE:FREQ=WEEKLY;COUNT={SERIES_WEEKS}"],
            },
        )
        self._series = (self.calendars["Team"], series["id"], monday)

    def step(self) -> str:
        """Make the next edit; returns what was done, for people watching."""
        actions = (
            self._add,
            self._move,
            self._rename,
            self._edit_occurrence,
            self._relocate,
            self._add,
            self._delete,
            self._cancel_occurrence,
        )
        action = actions[self._turn % len(actions)]
        self._turn += 1
        return action()

    # The edits -----------------------------------------------------------------------------------
    def _add(self) -> str:
        title = self._rng.choice(CALENDARS)
        taken = {e.summary for e in self._entries}
        summary = self._rng.choice([t for t in TITLES[title] if t not in taken] or TITLES[title])
        start = self._pick_start()
        self._create(title, summary, start, self._rng.choice((30, 45, 60, 90)))
        return f"{title}: added “{summary}” on {_label(start)}"

    def _move(self) -> str:
        entry = self._pick()
        if entry is None:
            return self._add()
        entry.start += timedelta(minutes=self._rng.choice((30, 60, 90, -30, 24 * 60)))
        self.emu.patch_event(
            self.calendars[entry.calendar],
            entry.event_id,
            {"start": _when(entry.start), "end": _when(entry.start + timedelta(minutes=entry.minutes))},
        )
        return f"{entry.calendar}: moved “{entry.summary}” to {_label(entry.start)}"

    def _rename(self) -> str:
        entry = self._pick()
        if entry is None:
            return self._add()
        old = entry.summary
        entry.summary = self._rng.choice([f"{old} (rescheduled)", f"{old} — bring notes", f"Prep: {old}"])
        if len(entry.summary) > 60:
            entry.summary = self._rng.choice(TITLES[entry.calendar])
        self.emu.patch_event(self.calendars[entry.calendar], entry.event_id, {"summary": entry.summary})
        return f"{entry.calendar}: renamed “{old}” to “{entry.summary}”"

    def _relocate(self) -> str:
        entry = self._pick()
        if entry is None:
            return self._add()
        place = self._rng.choice(PLACES)
        self.emu.patch_event(self.calendars[entry.calendar], entry.event_id, {"location": place})
        return f"{entry.calendar}: “{entry.summary}” now at {place}"

    def _delete(self) -> str:
        entry = self._pick()
        if entry is None or len(self._entries) < 3:
            return self._add()
        self._entries.remove(entry)
        self.emu.delete_event(self.calendars[entry.calendar], entry.event_id)
        return f"{entry.calendar}: deleted “{entry.summary}”"

    def _edit_occurrence(self) -> str:
        cal_id, series_id, first = self._series_or_fail()
        original = self._next_occurrence(first)
        moved = original + timedelta(minutes=30)
        self.emu.patch_instance(
            cal_id,
            series_id,
            _rfc3339(original),
            {
                "summary": f"{SERIES_TITLE} (late start)",
                "start": _when(moved),
                "end": _when(moved + timedelta(minutes=15)),
            },
        )
        return f"Team: moved one “{SERIES_TITLE}” ({_label(original)}) to {moved:%H:%M}"

    def _cancel_occurrence(self) -> str:
        cal_id, series_id, first = self._series_or_fail()
        original = self._next_occurrence(first)
        self.emu.cancel_instance(cal_id, series_id, _rfc3339(original))
        return f"Team: cancelled the “{SERIES_TITLE}” of {_label(original)}"

    # Helpers -------------------------------------------------------------------------------------
    def _create(self, title: str, summary: str, start: datetime, minutes: int) -> None:
        body = {"summary": summary, "start": _when(start), "end": _when(start + timedelta(minutes=minutes))}
        event = self.emu.insert_event(self.calendars[title], body)
        self._entries.append(_Entry(title, event["id"], summary, start, minutes))

    def _pick(self) -> _Entry | None:
        return self._rng.choice(self._entries) if self._entries else None

    def _pick_start(self) -> datetime:
        base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=self._rng.randint(1, 9))
        return base.replace(hour=self._rng.choice((8, 9, 10, 11, 13, 14, 15, 16, 17)))

    def _series_or_fail(self) -> tuple[str, str, datetime]:
        if self._series is None:
            raise RuntimeError("setup() has not run")
        return self._series

    def _next_occurrence(self, first: datetime) -> datetime:
        """A different week each time, so every edit touches a fresh occurrence."""
        self._week = self._week % (SERIES_WEEKS - 1) + 1
        return first + timedelta(weeks=self._week)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: datetime) -> dict[str, str]:
    return {"dateTime": _rfc3339(value), "timeZone": "UTC"}


def _label(value: datetime) -> str:
    return value.strftime("%a %d %b %H:%M")
