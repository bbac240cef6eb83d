"""Opening, replacing and stopping push channels against the emulator."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete

from calsync.errors import ChannelNotWanted, RateLimited
from calsync.push.channels import (
    live_channels,
    needs_new_channel,
    open_calendar_list_channel,
    open_events_channel,
    replace_channel,
    stop_channel,
    stop_leftover_channels,
)
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Calendar, Channel, QuotaBudget
from calsync.store.quota import Budget, Limits
from calsync.store.states import ChannelStatus
from tests.push_support import (
    add_calendar_row,
    channels_of,
    connect_account,
    emu_channel,
    wait_for,
)


@pytest.fixture
def calendar(runtime: Runtime, emu: Any) -> dict[str, int]:
    account_id = connect_account(runtime, emu, "ann@example.com")
    return {
        "account_id": account_id,
        "calendar_id": add_calendar_row(runtime, account_id, "ann@example.com", baseline_done=True),
    }


def _row(runtime: Runtime, channel_id: str) -> Channel:
    with runtime.sessions() as session:
        row = session.get(Channel, channel_id)
        assert row is not None
        return row


def test_open_stores_the_granted_channel_and_only_a_hash_of_its_token(
    runtime: Runtime, emu: Any, calendar: dict[str, int]
) -> None:
    channel_id = open_events_channel(runtime, calendar["calendar_id"])
    row, granted = _row(runtime, channel_id), emu_channel(emu, channel_id)
    assert row.status == "active" and row.kind == "events"
    assert row.resource_id == granted["resource_id"] and row.resource_uri == granted["resource_uri"]
    assert row.expires_at == granted["expiration"]
    assert row.token_hash == hashlib.sha256(granted["token"].encode()).hexdigest()
    assert granted["token"] not in repr(row.__dict__)
    assert granted["address"] == runtime.settings.notifications_url
    assert len(granted["token"]) >= 40  # secrets.token_urlsafe(32)


def test_each_channel_has_its_own_token(runtime: Runtime, emu: Any, calendar: dict[str, int]) -> None:
    first = emu_channel(emu, open_events_channel(runtime, calendar["calendar_id"]))
    second = emu_channel(emu, open_events_channel(runtime, calendar["calendar_id"]))
    assert first["token"] != second["token"] and first["id"] != second["id"]


def test_expiry_is_what_google_granted_not_what_was_asked(runtime: Runtime, emu: Any, calendar: dict[str, int]) -> None:
    emu.max_channel_ttl = 120
    row = _row(runtime, open_events_channel(runtime, calendar["calendar_id"]))
    assert row.expires_at is not None and row.created_at is not None
    assert 100 < (row.expires_at - row.created_at).total_seconds() <= 121  # asked for 7 days


def test_the_sync_message_is_accepted_even_when_it_beats_the_watch_response(
    runtime: Runtime, emu: Any, calendar: dict[str, int], live_server: str
) -> None:
    channel_id = open_events_channel(runtime, calendar["calendar_id"])
    record = wait_for(
        lambda: [n for n in emu.notifications if n.channel_id == channel_id], timeout=5, what="the sync message"
    )[0]
    assert (record.resource_state, record.message_number, record.status) == ("sync", 1, 200)
    assert _row(runtime, channel_id).last_message_number == 1


def test_a_failed_watch_leaves_no_pending_row(runtime: Runtime, emu: Any, calendar: dict[str, int]) -> None:
    emu.fail_next(1, status=429, method="calendar.events.watch")
    with pytest.raises(RateLimited):
        open_events_channel(runtime, calendar["calendar_id"])
    assert [c.status for c in channels_of(runtime)] == ["stopped"]
    assert emu.channels() == []


def test_calendar_list_channel(runtime: Runtime, emu: Any, calendar: dict[str, int]) -> None:
    row = _row(runtime, open_calendar_list_channel(runtime, calendar["account_id"]))
    assert row.kind == "calendar_list" and row.calendar_id is None and row.status == "active"
    assert [c["kind"] for c in emu.channels()] == ["calendarList"]


def test_replace_opens_the_new_channel_before_stopping_the_old(
    runtime: Runtime, emu: Any, calendar: dict[str, int]
) -> None:
    old = open_events_channel(runtime, calendar["calendar_id"])
    new = replace_channel(runtime, calendar_id=calendar["calendar_id"])
    methods = [
        r.api_method for r in emu.requests if r.api_method in ("calendar.events.watch", "calendar.channels.stop")
    ]
    assert methods[-2:] == ["calendar.events.watch", "calendar.channels.stop"]
    assert [c["id"] for c in emu.channels()] == [new]
    old_row = _row(runtime, old)
    assert (old_row.status, old_row.replaced_by) == ("stopped", new) and old_row.stopped_at is not None


def test_stopping_a_channel_google_already_forgot_is_fine(runtime: Runtime, emu: Any, calendar: dict[str, int]) -> None:
    channel_id = open_events_channel(runtime, calendar["calendar_id"])
    emu.push.stop(channel_id)  # gone at Google (expired or stopped elsewhere)
    stop_channel(runtime, channel_id)
    assert _row(runtime, channel_id).status == "stopped"
    stop_channel(runtime, channel_id)  # idempotent: no second call
    assert emu.count("calendar.channels.stop") == 1


def test_a_pending_row_left_by_a_crash_is_stopped_with_its_siblings_resource_id(
    runtime: Runtime, emu: Any, calendar: dict[str, int]
) -> None:
    live = open_events_channel(runtime, calendar["calendar_id"])
    with transaction(runtime.sessions) as session:  # as if the process died right after the watch call
        row = session.get(Channel, live)
        assert row is not None
        row.status, row.resource_id = ChannelStatus.PENDING, None
    other = open_events_channel(runtime, calendar["calendar_id"])
    stop_channel(runtime, live)
    assert [c["id"] for c in emu.channels()] == [other]


@pytest.mark.parametrize("refusal", ["Google unavailable", "no quota"])
def test_a_stop_put_off_is_made_at_the_accounts_next_list_refresh(
    runtime: Runtime, emu: Any, calendar: dict[str, int], refusal: str
) -> None:
    """A replaced channel whose channels.stop Google did not take (a 503), or the budget had no room
    for, was marked stopped all the same: left open at Google, it notified every change twice until
    it expired, weeks later. Now it stays `stopping` and the next list refresh stops it."""
    old = open_events_channel(runtime, calendar["calendar_id"])
    budget = runtime.budget
    if refusal == "no quota":
        runtime.budget = Budget(
            runtime.sessions, runtime.clock, Limits(per_window=0, per_user_per_window=1), max_wait=0
        )
    else:
        emu.fail_next(1, status=503, reason="backendError", method="calendar.channels.stop")
    new = replace_channel(runtime, calendar_id=calendar["calendar_id"])  # the watch: the user's one call
    runtime.budget = budget
    with transaction(runtime.sessions) as session:  # the next minute's room
        session.execute(delete(QuotaBudget))
    assert sorted(c["id"] for c in emu.channels()) == sorted([old, new])
    assert _row(runtime, old).status == ChannelStatus.STOPPING and _row(runtime, old).replaced_by == new
    assert stop_leftover_channels(runtime, calendar["account_id"]) == 1
    assert [c["id"] for c in emu.channels()] == [new] and _row(runtime, old).status == ChannelStatus.STOPPED
    assert stop_leftover_channels(runtime, calendar["account_id"]) == 0  # nothing left: no call
    assert emu.count("calendar.channels.stop") == (2 if refusal == "Google unavailable" else 1)


def test_leftovers_of_a_crash_are_stopped_and_lapsed_ones_only_marked(
    runtime: Runtime, emu: Any, calendar: dict[str, int]
) -> None:
    """A crash between a row marked `stopping` and Google's answer, or between the list's commit of a
    removed calendar and its channels' stop, left a channel that nothing would ever stop."""
    cut_short = open_events_channel(runtime, calendar["calendar_id"])
    gone = add_calendar_row(runtime, calendar["account_id"], "gone@example.com", baseline_done=True)
    emu.create_user("gone@example.com")
    emu.share_calendar("gone@example.com", "ann@example.com", role="reader")
    of_removed = open_events_channel(runtime, gone)
    lapsed = open_events_channel(runtime, calendar["calendar_id"])
    with transaction(runtime.sessions) as session:
        session.get_one(Channel, cut_short).status = ChannelStatus.STOPPING
        session.get_one(Calendar, gone).removed_at = runtime.clock.now()
        lapsed_row = session.get_one(Channel, lapsed)
        lapsed_row.status, lapsed_row.expires_at = ChannelStatus.STOPPING, runtime.clock.now() - timedelta(seconds=1)
    assert stop_leftover_channels(runtime, calendar["account_id"]) == 3
    assert [c["id"] for c in emu.channels()] == [lapsed]  # over at Google by its expiry; not asked
    assert [_row(runtime, c).status for c in (cut_short, of_removed, lapsed)] == ["stopped", "stopped", "expired"]
    assert emu.count("calendar.channels.stop") == 2


