"""The dashboard's pages, read from real tables on both engines, with a frozen clock for the ages."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from calsync import create_app
from calsync.accounts.connected import upsert_account
from calsync.clock import FrozenClock
from calsync.config import Secret, Settings
from calsync.google.oauth import credentials_from_json
from calsync.humanize import human_duration
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Delivery, DeliveryAttempt, QuotaBudget, WebhookSubscription
from calsync.store.quota import PROJECT, ensure_project_row
from calsync.store.states import DeliveryState, NotificationOutcome
from calsync.webhooks.outbox import fill
from calsync.work.quota import outlook
from tests.web.dashboard_support import (
    PASSWORD,
    add_account,
    add_calendar,
    add_change,
    add_channel,
    add_notification,
    sign_in,
)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def runtime(settings: Settings, clock: FrozenClock) -> Iterator[Runtime]:
    rt = Runtime.create(dataclasses.replace(settings, admin_password=Secret(PASSWORD)), clock=clock)
    yield rt
    rt.close()


@pytest.fixture
def admin(runtime: Runtime) -> Any:
    """A test client signed in as the operator; `admin.csrf` holds the session's token."""
    client = create_app(runtime=runtime).test_client()
    client.csrf = sign_in(client)  # type: ignore[attr-defined]
    return client


def test_overview_shows_accounts_calendars_sync_age_and_channel_expiry(
    admin: Any, runtime: Runtime, clock: FrozenClock
) -> None:
    now = clock.now()
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(
        runtime,
        ann,
        "work-1@group.calendar.google.com",
        "Work",
        sync_state="synced",
        last_synced_at=now - timedelta(seconds=3),
    )
    add_calendar(
        runtime,
        ann,
        "family-2@group.calendar.google.com",
        "Family",
        sync_state="backoff",
        last_error="rate limited by Google",
        retry_at=now + timedelta(seconds=40),
    )
    add_channel(runtime, ann, work, "chan-work-1", now + timedelta(days=6, hours=23, minutes=10))
    add_channel(runtime, ann, None, "chan-list-1", now + timedelta(days=2))

    page = admin.get("/dashboard/").text
    assert "ann@example.com" in page
    assert "Work" in page and "Family" in page
    assert "3 s ago" in page
    assert "expires in 6 d 23 h" in page
    assert "calendar list channel" in page and ">expires in 2 d</time>" in page
    assert "rate limited by Google" in page and "retry <time" in page and ">in 40 s</time>" in page
    assert f'title="{(now - timedelta(seconds=3)).strftime("%Y-%m-%d %H:%M:%S")} UTC"' in page
    assert "badge-synced" in page and "badge-backoff" in page
    assert "Google calls today" in page and "of 900,000" in page and "reconcile every 1 h" in page


def test_the_overview_names_the_days_activity_cut_when_quiet_calendars_are_stretched(
    admin: Any, runtime: Runtime
) -> None:
    """The plan keeps calendars busier than the cut at the base period and stretches the others: the
    dashboard says which, as `calsync status` does."""
    cut = 3 * 3600 + 21 * 60
    with transaction(runtime.sessions) as session:
        ensure_project_row(session)
        session.execute(update(QuotaBudget).where(QuotaBudget.scope == PROJECT).values(reconcile_cut=cut))
    with runtime.sessions() as session:
        idle = outlook(session, runtime.settings, runtime.clock.now()).interval_idle
    page = admin.get("/dashboard/").text
    assert f"reconcile every 1 h (calendars changing less often than every {human_duration(cut)}: up to" in page
    assert human_duration(idle) in page and idle > 3600


def test_reauth_required_account_stands_out(admin: Any, runtime: Runtime) -> None:
    add_account(runtime, "fine@example.com")
    add_account(
        runtime,
        "dead@example.com",
        status="reauth_required",
        last_error="invalid_grant: Token has been expired or revoked.",
    )
    page = admin.get("/dashboard/").text
    alert = page[page.index('role="alert"') :]
    assert "1 account needs re-consent" in alert
    assert "dead@example.com" in alert[:600] and "fine@example.com" not in alert[:600]
    assert "badge-reauth_required" in page and "Token has been expired or revoked." in page


