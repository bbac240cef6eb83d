"""The operator's dashboard: overview, a calendar's coming week, changes feed, notification inspector, webhooks.

Server-rendered from calsync's read models (no SQL here); a small script refreshes the feeds through the fragment
endpoints below, which use the operator's session (never the API token). Operators only: end users
see `/connect` and nothing else, so no account ever sees another's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from markupsafe import Markup
from sqlalchemy.orm import Session

from calsync.feed.window import SnapshotRun, feed_window
from calsync.humanize import (
    ago,
    event_title,
    event_when,
    expires_in,
    field_diffs,
    human_duration,
    lifecycle_title,
    utc_label,
)
from calsync.push.inspector import logged_notifications
from calsync.readmodels import timeline
from calsync.readmodels.overview import Overview, calendar_titles, operator_overview, recent_activity
from calsync.store.db import reading, transaction
from calsync.store.models import (
    Account,
    Calendar,
    Change,
    Channel,
)
from calsync.store.states import AccountStatus, ChangeKind, DeliveryState, Origin
from calsync.web.app import runtime
from calsync.web.operator_login import (
    check_csrf,
    render_error,
    require_admin,
    secure_headers,
)
from calsync.webhooks.claimcheck import failed_counts, recent_deliveries
from calsync.webhooks.subscriptions import list_subscriptions
from calsync.work.liveness import heartbeat_is_fresh, last_heartbeat
from calsync.work.quota import outlook

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

PAGE_SIZE = 50
BIGINT_MAX = 2**63 - 1  # the largest seq or log id a column holds, on either engine
INT_MAX = 2**31 - 1  # the largest account or calendar id (INTEGER columns on PostgreSQL)
NOTIFICATION_VIEWS = ("accepted", "refused")  # the inspector's two histories

bp.before_request(check_csrf)
bp.after_request(secure_headers)
for _code in (401, 403, 404):
    bp.register_error_handler(_code, render_error)


@dataclass(frozen=True)
class CalendarRow:
    calendar: Calendar
    channel: Channel | None


@dataclass(frozen=True)
class AccountBlock:
    account: Account
    calendars: list[CalendarRow]
    list_channel: Channel | None


@bp.record_once
def _add_root(state: Any) -> None:
    """The site's root leads operators to the dashboard (a rule outside the /dashboard prefix)."""
    state.app.add_url_rule("/", "index", lambda: redirect(url_for("dashboard.overview")))
    # The pages compare states with the enums, as the code does.
    state.app.jinja_env.globals.update(
        AccountStatus=AccountStatus, ChangeKind=ChangeKind, DeliveryState=DeliveryState, Origin=Origin
    )


@bp.get("/")
@require_admin
def overview() -> Any:
    now = runtime().clock.now()
    with reading(runtime().sessions) as session:
        seen = operator_overview(session)
        blocks = _account_blocks(seen)
        stats = _stats(session, seen.last_seq, now)
    reauth = [b.account for b in blocks if b.account.status == AccountStatus.REAUTH_REQUIRED]
    return render_template("dashboard/overview.html", blocks=blocks, stats=stats, reauth=reauth, now=now)


@bp.get(f"/calendars/<int(max={INT_MAX}):calendar_id>")
@require_admin
def calendar(calendar_id: int) -> Any:
    """The coming week's occurrences of one calendar, day by day, from the mirror."""
    now = runtime().clock.now()
    with reading(runtime().sessions) as session:
        cal = session.get(Calendar, calendar_id)
        if cal is None or cal.removed_at is not None:
            abort(404)
        days = timeline.coming_week(session, cal, now)
        account = cal.account.email
    return render_template("dashboard/calendar.html", calendar=cal, account=account, days=days, now=now)


@bp.get("/changes")
@require_admin
def changes() -> Any:
    calendar_id = _int_arg("calendar", most=INT_MAX)
    before = _int_arg("before")
    with reading(runtime().sessions) as session:
        window = feed_window(session, calendar_id=calendar_id, below=before, limit=PAGE_SIZE)
        rows = [_change_view(c) for c in window.entries]
        calendars = _calendar_choices(session)
    cursor = rows[0]["seq"] if rows else (before - 1 if before else 0)
    return render_template(
        "dashboard/changes.html",
        changes=rows,
        calendars=calendars,
        calendar_id=calendar_id,
        before=before,
        older=window.older,
        cursor=cursor,
        live=before is None,
        now=runtime().clock.now(),
    )


