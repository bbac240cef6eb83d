"""Push: watch responses, sync then exists notifications, headers, retries, stop and expiry."""

from __future__ import annotations

import datetime as dt
import email.utils
import itertools
import json
import time
from typing import Any, cast
from urllib.parse import quote

import pytest
from googleapiclient.errors import HttpError

from calsync.emulator import Emulator

from .conftest import Receiver, timed


def watch(
    service: Any, receiver: Receiver, channel_id: str = "chan-1", calendar_id: str = "primary", **extra: Any
) -> dict[str, Any]:
    body = {"id": channel_id, "type": "web_hook", "address": receiver.url, **extra}
    return cast("dict[str, Any]", service.events().watch(calendarId=calendar_id, body=body).execute())


def test_watch_response_and_sync_message(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    before = time.time() * 1000
    channel = watch(service, receiver, token="secret-1")
    assert set(channel) == {"kind", "id", "resourceId", "resourceUri", "token", "expiration"}
    assert channel["kind"] == "api#channel" and channel["token"] == "secret-1"
    assert channel["resourceUri"] == f"{emu.api_url}calendar/v3/calendars/{quote(alice, safe='')}/events?alt=json"
    expiration = int(channel["expiration"])
    assert isinstance(channel["expiration"], str)
    assert abs(expiration - before - 604800_000) < 5000
    [hit] = receiver.wait_for(lambda hits: len(hits) == 1)
    headers = hit.headers
    assert headers["X-Goog-Resource-State"] == "sync" and headers["X-Goog-Message-Number"] == "1"
    assert headers["X-Goog-Channel-ID"] == "chan-1" and headers["X-Goog-Channel-Token"] == "secret-1"
    assert headers["X-Goog-Resource-ID"] == channel["resourceId"]
    assert headers["X-Goog-Resource-URI"] == channel["resourceUri"]
    assert headers["User-Agent"] == "APIs-Google (+https://developers.google.com/webmasters/APIs-Google.html)"
    assert headers["Content-Length"] == "0" and hit.body == b""
    parsed = email.utils.parsedate_to_datetime(headers["X-Goog-Channel-Expiration"])
    assert headers["X-Goog-Channel-Expiration"].endswith(" GMT")
    assert abs(parsed.timestamp() * 1000 - expiration) < 1000


def test_each_change_sends_exists_with_increasing_numbers(
    emu: Emulator, service: Any, alice: str, receiver: Receiver
) -> None:
    watch(service, receiver)
    # One at a time: the pool's threads may overtake each other, and the emulator records a delivery
    # once its answer is back, after the receiver has seen it.
    assert emu.wait_push_idle(30)
    event = emu.insert_event(alice, timed(1, 9))
    assert emu.wait_push_idle(30)
    emu.patch_event(alice, event["id"], {"summary": "b"})
    assert emu.wait_push_idle(30)
    emu.delete_event(alice, event["id"])
    assert emu.wait_push_idle(30)
    hits = receiver.wait_for(lambda hits: len(hits) == 4)
    assert [h.headers["X-Goog-Resource-State"] for h in hits] == ["sync", "exists", "exists", "exists"]
    numbers = [int(h.headers["X-Goog-Message-Number"]) for h in hits]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4
    assert any(b - a > 1 for a, b in itertools.pairwise(numbers))
    assert [n.message_number for n in emu.notifications] == numbers


def test_resource_id_is_shared_per_calendar(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    other = emu.create_calendar(alice, "Work")
    first, second = watch(service, receiver, "a"), watch(service, receiver, "b")
    third = watch(service, receiver, "c", calendar_id=other)
    assert first["resourceId"] == second["resourceId"] != third["resourceId"]
    assert emu.wait_push_idle(30)
    emu.insert_event(other, timed(1, 9))
    hits = receiver.wait_for(lambda hits: len(hits) == 4)
    assert [h.headers["X-Goog-Channel-ID"] for h in hits if h.headers["X-Goog-Resource-State"] == "exists"] == ["c"]


def test_calendar_list_watch_fires_on_calendar_list_changes(
    emu: Emulator, service: Any, alice: str, receiver: Receiver
) -> None:
    channel = service.calendarList().watch(body={"id": "cl", "type": "webhook", "address": receiver.url}).execute()
    assert channel["resourceUri"].endswith("/calendar/v3/users/me/calendarList?alt=json")
    receiver.wait_for(lambda hits: len(hits) == 1)
    cal = emu.create_calendar(alice, "New")
    emu.insert_event(cal, timed(1, 9))  # an event change is not a calendar-list change
    emu.remove_calendar(alice, cal)
    assert emu.wait_push_idle(30)
    assert receiver.states() == ["sync", "exists", "exists"]


def test_channel_id_must_be_unique_and_valid(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    watch(service, receiver, "same")
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"id": "same"}, 400, "channelIdNotUnique"),
        ({"id": "x" * 65}, 400, None),
        ({"id": "ok", "expiration": 1000}, 400, "pushInvalidTtl"),
        ({"id": "ok", "type": "carrier-pigeon"}, 400, None),
        ({"id": "ok", "address": "ftp://x"}, 400, None),
    ]
    for body, status, why in cases:
        full = {"type": "web_hook", "address": receiver.url, **body}
        with pytest.raises(HttpError) as err:
            service.events().watch(calendarId="primary", body=full).execute()
        assert err.value.resp.status == status
        if why:
            assert json.loads(err.value.content)["error"]["errors"][0]["reason"] == why