def _remove(runtime: Runtime, calendar_id: int) -> None:
    """What the calendar list's refresh does to a calendar gone from the list: marked removed, its
    live channels stopped."""
    with transaction(runtime.sessions) as session:
        cal = session.get(Calendar, calendar_id)
        assert cal is not None
        cal.removed_at = runtime.clock.now()
    for channel in channels_of(runtime, calendar_id=calendar_id):
        stop_channel(runtime, channel.id)


def test_a_removed_calendar_is_not_watched(runtime: Runtime, emu: Any, calendar: dict[str, int]) -> None:
    _remove(runtime, calendar["calendar_id"])
    with pytest.raises(ChannelNotWanted):
        open_events_channel(runtime, calendar["calendar_id"])
    assert emu.count("calendar.events.watch") == 0 and channels_of(runtime) == []


def _watching(runtime: Runtime, calendar_id: int) -> tuple[threading.Thread, list[BaseException | str]]:
    """`open_events_channel` on a thread of its own, started; what it returned or raised, once joined."""
    outcome: list[BaseException | str] = []

    def watch() -> None:
        try:
            outcome.append(open_events_channel(runtime, calendar_id))
        except BaseException as err:  # handed to the test's thread
            outcome.append(err)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher, outcome


@pytest.mark.parametrize("meanwhile", ["calendar removed", "pending row stopped"])
def test_a_channel_no_longer_wanted_when_google_grants_it_is_stopped_there(
    runtime: Runtime, emu: Any, calendar: dict[str, int], meanwhile: str
) -> None:
    """The list's refresh removes the calendar (or another job takes the pending row for a crash's
    leftover) while Google is granting the watch: the row's stop cannot tell Google (no resource id
    yet), so the channel would stay open at Google, pushing into 404s, until it expired."""
    emu.slow_next(1, 1.0, "calendar.events.watch", "ann@example.com")
    watcher, outcome = _watching(runtime, calendar["calendar_id"])
    pending = wait_for(lambda: channels_of(runtime, calendar_id=calendar["calendar_id"]), what="the pending row")
    if meanwhile == "calendar removed":
        _remove(runtime, calendar["calendar_id"])
    else:
        stop_channel(runtime, pending[0].id)
    watcher.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ChannelNotWanted), outcome
    assert emu.channels() == []  # stopped at Google too
    assert [c.status for c in channels_of(runtime)] == ["stopped"]
    assert emu.count("calendar.channels.stop") == 1