@bp.get("/changes/fragment")
@require_admin
def changes_fragment() -> Any:
    """Rows newer than `after`, for the auto-refresh script; the new cursor is in X-Cursor."""
    after = _int_arg("after", 0) or 0
    calendar_id = _int_arg("calendar", most=INT_MAX)
    with reading(runtime().sessions) as session:
        window = feed_window(session, calendar_id=calendar_id, above=after, limit=PAGE_SIZE)
        rows = [_change_view(c) for c in window.entries]
    html = render_template("dashboard/_change_rows.html", changes=rows, now=runtime().clock.now())
    return html, 200, _fragment_headers(rows[0]["seq"] if rows else after, gap=window.older is not None)


@bp.get("/notifications")
@require_admin
def notifications() -> Any:
    limit = _limit()
    channel = request.args.get("channel") or None
    show = _show_arg()
    with reading(runtime().sessions) as session:
        rows = logged_notifications(session, limit, channel=channel, show=show)
    cursor = rows[0][0].id if rows else 0
    return render_template(
        "dashboard/notifications.html",
        rows=rows,
        limit=limit,
        channel=channel,
        show=show,
        cursor=cursor,
        now=runtime().clock.now(),
        log_size=runtime().settings.notification_log_size,
    )


@bp.get("/notifications/fragment")
@require_admin
def notifications_fragment() -> Any:
    after = _int_arg("after", 0) or 0
    channel = request.args.get("channel") or None
    limit = _limit()
    with reading(runtime().sessions) as session:
        rows = logged_notifications(session, limit + 1, channel=channel, after=after, show=_show_arg())
    gap = len(rows) > limit
    rows = rows[:limit]
    html = render_template("dashboard/_notification_rows.html", rows=rows, now=runtime().clock.now())
    return html, 200, _fragment_headers(rows[0][0].id if rows else after, gap=gap)


def _fragment_headers(cursor: int, *, gap: bool) -> dict[str, str]:
    """A live view's next cursor, and `X-Gap` when more rows came than one fragment holds: the script
    then reloads the page (newest rows, with its link to older ones) rather than skip those between."""
    headers = {"X-Cursor": str(cursor), "Content-Type": "text/html; charset=utf-8"}
    if gap:
        headers["X-Gap"] = "1"
    return headers


@bp.get("/webhooks")
@require_admin
def webhooks() -> Any:
    state = request.args.get("state") or None
    with reading(runtime().sessions) as session:
        subs = list_subscriptions(session)
        deliveries = {sub.id: recent_deliveries(session, sub, state=state) for sub in subs}
        failed = failed_counts(session)
    return render_template(
        "dashboard/webhooks.html",
        subs=subs,
        deliveries=deliveries,
        state=state,
        failed_counts=failed,
        now=runtime().clock.now(),
    )


@bp.post("/webhooks/<sub_id>/replay")
@require_admin
def replay(sub_id: str) -> Any:
    """Queue one delivery again (form field `delivery`), or every failed one of the subscription."""
    from calsync.errors import InvalidSubscription
    from calsync.webhooks.claimcheck import replay as replay_deliveries
    from calsync.webhooks.subscriptions import get_subscription

    delivery = _int_arg("delivery", source=request.form)
    rt = runtime()
    try:
        with transaction(rt.sessions) as session:
            sub = get_subscription(session, sub_id, lock=True)
            queued = replay_deliveries(session, sub, None if delivery is None else [delivery], rt.clock.now())
            rt.wakeup.notify_after_commit(session)
    except InvalidSubscription as err:
        flash(f"Nothing replayed: {err}")
    else:
        flash(
            f"Queued {len(queued)} deliver{'y' if len(queued) == 1 else 'ies'} again; the worker sends "
            "them with their original webhook-id."
            if queued
            else "No failed delivery to replay."
        )
    back = request.form.get("back")
    return redirect(back if _is_dashboard_path(back) else url_for("dashboard.webhooks"))


@bp.post(f"/accounts/<int(max={INT_MAX}):account_id>/disconnect")
@require_admin
def disconnect(account_id: int) -> Any:
    from calsync.accounts.disconnect import disconnect_account

    rt = runtime()
    with rt.sessions() as session:
        account = session.get(Account, account_id)
        if account is None:
            abort(404)
        email = account.email
    disconnect_account(rt, account_id)
    flash(f"{email} is disconnected: its channels are stopped and its grant revoked.")
    return redirect(url_for("dashboard.overview"))


@bp.app_template_filter("ago")
def _ago_filter(value: datetime | None) -> Markup:
    """A relative time that shows the exact UTC time on hover."""
    return _time_tag(value, ago(value, runtime().clock.now()))


@bp.app_template_filter("expires")
def _expires_filter(value: datetime | None) -> Markup:
    return _time_tag(value, expires_in(value, runtime().clock.now()))


@bp.app_template_filter("duration")
def _duration_filter(seconds: float) -> str:
    return human_duration(seconds)


