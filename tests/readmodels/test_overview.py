"""The operator's overview: the one reading of the deployment behind the dashboard, `calsync status` and /metrics."""

from __future__ import annotations

from datetime import timedelta

from calsync.feed.cursor import newest_seq
from calsync.readmodels.overview import calendar_titles, gauges, operator_overview, recent_activity, watched
from calsync.runtime import Runtime
from calsync.store.states import NotificationOutcome
from tests.web.dashboard_support import add_account, add_calendar, add_change, add_channel, add_notification


def test_the_overview_lists_live_calendars_primary_first_and_live_channels_by_expiry(runtime: Runtime) -> None:
    now = runtime.clock.now()
    bob = add_account(runtime, "bob@example.com")
    ann = add_account(runtime, "ann@example.com")
    zeta = add_calendar(runtime, ann, "z@group.calendar.google.com", "Zeta")
    alpha = add_calendar(runtime, ann, "a@group.calendar.google.com", "Alpha")
    primary = add_calendar(runtime, ann, "ann@example.com", "Ann", primary=True)
    add_calendar(runtime, ann, "gone@group.calendar.google.com", "Gone", removed_at=now)
    bobs = add_calendar(runtime, bob, "bob@example.com", "Bob", primary=True)
    add_channel(runtime, ann, alpha, "ch-late", now + timedelta(days=6))
    add_channel(runtime, ann, alpha, "ch-soon", now + timedelta(days=1), status="pending")
    add_channel(runtime, ann, zeta, "ch-stopped", now + timedelta(days=3), status="stopped")
    add_channel(runtime, ann, None, "ch-list", now + timedelta(days=2))
    seq = add_change(runtime, alpha, "e1", "created", None, {"id": "e1"})

    with runtime.sessions() as session:
        live = operator_overview(session)
        every = operator_overview(session, all_channels=True)
        assert live.last_seq == seq == newest_seq(session)

    assert [a.email for a in live.accounts] == ["ann@example.com", "bob@example.com"]
    assert [c.id for c in live.calendars] == [bobs, primary, alpha, zeta]  # by account row, primary first, by title
    assert [c.id for c in live.channels] == ["ch-soon", "ch-list", "ch-late"]
    assert [c.id for c in every.channels] == ["ch-soon", "ch-list", "ch-stopped", "ch-late"]


def test_recent_activity_counts_the_last_day_of_changes_and_the_last_hour_of_notifications(
    runtime: Runtime,
) -> None:
    ann = add_account(runtime, "ann@example.com")
    cal = add_calendar(runtime, ann, "ann@example.com", "Ann", primary=True)
    add_channel(runtime, ann, cal, "ch-1", runtime.clock.now() + timedelta(days=6))
    add_change(runtime, cal, "e1", "created", None, {"id": "e1"})
    add_change(runtime, cal, "e2", "created", None, {"id": "e2"})
    add_notification(runtime, "ch-1", "exists", 2, NotificationOutcome.QUEUED)

    now = runtime.clock.now()
    with runtime.sessions() as session:
        fresh = recent_activity(session, now)
        later = recent_activity(session, now + timedelta(hours=2))
        next_day = recent_activity(session, now + timedelta(days=1, seconds=1))
    assert (fresh.changes_today, fresh.notifications_hour, fresh.failed_deliveries) == (2, 1, 0)
    assert (later.changes_today, later.notifications_hour) == (2, 0)
    assert next_day.changes_today == 0


def test_gauges_count_live_calendars_by_state_and_find_the_oldest_owed_sync(runtime: Runtime) -> None:
    now = runtime.clock.now()
    ann = add_account(runtime, "ann@example.com")
    cut = add_account(runtime, "cut@example.com", status="disconnected")
    add_calendar(runtime, ann, "ann@example.com", "Ann", sync_state="synced")
    add_calendar(
        runtime,
        ann,
        "owed@group.calendar.google.com",
        "Owed",
        sync_requested=2,
        sync_done=1,
        due_at=now - timedelta(minutes=5),
    )
    add_calendar(runtime, ann, "gone@group.calendar.google.com", "Gone", sync_state="error", removed_at=now)
    add_calendar(runtime, cut, "cut@example.com", "Cut", sync_requested=3, sync_done=0, due_at=now - timedelta(hours=1))
    add_channel(runtime, ann, None, "ch-a", now + timedelta(days=4))
    add_channel(runtime, ann, None, "ch-b", now + timedelta(days=2))
    add_channel(runtime, ann, None, "ch-c", now + timedelta(days=1), status="stopped")

    with runtime.sessions() as session:
        read = gauges(session)
    assert read.next_channel_expiry == now + timedelta(days=2)  # the soonest *active* channel
    assert read.oldest_owed_sync == now - timedelta(minutes=5)  # a disconnected account owes nothing
    assert dict(read.calendars_by_state) == {"synced": 1, "pending": 2}
    assert dict(read.accounts_by_status) == {"active": 1, "disconnected": 1}
    assert dict(read.channels_by_status) == {"active": 2, "stopped": 1}


def test_watched_is_the_live_calendars_and_lists_of_active_accounts_only(runtime: Runtime) -> None:
    now = runtime.clock.now()
    ann = add_account(runtime, "ann@example.com")
    cut = add_account(runtime, "cut@example.com", status="reauth_required")
    second = add_calendar(runtime, ann, "b@group.calendar.google.com", "B")
    first = add_calendar(runtime, ann, "ann@example.com", "Ann", primary=True)
    add_calendar(runtime, ann, "gone@group.calendar.google.com", "Gone", removed_at=now)
    add_calendar(runtime, cut, "cut@example.com", "Cut", primary=True)

    with runtime.sessions() as session:
        calendars, accounts = watched(session)
        titles = calendar_titles(session)
    assert [c.id for c in calendars] == [second, first]  # by row id
    assert [a.email for a in accounts] == ["ann@example.com"]
    assert [title for _, title, _ in titles] == ["Ann", "B", "Gone", "Cut"]  # every calendar, by account then title
