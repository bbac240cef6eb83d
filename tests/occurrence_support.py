"""Random calendars for the occurrence tests: series over every rule part Google accepts, with
exceptions, moves, cancellations, RDATE/EXDATE, all-day events and DST zones, written into the
emulator as a person would; and the emulator's own answers read over HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import requests
from dateutil.parser import isoparse
from hypothesis import strategies as st

ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata", "America/Los_Angeles"]
CALENDAR_ZONES = ["UTC", "America/New_York", "Australia/Sydney"]
DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
BASE = date(2025, 1, 1)


@dataclass
class SeriesCase:
    all_day: bool
    zone: str
    first: datetime  # naive wall time (midnight for all-day)
    minutes: int  # duration (days * 1440 for all-day)
    rule: str
    rdates: list[int]  # days after the first start
    exdates: list[int]  # indices among the first instances
    edits: list[tuple[int, str, int]]  # (instance index, modify|move|cancel|free|declined, minutes moved)


@dataclass
class SingleCase:
    all_day: bool
    zone: str
    first: datetime
    minutes: int
    transparent: bool
    declined: bool


@dataclass
class Scenario:
    series: list[SeriesCase]
    singles: list[SingleCase]
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)


def _days(draw: Any, minimum: int = 1, maximum: int = 3) -> list[str]:
    return list(draw(st.lists(st.sampled_from(DAYS), min_size=minimum, max_size=maximum, unique=True)))


@st.composite
def rules(draw: Any, all_day: bool, first: datetime) -> str:
    freq = draw(st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    parts = [f"FREQ={freq}"]
    interval = draw(st.integers(1, 3))
    if interval > 1 or draw(st.booleans()):
        parts.append(f"INTERVAL={interval}")
    if freq == "DAILY" and draw(st.integers(0, 3)) == 0:
        parts.append("BYDAY=" + ",".join(_days(draw, 2, 5)))
    elif freq == "WEEKLY":
        parts.append("BYDAY=" + ",".join(_days(draw)))
        if draw(st.booleans()):
            parts.append("WKST=" + draw(st.sampled_from(["MO", "SU"])))
    elif freq == "MONTHLY":
        kind = draw(st.sampled_from(["monthday", "ordinal", "setpos", "plain"]))
        if kind == "monthday":
            days = draw(st.lists(st.sampled_from([1, 2, 15, 28, 29, 30, 31, -1]), min_size=1, max_size=3, unique=True))
            parts.append("BYMONTHDAY=" + ",".join(map(str, days)))
        elif kind == "ordinal":
            ordinal = draw(st.sampled_from([1, 2, 3, 4, -1, -2]))
            parts.append(f"BYDAY={ordinal}{draw(st.sampled_from(DAYS))}")
        elif kind == "setpos":
            parts.append("BYDAY=MO,TU,WE,TH,FR")
            parts.append(f"BYSETPOS={draw(st.sampled_from([1, 2, -1]))}")
    elif freq == "YEARLY":
        months = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True))
        kind = draw(st.sampled_from(["month", "monthday", "ordinal", "plain"]))
        if kind != "plain":
            parts.append("BYMONTH=" + ",".join(map(str, sorted(months))))
        if kind == "monthday":
            parts.append(f"BYMONTHDAY={draw(st.sampled_from([1, 10, 31, -1]))}")
        elif kind == "ordinal":
            parts.append(f"BYDAY={draw(st.sampled_from([1, 2, -1]))}{draw(st.sampled_from(DAYS))}")
    end = draw(st.sampled_from(["count", "until", "none"]))
    if end == "count":
        parts.append(f"COUNT={draw(st.integers(1, 40))}")
    elif end == "until":
        last = first + timedelta(days=draw(st.integers(0, 700)), hours=draw(st.integers(0, 23)))
        parts.append("UNTIL=" + (f"{last:%Y%m%d}" if all_day else f"{last:%Y%m%dT%H%M%S}Z"))
    return "RRULE:" + ";".join(parts)


@st.composite
def starts(draw: Any, all_day: bool) -> datetime:
    day = BASE + timedelta(days=draw(st.integers(0, 900)))
    if all_day:
        return datetime(day.year, day.month, day.day)
    # Every hour of the day, so DST gaps and repeated hours are reached.
    return datetime(day.year, day.month, day.day, draw(st.integers(0, 23)), draw(st.sampled_from([0, 15, 30, 45])))


@st.composite
def series_cases(draw: Any) -> SeriesCase:
    all_day = draw(st.integers(0, 4)) == 0
    first = draw(starts(all_day))
    minutes = 1440 * draw(st.integers(1, 3)) if all_day else draw(st.sampled_from([15, 30, 60, 90, 180, 600, 1500]))
    kinds = st.sampled_from(["modify", "move", "cancel", "free", "declined"])
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, 12), kinds, st.sampled_from([-4320, -90, 60, 1440, 20160, 57600])),
            max_size=4,
            unique_by=lambda e: e[0],
        )
    )
    exdates = draw(st.lists(st.integers(0, 12), max_size=2, unique=True))
    exdates = [i for i in exdates if i not in {e[0] for e in edits}]
    return SeriesCase(
        all_day=all_day,
        zone=draw(st.sampled_from(ZONES)),
        first=first,
        minutes=minutes,
        rule=draw(rules(all_day, first)),
        rdates=draw(st.lists(st.integers(1, 500), max_size=2)),
        exdates=exdates,
        edits=edits,
    )


@st.composite
def single_cases(draw: Any) -> SingleCase:
    all_day = draw(st.integers(0, 3)) == 0
    return SingleCase(
        all_day=all_day,
        zone=draw(st.sampled_from(ZONES)),
        first=draw(starts(all_day)),
        minutes=1440 * draw(st.integers(1, 3)) if all_day else draw(st.sampled_from([30, 60, 240, 2000])),
        transparent=draw(st.integers(0, 4)) == 0,
        declined=draw(st.integers(0, 4)) == 0,
    )


@st.composite
def windows(draw: Any) -> tuple[datetime, datetime]:
    low = datetime(2024, 12, 1, tzinfo=UTC) + timedelta(hours=draw(st.integers(0, 24 * 1200)))
    return low, low + timedelta(hours=draw(st.integers(1, 24 * 366)))


@st.composite
def scenarios(draw: Any) -> Scenario:
    return Scenario(
        series=draw(st.lists(series_cases(), min_size=1, max_size=4)),
        singles=draw(st.lists(single_cases(), max_size=3)),
        windows=draw(st.lists(windows(), min_size=2, max_size=4)),
    )


# --- writing a scenario into the emulator -------------------------------------------------------------
def _when(wall: datetime, zone: str, all_day: bool) -> dict[str, Any]:
    if all_day:
        return {"date": wall.date().isoformat()}
    aware = wall.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC).astimezone(ZoneInfo(zone))
    return {"dateTime": aware.isoformat(timespec="seconds"), "timeZone": zone}


class EmulatorApi:
    """The emulator's Calendar API over HTTP, as one user."""

    def __init__(self, emu: Any, email: str) -> None:
        self.base = emu.api_url.rstrip("/") + "/calendar/v3"
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + emu.issue_tokens(email)["access_token"]

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        resp = self.http.get(self.base + path, params=params, timeout=30)
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    def listing(self, calendar_id: str, path: str = "", **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page = self.get(
                f"/calendars/{quote(calendar_id)}/events{path}",
                maxResults=2500,
                **params,
                **({"pageToken": token} if token else {}),
            )
            items += page["items"]
            token = page.get("nextPageToken")
            if not token:
                return items

    def single_events(self, calendar_id: str, low: datetime, high: datetime) -> list[dict[str, Any]]:
        return self.listing(
            calendar_id, singleEvents="true", orderBy="startTime", timeMin=low.isoformat(), timeMax=high.isoformat()
        )


def write_scenario(emu: Any, api: EmulatorApi, calendar_id: str, scenario: Scenario) -> None:
    """Insert the scenario's events and apply its EXDATEs and exception edits."""
    owner = calendar_id
    for i, single in enumerate(scenario.singles):
        end = single.first + timedelta(minutes=single.minutes)
        body: dict[str, Any] = {
            "summary": f"single {i}",
            "start": _when(single.first, single.zone, single.all_day),
            "end": _when(end, single.zone, single.all_day),
        }
        if single.transparent:
            body["transparency"] = "transparent"
        if single.declined:
            body["attendees"] = [{"email": owner, "responseStatus": "declined"}, {"email": "x@example.com"}]
        emu.insert_event(calendar_id, body)
    for i, case in enumerate(scenario.series):
        lines = [case.rule]
        for offset in case.rdates:
            wall = case.first + timedelta(days=offset)
            lines.append(
                f"RDATE;VALUE=DATE:{wall:%Y%m%d}" if case.all_day else f"RDATE;TZID={case.zone}:{wall:%Y%m%dT%H%M%S}"
            )
        end = case.first + timedelta(minutes=case.minutes)
        series = emu.insert_event(
            calendar_id,
            {
                "summary": f"series {i}",
                "location": "room",
                "start": _when(case.first, case.zone, case.all_day),
                "end": _when(end, case.zone, case.all_day),
                "recurrence": lines,
            },
        )
        wanted = max([e[0] for e in case.edits] + case.exdates + [-1]) + 1
        if not wanted:
            continue
        instances = api.listing(calendar_id, f"/{series['id']}/instances")[:wanted]
        for index in case.exdates:
            if index < len(instances):
                original = instances[index]["originalStartTime"]
                lines.append(
                    f"EXDATE;VALUE=DATE:{original['date'].replace('-', '')}"
                    if case.all_day
                    else f"EXDATE;TZID={case.zone}:{_local(original['dateTime'], case.zone):%Y%m%dT%H%M%S}"
                )
        if case.exdates:
            emu.patch_event(calendar_id, series["id"], {"recurrence": lines})
        for index, kind, minutes in case.edits:
            if index >= len(instances):
                continue
            original = instances[index]["originalStartTime"]
            key = original.get("dateTime") or original["date"]
            if kind == "cancel":
                emu.cancel_instance(calendar_id, series["id"], key)
                continue
            changes: dict[str, Any] = {"summary": f"series {i} #{index} {kind}"}
            if kind == "move":
                start, stop = instances[index]["start"], instances[index]["end"]
                if case.all_day:
                    shift = timedelta(days=minutes // 1440 or 1)
                    changes["start"] = {"date": (date.fromisoformat(start["date"]) + shift).isoformat()}
                    changes["end"] = {"date": (date.fromisoformat(stop["date"]) + shift).isoformat()}
                else:
                    zone = ZoneInfo(case.zone)
                    shift = timedelta(minutes=minutes)
                    changes["start"] = {
                        "dateTime": (isoparse(start["dateTime"]) + shift).astimezone(zone).isoformat(),
                        "timeZone": case.zone,
                    }
                    changes["end"] = {
                        "dateTime": (isoparse(stop["dateTime"]) + shift).astimezone(zone).isoformat(),
                        "timeZone": case.zone,
                    }
            elif kind == "free":
                changes["transparency"] = "transparent"
            elif kind == "declined":
                changes["attendees"] = [{"email": owner, "responseStatus": "declined"}]
            emu.patch_instance(calendar_id, series["id"], key, changes)


# --- free/busy from a listing, computed here on its own -------------------------------------------------
def busy_from_listing(
    items: list[dict[str, Any]], low: datetime, high: datetime, calendar_zone: str
) -> list[tuple[datetime, datetime]]:
    """The merged busy blocks an app would compute from events.list?singleEvents=true items."""
    zone = ZoneInfo(calendar_zone)
    spans = []
    for item in items:
        if item.get("transparency") == "transparent":
            continue
        if any(a.get("self") and a.get("responseStatus") == "declined" for a in item.get("attendees") or []):
            continue
        edges = []
        for key in ("start", "end"):
            when = item[key]
            if "date" in when:
                edges.append(datetime.combine(date.fromisoformat(when["date"]), datetime.min.time(), zone))
            else:
                edges.append(isoparse(when["dateTime"]))
        start, end = max(edges[0], low), min(edges[1], high)
        if start < end:
            spans.append((start.astimezone(UTC), end.astimezone(UTC)))
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _local(stamp: str, zone: str) -> datetime:
    return isoparse(stamp).astimezone(ZoneInfo(zone))
