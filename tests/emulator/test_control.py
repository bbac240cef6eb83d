"""The JSON control API mirrors the Python API for an emulator running in another process."""

from __future__ import annotations

import requests

from calsync.emulator import Emulator

from .conftest import ALICE, Receiver, list_all, service_for, timed


def test_people_edits_and_logs_over_http(emu: Emulator) -> None:
    base = emu.url + "/_emulator"
    assert requests.post(f"{base}/users", json={"email": ALICE, "name": "Alice"}).json() == {"email": ALICE}
    cal = requests.post(f"{base}/users/{ALICE}/calendars", json={"summary": "Work"}).json()["id"]
    event = requests.post(f"{base}/calendars/{cal}/events", json=timed(1, 9)).json()
    patched = requests.patch(f"{base}/calendars/{cal}/events/{event['id']}", json={"summary": "p"}).json()
    assert patched["summary"] == "p"
    bulk = requests.post(f"{base}/calendars/{cal}/events/bulk", json={"events": [timed(2, 9)] * 3})
    assert bulk.json() == {"inserted": 3}
    series = requests.post(
        f"{base}/calendars/{cal}/events",
        json={
            "summary": "s",
            "recurrence": ["RRULE:FREQ=DAILY;COUNT=3"],
            "start": {"dateTime": "2030-01-01T08:00:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2030-01-01T09:00:00Z", "timeZone": "UTC"},
        },
    ).json()
    cancelled = requests.delete(f"{base}/calendars/{cal}/events/{series['id']}/instances/20300102T080000Z").json()
    assert cancelled["status"] == "cancelled"
    requests.delete(f"{base}/calendars/{cal}/events/{event['id']}")
    listed = requests.get(f"{base}/calendars/{cal}/events").json()
    assert len(listed) == 4 and event["id"] not in {e["id"] for e in listed}
    tokens = requests.post(f"{base}/tokens", json={"email": ALICE}).json()
    service = service_for(emu, tokens)
    assert len(list_all(service, calendar_id=cal)[0]) == 5  # plus the cancelled occurrence
    log = requests.get(f"{base}/requests", params={"api_method": "calendar.events.list"}).json()
    assert [r["calendar_id"] for r in log] == [cal] and log[0]["status"] == 200
    requests.post(f"{base}/faults/invalidate_sync_tokens", json={})
    requests.post(f"{base}/faults/fail_next", json={"n": 1, "status": 503, "reason": "backendError"})
    assert (
        requests.get(
            emu.api_url + "calendar/v3/users/me/calendarList",
            headers={"Authorization": "Bearer " + tokens["access_token"]},
        ).status_code
        == 503
    )
    requests.post(f"{base}/users/{ALICE}/revoke")
    assert (
        requests.get(
            emu.api_url + "calendar/v3/users/me/calendarList",
            headers={"Authorization": "Bearer " + tokens["access_token"]},
        ).status_code
        == 401
    )
    assert requests.put(f"{base}/config", json={"max_channel_ttl": 60}).json()["max_channel_ttl"] == 60
    assert emu.max_channel_ttl == 60
    assert requests.post(f"{base}/reset").json() == {}
    assert requests.get(f"{base}/users").json() == []


def test_bad_input_is_a_clear_400(emu: Emulator) -> None:
    base = emu.url + "/_emulator"
    for response in (
        requests.post(f"{base}/users", json={}),
        requests.post(f"{base}/users", data="not json", headers={"Content-Type": "application/json"}),
        requests.post(f"{base}/faults/push", json={"drop": 3}),
        requests.post(f"{base}/calendars/x/events/bulk", json={"events": "no"}),
    ):
        assert response.status_code == 400
        assert response.json()["error"]["message"]
    missing = requests.post(f"{base}/calendars/nobody@example.com/events", json=timed(1, 1))
    assert missing.status_code == 404


def test_push_logs_and_channels_over_http(emu: Emulator, receiver: Receiver) -> None:
    base = emu.url + "/_emulator"
    requests.post(f"{base}/users", json={"email": ALICE})
    tokens = requests.post(f"{base}/tokens", json={"email": ALICE}).json()
    service_for(emu, tokens).events().watch(
        calendarId="primary", body={"id": "c", "type": "web_hook", "address": receiver.url, "token": "t"}
    ).execute()
    assert requests.post(f"{base}/wait_push_idle", json={"timeout": 5}).json() == {"idle": True}
    [note] = requests.get(f"{base}/notifications").json()
    assert note["resource_state"] == "sync" and note["message_number"] == 1 and note["status"] == 200
    [channel] = requests.get(f"{base}/channels").json()
    assert channel["id"] == "c" and channel["calendar_id"] == ALICE and channel["token"] == "t"