@bp.app_template_filter("utc")
def _utc_filter(value: datetime | None) -> str:
    return utc_label(value)


# Helpers ---------------------------------------------------------------------------------------
def _time_tag(value: datetime | None, text: str) -> Markup:
    if value is None:
        return Markup('<span class="muted">{}</span>').format(text)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(value.isoformat(), utc_label(value), text)


def _account_blocks(seen: Overview) -> list[AccountBlock]:
    accounts, calendars, serving = seen.accounts, seen.calendars, seen.serving
    return [
        AccountBlock(
            account=a,
            calendars=[CalendarRow(c, serving.calendars.get(c.id)) for c in calendars if c.account_id == a.id],
            list_channel=serving.lists.get(a.id),
        )
        for a in accounts
    ]


def _stats(session: Session, last_seq: int, now: datetime) -> dict[str, Any]:
    seen_at = last_heartbeat(session)
    activity = recent_activity(session, now)
    return {
        "last_seq": last_seq,
        "changes_today": activity.changes_today,
        "notifications_hour": activity.notifications_hour,
        "failed_deliveries": activity.failed_deliveries,
        "worker_seen": seen_at,
        "worker_alive": heartbeat_is_fresh(seen_at, now),
        "quota": outlook(session, runtime().settings, now),
    }


def _change_view(change: Change | SnapshotRun) -> dict[str, Any]:
    if isinstance(change, SnapshotRun):
        return _run_view(change)
    cal, account = change.calendar, change.account
    if change.kind is None:
        return _lifecycle_view(change)
    assert cal is not None and account is not None  # an event row names both
    return {
        "seq": change.seq,
        "kind": change.kind,
        "calendar": cal.summary or cal.google_id,
        "calendar_id": cal.id,
        "account": account.email,
        "event_id": change.event_id,
        "title": event_title(change.before, change.after, change.event_id or ""),
        "when": event_when(change.after or change.before),
        "diffs": field_diffs(change.fields, change.before, change.after) if change.kind == ChangeKind.UPDATED else [],
        "origin": change.origin,
        "idempotency_key": change.idempotency_key,
        "detected_at": change.detected_at,
    }


def _lifecycle_view(change: Change) -> dict[str, Any]:
    """A lifecycle row: its type as the badge, what happened in words, the app's ref beside it."""
    cal = change.calendar
    summary = (change.after or {}).get("summary") if cal is not None else None
    return {
        "seq": change.seq,
        "kind": "lifecycle",
        "label": change.type,
        "calendar": (summary or cal.google_id) if cal is not None else "",
        "calendar_id": cal.id if cal is not None else None,
        "account": change.account.email if change.account is not None else "",
        "event_id": "",
        "title": lifecycle_title(change.type, summary),
        "when": None,
        "diffs": [],
        "ref": change.ref,
        "detected_at": change.detected_at,
    }


def _run_view(run: SnapshotRun) -> dict[str, Any]:
    """One line for a calendar's first-sync snapshot, however many events it stored."""
    cal = run.calendar
    return {
        "seq": run.last_seq,
        "kind": ChangeKind.SNAPSHOT.value,
        "run": True,
        "calendar": cal.summary or cal.google_id,
        "calendar_id": cal.id,
        "account": cal.account.email,
        "title": f"First sync: {run.count:,} event{'' if run.count == 1 else 's'}",
        "seqs": f"seq {run.first_seq:,}" if run.count == 1 else f"seq {run.first_seq:,}–{run.last_seq:,}",
        "detected_at": run.detected_at,
    }


def _calendar_choices(session: Session) -> list[tuple[int, str]]:
    return [(cid, f"{title} · {email}") for cid, title, email in calendar_titles(session)]


def _limit() -> int:
    wanted = _int_arg("limit", 50) or 50
    return max(1, min(wanted, runtime().settings.notification_log_size, 1000))


def _int_arg(name: str, default: int | None = None, *, source: Any = None, most: int = BIGINT_MAX) -> int | None:
    """A whole-number parameter: absent or empty is `default`; anything but ASCII digits, or a number
    past what its column holds (`most`), is a 400, not a 500 from the driver."""
    raw = (request.args if source is None else source).get(name)
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > most:
        abort(400, f"{name} must be a whole number from 0 to {most}")
    return int(raw)


def _show_arg() -> str:
    show = request.args.get("show") or "accepted"
    if show not in NOTIFICATION_VIEWS:
        abort(400, "show must be accepted or refused")
    return show


def _is_dashboard_path(value: str | None) -> TypeGuard[str]:
    return (
        value is not None
        and value.startswith("/dashboard")
        and "//" not in value
        and "\\" not in value
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)  # no CR/LF into a Location header
    )