def test_a_channel_unwanted_when_granted_whose_stop_is_put_off_is_stopped_by_the_next_refresh(
    runtime: Runtime, emu: Any, calendar: dict[str, int]
) -> None:
    """Its row said stopped already (stopped while Google granted it): a stop put off then was never
    tried again, and the channel stayed open at Google until it expired."""
    emu.slow_next(1, 1.0, "calendar.events.watch", "ann@example.com")
    emu.fail_next(1, status=503, reason="backendError", method="calendar.channels.stop")
    watcher, outcome = _watching(runtime, calendar["calendar_id"])
    pending = wait_for(lambda: channels_of(runtime, calendar_id=calendar["calendar_id"]), what="the pending row")
    stop_channel(runtime, pending[0].id)  # no resource id yet: nothing to tell Google
    watcher.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ChannelNotWanted), outcome
    assert len(emu.channels()) == 1 and _row(runtime, pending[0].id).status == ChannelStatus.STOPPING
    assert stop_leftover_channels(runtime, calendar["account_id"]) == 1
    assert emu.channels() == [] and _row(runtime, pending[0].id).status == ChannelStatus.STOPPED


def test_needs_new_channel(runtime: Runtime, emu: Any, calendar: dict[str, int]) -> None:
    channel_id = open_events_channel(runtime, calendar["calendar_id"])
    now = runtime.clock.now()
    with runtime.sessions() as session:
        chans = live_channels(session, calendar_id=calendar["calendar_id"])
    life = _row(runtime, channel_id).expires_at - _row(runtime, channel_id).created_at  # type: ignore[operator]
    short = life / 4
    assert not needs_new_channel(chans, now, renew_before=short)
    assert needs_new_channel(chans, now + life - short + timedelta(seconds=1), renew_before=short)
    # A window longer than the life Google granted: due halfway through it, not the moment it opened
    # (every job replaced such a channel).
    assert not needs_new_channel(chans, now, renew_before=life + timedelta(minutes=1))
    assert needs_new_channel(chans, now + life / 2 + timedelta(seconds=1), renew_before=life + timedelta(minutes=1))
    assert needs_new_channel([], now, renew_before=timedelta(0))
