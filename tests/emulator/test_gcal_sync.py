"""gcal-sync (an independent async client) does a full then an incremental sync against the emulator."""

from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
from gcal_sync.api import GoogleCalendarService, LocalListEventsRequest
from gcal_sync.auth import AbstractAuth
from gcal_sync.store import InMemoryCalendarStore
from gcal_sync.sync import CalendarEventSyncManager, CalendarListSyncManager

from calsync.emulator import Emulator

from .conftest import timed


class StaticAuth(AbstractAuth):
    """gcal-sync's auth hook handing over a token the emulator issued."""

    def __init__(self, session: aiohttp.ClientSession, host: str, token: str) -> None:
        super().__init__(session, host=host)
        self._token = token

    async def async_get_access_token(self) -> str:
        return self._token


def test_full_then_incremental_sync(emu: Emulator, alice: str) -> None:
    token = emu.issue_tokens(alice)["access_token"]
    keep = emu.insert_event(alice, timed(1, 9, summary="keep"))
    change = emu.insert_event(alice, timed(2, 9, summary="change me"))
    drop = emu.insert_event(alice, timed(3, 9, summary="drop me"))
    series = emu.insert_event(
        alice,
        {
            "summary": "weekly",
            "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=3"],
            "start": {"dateTime": "2030-01-07T09:00:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2030-01-07T10:00:00Z", "timeZone": "UTC"},
        },
    )

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with aiohttp.ClientSession() as session:
            api = GoogleCalendarService(StaticAuth(session, emu.url + "/calendar/v3", token))
            store = InMemoryCalendarStore()
            calendars = CalendarListSyncManager(api, store=store)
            await calendars.run()
            listed = [c.id for c in (await calendars.store_service.async_list_calendars()).calendars]
            manager = CalendarEventSyncManager(api, calendar_id=alice, store=store)
            await manager.run()
            request = LocalListEventsRequest(start_time=dt.datetime(2029, 12, 31, tzinfo=dt.UTC))
            before = [e.summary for e in (await manager.store_service.async_list_events(request)).events]
            emu.patch_event(alice, change["id"], {"summary": "changed"})
            emu.delete_event(alice, drop["id"])
            emu.cancel_instance(alice, series["id"], "2030-01-14T09:00:00Z")
            emu.insert_event(alice, timed(4, 9, summary="new"))
            await manager.run()
            after = [e.summary for e in (await manager.store_service.async_list_events(request)).events]
            return listed, before, after

    listed, before, after = asyncio.run(scenario())
    assert listed == [alice]
    assert sorted(before) == sorted(["keep", "change me", "drop me", "weekly", "weekly", "weekly"])
    assert sorted(after) == sorted(["keep", "changed", "new", "weekly", "weekly"])
    syncs = [r for r in emu.requests if r.api_method == "calendar.events.list"]
    assert len(syncs) == 2 and "syncToken" not in syncs[0].params and "syncToken" in syncs[1].params
    assert keep["id"] in {e["id"] for e in emu.events(alice)}
