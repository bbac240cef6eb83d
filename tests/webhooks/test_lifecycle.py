"""Lifecycle types as webhooks: subscribed to by name (or with `*`), signed like event messages,
and every message, event or lifecycle, carries the account's `ref` in `data.ref`."""

from __future__ import annotations

from typing import Any

from standardwebhooks import Webhook

from calsync.accounts.disconnect import disconnect_account
from calsync.runtime import Runtime
from calsync.sync.run import sync_calendar
from calsync.work.worker import Worker
from tests.sync_support import calendar_row_id, connect_with_ref
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import deliver, subscribe

ANN = "ann@example.com"


def messages(receiver: Receiver, sub_id: str, secret: str) -> list[dict[str, Any]]:
    """The verified messages one subscription received, in seq order."""
    mine = [p for p in receiver.posts() if p.headers["Webhook-Id"].startswith(f"msg_{sub_id}_")]
    return sorted((Webhook(secret).verify(p.body, p.headers) for p in mine), key=lambda m: m["data"]["seq"])


def test_lifecycle_and_event_messages_are_signed_and_carry_the_ref(
    runtime: Runtime, emu: Any, receiver: Receiver
) -> None:
    everything, all_secret = subscribe(runtime, receiver.url, ["*"])
    steps, steps_secret = subscribe(
        runtime, receiver.url, ["account.connected", "calendar.added", "calendar.synced", "account.disconnected"]
    )
    slack, _ = subscribe(runtime, receiver.url, ["calendar.added"], format="slack")
    emu.create_user(ANN)
    standup = emu.insert_event(
        ANN,
        {
            "summary": "Standup",
            "start": {"dateTime": "2026-12-03T09:00:00Z"},
            "end": {"dateTime": "2026-12-03T09:15:00Z"},
        },
    )
    account_id = connect_with_ref(runtime, emu, ANN, "crm-7")
    Worker(runtime, threads=1).run_burst()  # the calendar list, the first sync, and the deliveries
    emu.patch_event(ANN, standup["id"], {"summary": "Standup (moved)"})
    sync_calendar(runtime, calendar_row_id(runtime, ANN))
    disconnect_account(runtime, account_id)
    deliver(runtime)

    got = messages(receiver, everything, all_secret)
    assert [m["type"] for m in got] == [
        "account.connected",
        "calendar.added",
        "calendar.synced",
        "event.updated",
        "account.disconnected",
    ]
    assert {m["data"]["ref"] for m in got} == {"crm-7"}
    assert all(m["type"] == m["data"]["type"] and m["data"]["account"] == ANN for m in got)
    added = got[1]["data"]
    assert (added["calendar_id"], added["summary"], added["event_id"], added["change"]) == (ANN, ANN, None, None)
    assert got[3]["data"]["after"]["summary"] == "Standup (moved)"
    assert [(m["type"], m["data"]["ref"]) for m in messages(receiver, steps, steps_secret)] == [
        ("account.connected", "crm-7"),
        ("calendar.added", "crm-7"),
        ("calendar.synced", "crm-7"),
        ("account.disconnected", "crm-7"),
    ]
    [line] = [p.json()["text"] for p in receiver.posts() if p.headers["Webhook-Id"].startswith(f"msg_{slack}_")]
    assert line == f'{ANN}: Calendar "{ANN}" added'