def test_changes_feed_shows_field_level_before_and_after(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    before = {"id": "ev1", "summary": "Standup", "start": {"dateTime": "2026-01-05T10:00:00Z"}}
    after = {"id": "ev1", "summary": "Daily standup", "start": {"dateTime": "2026-01-05T10:30:00Z"}}
    add_change(runtime, work, "ev1", "created", None, before)
    add_change(runtime, work, "ev1", "updated", before, after)
    add_change(runtime, work, "ev1", "deleted", after, None)

    page = admin.get("/dashboard/changes").text
    assert page.index("badge-deleted") < page.index("badge-updated") < page.index("badge-created")
    assert "<del>Standup</del>" in page and "<ins>Daily standup</ins>" in page
    assert "<del>2026-01-05 10:00 UTC</del>" in page and "<ins>2026-01-05 10:30 UTC</ins>" in page
    assert "<dt>summary</dt>" in page and "<dt>start</dt>" in page


def test_changes_feed_filters_by_calendar(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    family = add_calendar(runtime, ann, "family@x", "Family")
    add_change(runtime, work, "w1", "created", None, {"summary": "Quarterly planning"})
    add_change(runtime, family, "f1", "created", None, {"summary": "Piano lesson"})
    page = admin.get(f"/dashboard/changes?calendar={family}").text
    assert "Piano lesson" in page and "Quarterly planning" not in page
    assert f'<option value="{family}" selected>' in page


def test_changes_feed_pages_by_seq(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    for n in range(1, 56):
        add_change(runtime, work, f"ev{n}", "created", None, {"summary": f"Event number {n:02d}"})
    first = admin.get("/dashboard/changes").text
    assert "Event number 55" in first and "Event number 06" in first and "Event number 05" not in first
    assert "before=6" in first and 'data-cursor="55"' in first
    older = admin.get("/dashboard/changes?before=6").text
    assert "Event number 05" in older and "Event number 01" in older and "Event number 06" not in older
    assert "data-refresh" not in older  # only the newest page follows live


def test_changes_fragment_returns_only_newer_rows_with_the_new_cursor(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    first = add_change(runtime, work, "a", "created", None, {"summary": "Old news"})
    second = add_change(runtime, work, "b", "created", None, {"summary": "Fresh news"})
    resp = admin.get(f"/dashboard/changes/fragment?after={first}", headers={"X-Requested-With": "fetch"})
    assert resp.status_code == 200
    assert "Fresh news" in resp.text and "Old news" not in resp.text
    assert resp.headers["X-Cursor"] == str(second)
    empty = admin.get(f"/dashboard/changes/fragment?after={second}")
    assert empty.text.strip() == "" and empty.headers["X-Cursor"] == str(second)


def test_a_fragment_of_more_rows_than_it_holds_says_so(admin: Any, runtime: Runtime) -> None:
    """60 new rows, 50 shown, the cursor at the newest: the 10 between were never shown. The
    fragment now says there is a gap (`X-Gap`), and the page's script reloads instead."""
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    first = add_change(runtime, work, "ev0", "created", None, {"summary": "Seen"})
    for n in range(1, 61):
        add_change(runtime, work, f"ev{n}", "created", None, {"summary": f"Event number {n:02d}"})
    crowded = admin.get(f"/dashboard/changes/fragment?after={first}")
    assert crowded.headers.get("X-Gap") == "1" and "Event number 60" in crowded.text
    fits = admin.get(f"/dashboard/changes/fragment?after={first + 20}")
    assert "X-Gap" not in fits.headers and "Event number 60" in fits.text
    for n in range(60):
        add_notification(runtime, "chan-a", "exists", n + 1, NotificationOutcome.QUEUED)
    notes = admin.get("/dashboard/notifications/fragment?after=0")
    assert notes.headers.get("X-Gap") == "1" and notes.text.count("<tr>") == 50
    assert (
        "X-Gap"
        not in admin.get(f"/dashboard/notifications/fragment?after={int(notes.headers['X-Cursor']) - 5}").headers
    )


def test_notification_inspector_shows_state_number_outcome_and_headers(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    add_channel(runtime, ann, work, "chan-abc", runtime.clock.now() + timedelta(days=7))
    add_notification(runtime, "chan-abc", "sync", 1, NotificationOutcome.SYNC)
    add_notification(
        runtime,
        "chan-abc",
        "exists",
        7,
        NotificationOutcome.QUEUED,
        {"X-Goog-Channel-ID": "chan-abc", "X-Goog-Resource-URI": "https://example/calendars/work/events"},
    )
    add_notification(runtime, "chan-zzz", "exists", 3, NotificationOutcome.UNKNOWN_CHANNEL)

    page = admin.get("/dashboard/notifications").text
    assert page.index(">7<") < page.index(">1<")  # newest first
    assert "X-Goog-Resource-URI" in page and "https://example/calendars/work/events" in page
    assert "Work" in page and "unknown_channel" not in page  # refused ones have a history of their own
    refused = admin.get("/dashboard/notifications?show=refused").text
    assert "unknown_channel" in refused and "unknown channel" in refused and "X-Goog-Resource-URI" not in refused
    only = admin.get("/dashboard/notifications?channel=chan-zzz&show=refused").text
    assert "unknown_channel" in only and "X-Goog-Resource-URI" not in only


def test_notifications_fragment_follows_new_rows(admin: Any, runtime: Runtime) -> None:
    first = add_notification(runtime, "chan-a", "sync", 1, NotificationOutcome.SYNC)
    add_notification(runtime, "chan-a", "exists", 2, NotificationOutcome.QUEUED)
    resp = admin.get(f"/dashboard/notifications/fragment?after={first}")
    assert resp.text.count("<tr>") == 1 and ">2<" in resp.text


def test_disconnect_button_disconnects_the_account(admin: Any, runtime: Runtime, emu: Any) -> None:
    emu.create_user("ann@example.com")
    tokens = emu.issue_tokens("ann@example.com")
    stored = {"token": tokens["access_token"], "refresh_token": tokens["refresh_token"]}
    creds = credentials_from_json(json.dumps(stored), runtime.settings)
    with transaction(runtime.sessions) as session:
        account_id = upsert_account(session, runtime.cipher, "ann@example.com", creds, [], runtime.clock.now()).id

    refused = admin.post(f"/dashboard/accounts/{account_id}/disconnect")
    assert refused.status_code == 403
    resp = admin.post(f"/dashboard/accounts/{account_id}/disconnect", data={"csrf_token": admin.csrf})
    assert resp.status_code == 302
    with runtime.sessions() as session:
        assert session.scalar(select(Account.status).where(Account.id == account_id)) == "disconnected"
    page = admin.get("/dashboard/").text
    assert "ann@example.com is disconnected" in page
    assert f"/dashboard/accounts/{account_id}/disconnect" not in page  # no button on a disconnected account


def test_disconnect_of_unknown_account_is_404(admin: Any) -> None:
    assert admin.post("/dashboard/accounts/999/disconnect", data={"csrf_token": admin.csrf}).status_code == 404


def test_every_post_form_carries_the_csrf_token(admin: Any, runtime: Runtime) -> None:
    ann = add_account(runtime, "ann@example.com")
    add_calendar(runtime, ann, "work@x", "Work")
    for path in ("/dashboard/", "/dashboard/changes", "/dashboard/notifications", "/dashboard/webhooks"):
        html = admin.get(path).text
        forms = html.split("<form")[1:]
        posts = [f for f in forms if 'method="post"' in f.split(">")[0]]
        assert posts, path  # at least the sign-out form
        for form in posts:
            assert f'name="csrf_token" value="{admin.csrf}"' in form.split("</form>")[0], path


def _failed_delivery(runtime: Runtime) -> tuple[str, int]:
    """A subscription whose one delivery failed after an HTTP 500, as the delivery worker leaves it."""
    with transaction(runtime.sessions) as session:
        session.add(
            WebhookSubscription(
                id="sub_test1",
                url="https://hooks.example.com/calsync",
                events=["*"],
                secret=runtime.cipher.encrypt_str("whsec_x"),
                status="active",
            )
        )
    ann = add_account(runtime, "ann@example.com")
    work = add_calendar(runtime, ann, "work@x", "Work")
    add_change(runtime, work, "ev1", "created", None, {"summary": "Board meeting"})
    with transaction(runtime.sessions) as session:
        fill(session, runtime.clock.now())  # the worker's pass queues it for the subscription
    with transaction(runtime.sessions) as session:
        delivery = session.scalars(select(Delivery)).one()
        delivery.state, delivery.attempts, delivery.last_status = DeliveryState.FAILED, 8, 500
        delivery.last_error = "HTTP 500"
        session.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                status_code=500,
                latency_ms=41.0,
                response_excerpt="upstream exploded",
                attempted_at=runtime.clock.now(),
            )
        )
        return "sub_test1", delivery.id


def test_webhooks_page_lists_subscriptions_deliveries_and_attempts(admin: Any, runtime: Runtime) -> None:
    _failed_delivery(runtime)
    page = admin.get("/dashboard/webhooks").text
    assert "https://hooks.example.com/calsync" in page
    assert "badge-failed" in page and "HTTP 500" in page and "upstream exploded" in page and "41 ms" in page
    assert "Replay 1 failed" in page
    assert "upstream exploded" not in admin.get("/dashboard/webhooks?state=delivered").text
    unknown = admin.get("/dashboard/webhooks?state=bogus")  # a state no delivery can be in: none listed
    assert unknown.status_code == 200 and "upstream exploded" not in unknown.text


def test_replay_button_queues_the_delivery_again(admin: Any, runtime: Runtime) -> None:
    sub_id, delivery_id = _failed_delivery(runtime)
    refused = admin.post(f"/dashboard/webhooks/{sub_id}/replay", data={"delivery": delivery_id})
    assert refused.status_code == 403
    with runtime.sessions() as session:
        assert session.get(Delivery, delivery_id).state == "failed"  # type: ignore[union-attr]

    resp = admin.post(
        f"/dashboard/webhooks/{sub_id}/replay",
        data={"csrf_token": admin.csrf, "delivery": delivery_id, "back": "/dashboard/webhooks"},
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/dashboard/webhooks"
    with runtime.sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None and delivery.state == "pending" and delivery.attempts == 0
        assert delivery.message_id == f"msg_{sub_id}_1"  # the same webhook-id: consumers can drop repeats
    assert "Queued 1 delivery again" in admin.get("/dashboard/webhooks").text


def test_replay_all_failed_of_a_subscription(admin: Any, runtime: Runtime) -> None:
    sub_id, delivery_id = _failed_delivery(runtime)
    admin.post(f"/dashboard/webhooks/{sub_id}/replay", data={"csrf_token": admin.csrf})
    with runtime.sessions() as session:
        assert session.get(Delivery, delivery_id).state == "pending"  # type: ignore[union-attr]
    assert admin.post("/dashboard/webhooks/sub_nope/replay", data={"csrf_token": admin.csrf}).status_code == 404


def test_replaying_delivery_0_replays_that_one_only(admin: Any, runtime: Runtime) -> None:
    """`delivery=0` is falsy: it replayed every failed delivery of the subscription."""
    sub_id, delivery_id = _failed_delivery(runtime)
    admin.post(f"/dashboard/webhooks/{sub_id}/replay", data={"csrf_token": admin.csrf, "delivery": "0"})
    with runtime.sessions() as session:
        assert session.get(Delivery, delivery_id).state == "failed"  # type: ignore[union-attr]
