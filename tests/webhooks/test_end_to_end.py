"""From an edit at Google (the emulator, over HTTP) to a signed message at the subscriber."""

from __future__ import annotations

from typing import Any

from standardwebhooks import Webhook

from calsync.runtime import Runtime
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.sync_support import calendar_row_id, connect_account
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import deliver, subscribe

ALICE = "alice@example.com"


def test_an_edit_at_google_reaches_the_subscriber_signed_with_the_change(
    runtime: Runtime, emu: Any, receiver: Receiver
) -> None:
    account_id = connect_account(runtime, emu, ALICE)
    standup = emu.insert_event(
        ALICE,
        {
            "summary": "Standup",
            "start": {"dateTime": "2026-12-03T10:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-12-03T10:30:00+01:00", "timeZone": "Europe/Berlin"},
        },
    )
    refresh_calendar_list(runtime, account_id)
    cal_id = calendar_row_id(runtime, ALICE)
    sync_calendar(runtime, cal_id)  # the baseline: no changes, nothing to send
    sub_id, secret = subscribe(runtime, receiver.url, ["event.updated"])
    slack_id, _ = subscribe(runtime, receiver.url, ["*"], format="slack", calendars=[ALICE])
    assert deliver(runtime) == 0

    emu.patch_event(
        ALICE,
        standup["id"],
        {
            "start": {"dateTime": "2026-12-03T10:30:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-12-03T11:00:00+01:00", "timeZone": "Europe/Berlin"},
        },
    )
    sync_calendar(runtime, cal_id)
    assert deliver(runtime) == 2

    signed = next(p for p in receiver.posts() if p.headers["Webhook-Id"].startswith(f"msg_{sub_id}_"))
    message = Webhook(secret).verify(signed.body, signed.headers)
    data = message["data"]
    assert message["type"] == "event.updated"
    assert (data["account"], data["calendar_id"], data["event_id"], data["change"]) == (
        ALICE,
        ALICE,
        standup["id"],
        "updated",
    )
    assert {"start", "end"} <= set(data["fields"])
    assert data["before"]["start"]["dateTime"].startswith("2026-12-03T10:00")
    assert data["after"]["start"]["dateTime"].startswith("2026-12-03T10:30")

    slack = next(p for p in receiver.posts() if p.headers["Webhook-Id"].startswith(f"msg_{slack_id}_"))
    assert slack.json()["text"].endswith('"Standup" moved 10:00 → 10:30 (Thu 3 Dec)')
