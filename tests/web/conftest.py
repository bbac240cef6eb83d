"""Fixtures shared by the web tests."""

from __future__ import annotations

from typing import Any

import pytest

from calsync.channels import open_events_channel
from calsync.runtime import Runtime
from tests.push_support import add_calendar_row, connect_account, emu_channel


@pytest.fixture
def watched(runtime: Runtime, emu: Any) -> dict[str, Any]:
    """One account, one calendar with an open events channel (as the emulator sees it)."""
    account_id = connect_account(runtime, emu, "ann@example.com")
    cal_id = add_calendar_row(runtime, account_id, "ann@example.com", sync_requested=1, sync_done=1,
                              baseline_done=True)
    channel_id = open_events_channel(runtime, cal_id)
    return {"account_id": account_id, "calendar_id": cal_id, "channel": emu_channel(emu, channel_id)}