def test_lifetime_is_capped_and_ttl_param_honoured(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    now = time.time() * 1000
    short = watch(service, receiver, "short", params={"ttl": "60"})
    assert abs(int(short["expiration"]) - now - 60_000) < 3000
    emu.max_channel_ttl = 3600
    long = watch(service, receiver, "long", expiration=str(int(now + 90 * 86400_000)))
    assert abs(int(long["expiration"]) - now - 3600_000) < 3000


def test_nothing_after_stop(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    channel = watch(service, receiver)
    receiver.wait_for(lambda hits: len(hits) == 1)
    service.channels().stop(body={"id": channel["id"], "resourceId": channel["resourceId"]}).execute()
    emu.insert_event(alice, timed(1, 9))
    assert emu.wait_push_idle(30)
    time.sleep(0.1)
    assert receiver.states() == ["sync"]
    assert emu.channels() == []
    with pytest.raises(HttpError) as err:
        service.channels().stop(body={"id": channel["id"], "resourceId": channel["resourceId"]}).execute()
    assert err.value.resp.status == 404
    assert f"Channel '{channel['id']}' not found for project" in json.loads(err.value.content)["error"]["message"]


def test_only_the_creator_can_stop_a_channel(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    from .conftest import service_for

    channel = watch(service, receiver)
    emu.create_user("bob@example.com")
    bob = service_for(emu, emu.issue_tokens("bob@example.com"))
    with pytest.raises(HttpError) as err:
        bob.channels().stop(body={"id": channel["id"], "resourceId": channel["resourceId"]}).execute()
    assert err.value.resp.status == 404
    assert [c["id"] for c in emu.channels()] == [channel["id"]]


def test_nothing_after_expiry(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    watch(service, receiver, params={"ttl": "30"})
    receiver.wait_for(lambda hits: len(hits) == 1)
    real = emu.clock
    emu.clock = lambda: real() + dt.timedelta(seconds=31)
    try:
        emu.insert_event(alice, timed(1, 9))
        assert emu.wait_push_idle(30)
        assert emu.channels() == []
    finally:
        emu.clock = real
    time.sleep(0.1)
    assert receiver.states() == ["sync"]


def test_retries_503_with_backoff_but_not_404(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    receiver.statuses = [503, 503]
    watch(service, receiver)
    hits = receiver.wait_for(lambda hits: len(hits) == 3)
    assert {h.headers["X-Goog-Message-Number"] for h in hits} == {"1"}
    first_gap, second_gap = hits[1].time - hits[0].time, hits[2].time - hits[1].time
    assert first_gap >= 0.04 and second_gap >= 0.09  # 0.05 s base, doubling
    assert emu.wait_push_idle(30)
    [record] = emu.notifications
    assert record.status == 200 and record.attempts == 3
    receiver.statuses = [404]
    emu.insert_event(alice, timed(1, 9))
    assert emu.wait_push_idle(30)
    time.sleep(0.1)
    assert len(receiver.hits) == 4
    assert emu.notifications[-1].status == 404 and emu.notifications[-1].attempts == 1


def test_connection_error_is_retried_then_recorded(emu: Emulator, service: Any, alice: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    service.events().watch(
        calendarId="primary", body={"id": "dead", "type": "web_hook", "address": f"http://127.0.0.1:{port}/x"}
    ).execute()
    assert emu.wait_push_idle(30)
    [record] = emu.notifications
    assert record.status is None and record.attempts == 3


def test_fault_drop_everything(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    emu.push_faults(drop=1.0)
    watch(service, receiver)
    emu.insert_event(alice, timed(1, 9))
    assert emu.wait_push_idle(30)
    time.sleep(0.1)
    assert receiver.hits == []
    assert [n.fault for n in emu.notifications] == ["dropped", "dropped"]


def test_fault_duplicate_everything(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    emu.push_faults(duplicate=1.0)
    watch(service, receiver)
    hits = receiver.wait_for(lambda hits: len(hits) == 2)
    assert [h.headers["X-Goog-Message-Number"] for h in hits] == ["1", "1"]


def test_fault_delay(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    emu.push_faults(delay=0.3)
    started = time.monotonic()
    watch(service, receiver)
    [hit] = receiver.wait_for(lambda hits: len(hits) == 1)
    assert hit.time - started >= 0.29


def test_fault_reorder_can_deliver_out_of_order(emu: Emulator, service: Any, alice: str, receiver: Receiver) -> None:
    emu.push_faults(reorder=True)
    watch(service, receiver)
    receiver.wait_for(lambda hits: len(hits) == 1)
    for _ in range(12):
        emu.insert_event(alice, timed(1, 9))
    hits = receiver.wait_for(lambda hits: len(hits) == 13)
    numbers = [int(h.headers["X-Goog-Message-Number"]) for h in hits[1:]]
    assert numbers != sorted(numbers)
