"""The push receiver: what Google's notifications do to the work queue, and what forged ones do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from calsync import create_app
from calsync.config import Settings
from calsync.push.channels import (
    open_calendar_list_channel,
    open_events_channel,
    stop_channel,
)
from calsync.push.intake_sql import trim_log
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Channel, Notification
from calsync.store.states import NotificationOutcome
from tests.push_support import (
    account_row,
    calendar_row,
    emu_channel,
    push_headers,
)


def _notifications(runtime: Runtime) -> list[Notification]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def test_exists_marks_the_calendar_for_one_sync_and_wakes_workers(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    generation = runtime.wakeup.generation()
    resp = client.post("/notifications", headers=push_headers(watched["channel"], number=5))
    assert resp.status_code == 200
    cal = calendar_row(runtime, watched["calendar_id"])
    assert (cal.sync_requested, cal.sync_done) == (2, 1)
    assert cal.due_at is not None and cal.due_at <= runtime.clock.now()
    assert runtime.wakeup.generation() > generation
    assert _notifications(runtime)[-1].outcome == NotificationOutcome.QUEUED


def test_duplicate_and_older_message_numbers_are_acknowledged_and_ignored(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    for number in (9, 9, 4):
        assert client.post("/notifications", headers=push_headers(watched["channel"], number=number)).status_code == 200
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 2
    assert [n.outcome for n in _notifications(runtime)][-3:] == [
        NotificationOutcome.QUEUED,
        NotificationOutcome.DUPLICATE,
        NotificationOutcome.DUPLICATE,
    ]


def test_sync_message_activates_a_pending_channel_without_asking_for_a_sync(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(update(Channel).values(status="pending", last_message_number=None))
    assert (
        client.post("/notifications", headers=push_headers(watched["channel"], state="sync", number=1)).status_code
        == 200
    )
    with runtime.sessions() as session:
        channel = session.get(Channel, watched["channel"]["id"])
        assert channel is not None and channel.status == "active" and channel.last_message_number == 1
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 1


@pytest.mark.parametrize("forgery", ["unknown_channel", "bad_token", "missing_token", "bad_resource"])
def test_forged_notifications_get_404_and_cause_no_sync_and_no_google_call(
    client: FlaskClient, runtime: Runtime, emu: Any, watched: dict[str, Any], forgery: Any
) -> None:
    forgeries: dict[str, dict[str, str | None]] = {
        "unknown_channel": {"X-Goog-Channel-ID": "00000000-0000-4000-8000-000000000000"},
        "bad_token": {"X-Goog-Channel-Token": "guessed"},
        "missing_token": {"X-Goog-Channel-Token": None},
        "bad_resource": {"X-Goog-Resource-ID": "some-other-resource"},
    }
    override = forgeries[forgery]
    calls_before = len(emu.requests)
    merged = {**push_headers(watched["channel"], number=3), **override}
    resp = client.post("/notifications", headers={k: v for k, v in merged.items() if v is not None})
    assert resp.status_code == 404
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 1
    assert len(emu.requests) == calls_before
    assert _notifications(runtime)[-1].outcome == forgery.replace("missing_token", "bad_token")


def test_logged_headers_never_hold_the_channel_token(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    client.post("/notifications", headers=push_headers(watched["channel"], number=3))
    logged = _notifications(runtime)[-1].headers
    assert logged["X-Goog-Channel-Token"] == "<redacted>"
    assert watched["channel"]["token"] not in str(logged)


@pytest.mark.parametrize(
    "broken",
    [
        {"X-Goog-Channel-ID": None},
        {"X-Goog-Resource-State": "changed"},
        {"X-Goog-Resource-State": None},
        {"X-Goog-Message-Number": "two"},
        {"X-Goog-Message-Number": None},
    ],
)
def test_malformed_headers_get_400(client: FlaskClient, runtime: Runtime, watched: dict[str, Any], broken: Any) -> None:
    resp = client.post("/notifications", headers=push_headers(watched["channel"], **broken))
    assert resp.status_code == 400
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 1
    assert _notifications(runtime)[-1].outcome == NotificationOutcome.MALFORMED


def test_a_stopped_channel_gets_404(client: FlaskClient, runtime: Runtime, emu: Any, watched: dict[str, Any]) -> None:
    stop_channel(runtime, watched["channel"]["id"])
    assert emu.channels() == []
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=3)).status_code == 404
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 1


def test_channels_of_an_account_that_is_not_active_get_404(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(update(Account).values(status="disconnected"))
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=3)).status_code == 404


def test_an_old_channel_overlapping_its_replacement_still_counts(
    client: FlaskClient, runtime: Runtime, emu: Any, watched: dict[str, Any]
) -> None:
    new_id = open_events_channel(runtime, watched["calendar_id"])
    old, new = watched["channel"], emu_channel(emu, new_id)
    assert old["resource_id"] == new["resource_id"]
    assert client.post("/notifications", headers=push_headers(old, number=3)).status_code == 200
    assert client.post("/notifications", headers=push_headers(new, number=3)).status_code == 200
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 3


def test_calendar_list_notification_marks_the_account_list(
    client: FlaskClient, runtime: Runtime, emu: Any, watched: dict[str, Any]
) -> None:
    account_id = watched["account_id"]
    before = account_row(runtime, account_id).list_requested
    channel = emu_channel(emu, open_calendar_list_channel(runtime, account_id))
    assert channel["kind"] == "calendarList"
    assert client.post("/notifications", headers=push_headers(channel, number=3)).status_code == 200
    account = account_row(runtime, account_id)
    assert account.list_requested == before + 1
    assert account.list_due_at is not None and account.list_due_at <= runtime.clock.now()


def test_a_calendar_in_backoff_stays_due_at_its_retry_time(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    from datetime import timedelta

    from calsync.store.models import Calendar

    retry_at = runtime.clock.now() + timedelta(minutes=5)
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).values(retry_at=retry_at, due_at=retry_at))
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=3)).status_code == 200
    cal = calendar_row(runtime, watched["calendar_id"])
    assert cal.sync_requested == 2 and cal.due_at == retry_at


def test_the_body_is_ignored_and_capped(client: FlaskClient, runtime: Runtime, watched: dict[str, Any]) -> None:
    resp = client.post("/notifications", headers=push_headers(watched["channel"], number=3), data=b"x" * 50_000)
    assert resp.status_code == 200
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 2
    resp = client.post("/notifications", headers=push_headers(watched["channel"], number=4), data=b"x" * 100_000)
    assert resp.status_code == 413
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 2


def test_notification_log_is_bounded(runtime: Runtime, watched: dict[str, Any]) -> None:
    with transaction(runtime.sessions) as session:
        for i in range(30):
            session.add(
                Notification(
                    channel_id="c",
                    resource_state="exists",
                    message_number=i,
                    headers={},
                    outcome=NotificationOutcome.QUEUED,
                    received_at=runtime.clock.now(),
                )
            )
    with transaction(runtime.sessions) as session:
        trim_log(session, 10)
    rows = _notifications(runtime)
    assert len(rows) == 10 and [r.message_number for r in rows] == list(range(20, 30))


def test_the_receiver_trims_the_log_as_it_goes(
    settings: Settings, runtime: Runtime, emu: Any, watched: dict[str, Any]
) -> None:
    small = Runtime.create(Settings(**{**settings.__dict__, "notification_log_size": 5}))
    try:
        client = create_app(runtime=small).test_client()
        for number in range(2, 2 + 120):
            client.post("/notifications", headers=push_headers(watched["channel"], number=number))
        with small.sessions() as session:
            count = session.scalar(select(func.count()).select_from(Notification))
        assert count is not None and count < 5 + 100
    finally:
        small.close()


def test_503_only_when_the_database_cannot_record_the_notification(
    settings: Settings, tmp_path: Path, watched: dict[str, Any]
) -> None:
    broken = Runtime.create(
        Settings(**{**settings.__dict__, "database_url": f"sqlite:///{tmp_path}/missing/dir/calsync.db"})
    )
    try:
        client = create_app(runtime=broken).test_client()
        assert client.post("/notifications", headers=push_headers(watched["channel"], number=3)).status_code == 503
        assert client.post("/notifications", headers={"X-Goog-Channel-ID": "x"}).status_code == 400
    finally:
        broken.close()


@pytest.mark.parametrize("header", ["X-Goog-Channel-ID", "X-Goog-Resource-URI", "User-Agent"])
def test_a_nul_byte_is_refused_before_it_can_reach_a_batch(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any], header: Any
) -> None:
    """PostgreSQL rejects NUL in text and JSON: one such header in a batch would fail its neighbours."""
    logged = len(_notifications(runtime))
    headers = push_headers(watched["channel"], number=7)
    headers[header] = headers.get(header, "Google") + "\x00"
    assert client.post("/notifications", headers=headers).status_code == 400
    assert len(_notifications(runtime)) == logged
    assert client.post("/notifications/%00").status_code == 400
    assert client.get("/api/changes?after=1%00").status_code == 400
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=7)).status_code == 200


def test_a_sync_already_owed_and_due_keeps_its_place(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    """A notification for a calendar already waiting its turn adds to the count but does not move it to
    the back: its due time stays the earlier one."""
    from datetime import timedelta

    from calsync.store.models import Calendar

    waiting_since = runtime.clock.now() - timedelta(seconds=30)
    with transaction(runtime.sessions) as session:
        session.execute(update(Calendar).values(sync_requested=2, sync_done=1, due_at=waiting_since))
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=3)).status_code == 200
    cal = calendar_row(runtime, watched["calendar_id"])
    assert (cal.sync_requested, cal.due_at) == (3, waiting_since)
    tomorrow = runtime.clock.now() + timedelta(days=1)
    with transaction(runtime.sessions) as session:  # nothing owed: due only at the next reconciliation
        session.execute(update(Calendar).values(sync_requested=3, sync_done=3, due_at=tomorrow))
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=4)).status_code == 200
    cal = calendar_row(runtime, watched["calendar_id"])
    assert cal.sync_requested == 4 and cal.due_at is not None and cal.due_at <= runtime.clock.now()


def test_only_post_reaches_the_receiver_and_other_paths_reach_flask(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    """`/notifications` is answered in front of Flask; the rest of the app is untouched by that."""
    resp = client.get("/notifications", headers=push_headers(watched["channel"], number=3))
    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 1
    assert _notifications(runtime) == []
    assert client.post("/notifications/", headers=push_headers(watched["channel"], number=3)).status_code == 404
    assert client.get("/healthz").status_code in (200, 503)
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=3)).status_code == 200


@pytest.mark.parametrize("number", ["²", "12³", "¹"])
def test_a_message_number_in_other_digits_is_a_400(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any], number: str
) -> None:
    """str.isdigit() takes superscripts (a header's byte 0xB2 reads as "²"), which int() refuses."""
    headers = {**push_headers(watched["channel"]), "X-Goog-Message-Number": number}
    resp = client.post("/notifications", headers=headers)
    assert resp.status_code == 400 and b"X-Goog-Message-Number" in resp.data
    assert calendar_row(runtime, watched["calendar_id"]).sync_requested == 1


def test_made_up_resource_states_share_one_metrics_label(client: FlaskClient, watched: dict[str, Any]) -> None:
    for i in range(30):
        client.post("/notifications", headers=push_headers(watched["channel"], state=f"made-up-{i}", number=10 + i))
    client.post("/notifications", headers={"X-Goog-Channel-ID": "x"})  # no state at all
    states = set()
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "calsync_notifications":
            states |= {sample.labels["state"] for sample in family.samples}
    assert "invalid" in states and states <= {"sync", "exists", "not_exists", "invalid"}


def test_a_flood_of_forged_notifications_leaves_the_real_history_and_one_log_line(
    settings: Settings, watched: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    small = Runtime.create(Settings(**{**settings.__dict__, "notification_log_size": 5}))
    try:
        client = create_app(runtime=small).test_client()
        for number in (2, 3, 4):
            assert (
                client.post("/notifications", headers=push_headers(watched["channel"], number=number)).status_code
                == 200
            )
        forged = {"X-Goog-Channel-ID": "00000000-0000-4000-8000-000000000000"}
        with caplog.at_level("WARNING", logger="calsync.web.receiver"):
            for number in range(300):
                resp = client.post("/notifications", headers=push_headers(watched["channel"], number=number, **forged))
                assert resp.status_code == 404
        with small.sessions() as session:
            trim_log(session, 5)
            session.commit()
        kept = _notifications(small)
        assert [n.message_number for n in kept if n.outcome == NotificationOutcome.QUEUED] == [2, 3, 4]
        assert 0 < sum(n.outcome == NotificationOutcome.UNKNOWN_CHANNEL for n in kept) <= 5
        assert len([r for r in caplog.records if "refused notification" in r.getMessage()]) == 1
    finally:
        small.close()


def test_a_huge_message_number_does_not_make_later_real_ones_duplicates(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    """A leaked token lets anyone send a valid notification; its number must not move the mark far."""
    leaked = push_headers(watched["channel"], number=999999999999999999)
    assert client.post("/notifications", headers=leaked).status_code == 200
    for number in (5, 9):
        assert client.post("/notifications", headers=push_headers(watched["channel"], number=number)).status_code == 200
    assert client.post("/notifications", headers=push_headers(watched["channel"], number=9)).status_code == 200
    assert [n.outcome for n in _notifications(runtime)][-4:] == [
        NotificationOutcome.QUEUED,
        NotificationOutcome.QUEUED,
        NotificationOutcome.QUEUED,
        NotificationOutcome.DUPLICATE,
    ]
    with runtime.sessions() as session:
        channel = session.get(Channel, watched["channel"]["id"])
        assert channel is not None and channel.last_message_number == 9


def test_one_forged_message_at_the_edge_of_the_step_silences_no_real_message(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    """With a leaked token, a message at the mark plus MAX_STEP moves the mark that far: the real
    messages after it, far below the new mark, must still each owe a sync (they counted as
    duplicates, and their changes waited for the reconciliation)."""
    from calsync.push.intake_sql import MAX_STEP

    channel = watched["channel"]
    assert client.post("/notifications", headers=push_headers(channel, number=5)).status_code == 200
    forged = push_headers(channel, number=5 + MAX_STEP)
    assert client.post("/notifications", headers=forged).status_code == 200
    for number in (6, 7, 500):
        assert client.post("/notifications", headers=push_headers(channel, number=number)).status_code == 200
    assert [n.outcome for n in _notifications(runtime)][-3:] == ["queued"] * 3


def test_a_jump_within_the_step_moves_the_mark_and_far_below_it_is_work_again(
    client: FlaskClient, runtime: Runtime, watched: dict[str, Any]
) -> None:
    from calsync.push.intake_sql import MAX_STEP

    for number in (MAX_STEP, MAX_STEP + 5, MAX_STEP + 1, 3):
        assert client.post("/notifications", headers=push_headers(watched["channel"], number=number)).status_code == 200
    assert [n.outcome for n in _notifications(runtime)][-4:] == ["queued", "queued", "duplicate", "queued"]
