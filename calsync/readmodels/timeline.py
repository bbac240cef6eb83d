"""A calendar's coming days, occurrence by occurrence, in the calendar's own time zone (for the dashboard)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.orm import Session

from calsync.readmodels.availability import MIRRORS, MirrorCache
from calsync.readmodels.occurrences import midnight, zone_of
from calsync.store.models import Calendar

MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class Slot:
    """The part of one occurrence that falls on one day, as wall-clock minutes of that day."""

    event_id: str
    summary: str
    all_day: bool
    busy: bool
    start_minute: int
    end_minute: int
    label: str  # "09:00–09:30", or "all day"

    @property
    def left(self) -> float:
        return round(100 * self.start_minute / MINUTES_PER_DAY, 2)

    @property
    def width(self) -> float:
        return round(max(100 * (self.end_minute - self.start_minute) / MINUTES_PER_DAY, 0.4), 2)


@dataclass(frozen=True)
class Day:
    day: date
    slots: list[Slot]


def coming_week(
    session: Session, calendar: Calendar, now: datetime, days: int = 7, cache: MirrorCache = MIRRORS
) -> list[Day]:
    """From today (in the calendar's zone) for `days` days, each day's occurrences by start."""
    zone = zone_of(calendar.time_zone)
    today = now.astimezone(zone).date()
    low, high = midnight(today, zone), midnight(today + timedelta(days=days), zone)
    found = cache.mirrors(session, [calendar])[calendar.id].occurrences(low, high)
    out: list[Day] = []
    for offset in range(days):
        day = today + timedelta(days=offset)
        begin, end = midnight(day, zone), midnight(day + timedelta(days=1), zone)
        slots = []
        for occ in found:
            if occ.end <= begin or occ.start >= end:
                continue
            first = occ.start.astimezone(zone) if occ.start > begin else None
            last = occ.end.astimezone(zone) if occ.end < end else None
            item = occ.item()
            label = (
                "all day"
                if occ.all_day
                else f"{(first or begin.astimezone(zone)):%H:%M}–{(last or end.astimezone(zone)):%H:%M}"
            )
            slots.append(
                Slot(
                    event_id=occ.id,
                    summary=str(item.get("summary") or "(no title)"),
                    all_day=occ.all_day,
                    busy=occ.busy,
                    start_minute=_wall_minute(first, 0),
                    end_minute=_wall_minute(last, MINUTES_PER_DAY),
                    label=label,
                )
            )
        slots.sort(key=lambda s: (not s.all_day, s.start_minute, s.event_id))
        out.append(Day(day, slots))
    return out


def _wall_minute(moment: datetime | None, default: int) -> int:
    """Minutes from midnight on the wall clock (the track shows a day as 24 wall-clock hours)."""
    return default if moment is None else moment.hour * 60 + moment.minute
