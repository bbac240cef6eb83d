"""`POST /notifications`: Google's push messages. Checks the channel, marks work, answers at once.

Google retries only 500/502/503/504, and treats every other non-2xx as a failed message; so forged
or stale channels get 404 (no retries), and 503 is kept for "the database could not record it".
The request never calls Google: it only bumps counters that the worker coalesces into syncs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import Connection, bindparam, case, delete, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from calsync.metrics import NOTIFICATIONS
from calsync.models import Account, Calendar, Channel, Notification
from calsync.wakeup import CHANNEL as WAKEUP_CHANNEL
from calsync.web.app import runtime

bp = Blueprint("receiver", __name__)
log = logging.getLogger(__name__)

STATES = ("sync", "exists", "not_exists")
TRIM_EVERY = 100  # inserts between two trims of the notification log
BODY_CAP = 64 * 1024  # Google sends no body; anything this large is not Google
_LOGGED_HEADERS = ("X-Goog-Channel-ID", "X-Goog-Channel-Token", "X-Goog-Channel-Expiration",
                   "X-Goog-Message-Number", "X-Goog-Resource-ID", "X-Goog-Resource-State",
                   "X-Goog-Resource-URI", "User-Agent")


@dataclass(frozen=True)
class Push:
    """The X-Goog-* headers of one notification, parsed."""

    channel_id: str
    state: str
    message_number: int
    resource_id: str | None
    token: str | None


@bp.post("/notifications")
def notifications() -> Response:
    rt = runtime()
    if (request.content_length or 0) > BODY_CAP:
        NOTIFICATIONS.labels("none", "oversized").inc()
        return Response("body too large; notifications carry none\n", status=413, mimetype="text/plain")
    headers = _headers_for_log()
    push, problem = parse_headers(request.headers)
    if push is None:
        _record_quietly(rt, headers, outcome="malformed")
        NOTIFICATIONS.labels(str(request.headers.get("X-Goog-Resource-State", "none"))[:20], "malformed").inc()
        return Response(f"bad request: {problem}\n", status=400, mimetype="text/plain")
    try:
        # Core statements on one connection, not an ORM Session: the request is a few fixed
        # statements, and the Session's identity map and flush were most of its CPU.
        with rt.engine.begin() as conn:
            now = rt.clock.now()
            channel, outcome = _check(conn, push)
            if outcome is None and conn.dialect.name == "postgresql":
                outcome, row_id = _accept_in_one_statement(conn, push, channel, headers, now)
            else:
                if outcome is None:
                    outcome = _accept(conn, push, channel, now)
                row_id = _log(conn, push, headers, outcome, now)
            if row_id % TRIM_EVERY == 0:
                # The bounded log, as scheduler.trim_log: ids increase, so one range delete.
                conn.execute(_TRIM, {"upto": row_id - rt.settings.notification_log_size})
    except SQLAlchemyError:
        log.exception("could not record notification for channel %s", push.channel_id)
        NOTIFICATIONS.labels(push.state, "db_error").inc()
        return Response("cannot record the notification now\n", status=503, mimetype="text/plain")
    if outcome == "queued":
        rt.wakeup.notify_local()  # after the commit, so a woken worker sees the owed sync
    NOTIFICATIONS.labels(push.state, outcome).inc()
    if outcome in _REFUSED:
        log.warning("refused notification for channel %s: %s", push.channel_id, outcome)
        return Response("", status=404)
    return Response("", status=200)


def parse_headers(headers: Any) -> tuple[Push | None, str]:
    """The notification, or None and what is wrong with it."""
    channel_id = (headers.get("X-Goog-Channel-ID") or "").strip()
    if not channel_id or len(channel_id) > 255:
        return None, "missing or oversized X-Goog-Channel-ID"
    state = (headers.get("X-Goog-Resource-State") or "").strip()
    if state not in STATES:
        return None, "X-Goog-Resource-State must be sync, exists or not_exists"
    raw_number = (headers.get("X-Goog-Message-Number") or "").strip()
    if not raw_number.isdigit() or len(raw_number) > 18:
        return None, "X-Goog-Message-Number must be a whole number"
    return Push(channel_id=channel_id, state=state, message_number=int(raw_number),
                resource_id=headers.get("X-Goog-Resource-ID"), token=headers.get("X-Goog-Channel-Token")), ""


def token_matches(token_hash: str, token: str | None) -> bool:
    """Constant-time comparison of the presented token's digest with the stored one."""
    presented = hashlib.sha256((token or "").encode("utf-8")).hexdigest()
    return hmac.compare_digest(presented.encode(), token_hash.encode()) and token is not None


# Helpers ---------------------------------------------------------------------------------------
_REFUSED = {"unknown_channel", "bad_token", "bad_resource", "stopped_channel", "account_inactive"}


_CH, _ACC, _CAL, _LOG = (Channel.__table__, Account.__table__, Calendar.__table__,  # type: ignore[attr-defined]
                         Notification.__table__)  # type: ignore[attr-defined]
_NOW = bindparam("now", type_=_CAL.c.due_at.type)

# Built once: SQLAlchemy's compiled cache then serves every request without recompiling.
_LOOKUP = (select(_CH.c.token_hash, _CH.c.resource_id, _CH.c.status, _CH.c.kind, _CH.c.account_id,
                  _CH.c.calendar_id, _ACC.c.status.label("account_status"))
           .select_from(_CH.outerjoin(_ACC, _ACC.c.id == _CH.c.account_id))
           .where(_CH.c.id == bindparam("channel_id")))
# Atomic "newer than anything seen": a duplicate or an older message changes no row.
_MARK_SEEN = (update(_CH)
              .where(_CH.c.id == bindparam("channel_id"),
                     _CH.c.last_message_number.is_(None) | (_CH.c.last_message_number < bindparam("number")))
              .values(last_message_number=bindparam("number"),
                      status=case((_CH.c.status == "pending", "active"), else_=_CH.c.status)))
_OWE_CALENDAR_SYNC = (update(_CAL).where(_CAL.c.id == bindparam("calendar_id")).values(
    sync_requested=_CAL.c.sync_requested + 1,
    due_at=case((_CAL.c.retry_at > _NOW, _CAL.c.retry_at),
                ((_CAL.c.sync_requested > _CAL.c.sync_done) & (_CAL.c.due_at > _NOW), _CAL.c.due_at),
                else_=_NOW)))
_OWE_LIST_REFRESH = (update(_ACC).where(_ACC.c.id == bindparam("account_id")).values(
    list_requested=_ACC.c.list_requested + 1,
    list_due_at=case(((_ACC.c.list_error_count > 0) & (_ACC.c.list_due_at > _NOW), _ACC.c.list_due_at),
                     else_=_NOW)))
_INSERT_LOG = insert(_LOG)
_TRIM = delete(_LOG).where(_LOG.c.id <= bindparam("upto"))

# PostgreSQL: what _accept and _log do, in one round trip. Data-modifying CTEs share one snapshot
# and all run to completion; `seen` holds the channel row only when the message is newer than any
# seen, and its RETURNING sends the NOTIFY (delivered at commit) exactly when a sync is owed.
_ACCEPT_PG = text(f"""
WITH seen AS (
    UPDATE channels
       SET last_message_number = :number,
           status = CASE WHEN status = 'pending' THEN 'active' ELSE status END
     WHERE id = :channel_id AND (last_message_number IS NULL OR last_message_number < :number)
    RETURNING CASE WHEN :state <> 'sync' THEN pg_notify('{WAKEUP_CHANNEL}', '') END
), owe_calendar_sync AS (
    UPDATE calendars
       SET sync_requested = sync_requested + 1,
           due_at = CASE WHEN retry_at > :now THEN retry_at
                         WHEN sync_requested > sync_done AND due_at > :now THEN due_at
                         ELSE :now END
     WHERE id = :calendar_id AND :state <> 'sync' AND EXISTS (SELECT FROM seen)
), owe_list_refresh AS (
    UPDATE accounts
       SET list_requested = list_requested + 1,
           list_due_at = CASE WHEN list_error_count > 0 AND list_due_at > :now THEN list_due_at ELSE :now END
     WHERE id = :list_account_id AND :state <> 'sync' AND EXISTS (SELECT FROM seen)
)
INSERT INTO notifications (channel_id, resource_state, message_number, resource_id, headers, outcome, received_at)
SELECT :channel_id, :state, :number, :resource_id, :headers,
       CASE WHEN :state = 'sync' THEN 'sync' WHEN EXISTS (SELECT FROM seen) THEN 'queued' ELSE 'duplicate' END,
       :now
RETURNING id, outcome
""").bindparams(bindparam("now", type_=_CAL.c.due_at.type), bindparam("headers", type_=_LOG.c.headers.type))


def _check(conn: Connection, push: Push) -> tuple[Any, str | None]:
    """The channel's row, and the refusal outcome, or None when the notification is genuine."""
    channel = conn.execute(_LOOKUP, {"channel_id": push.channel_id}).first()
    if channel is None:
        return None, "unknown_channel"
    if not token_matches(channel.token_hash, push.token):
        return channel, "bad_token"
    if channel.resource_id and push.resource_id != channel.resource_id:
        return channel, "bad_resource"
    if channel.status not in ("pending", "active"):
        return channel, "stopped_channel"
    if channel.account_status != "active":
        return channel, "account_inactive"
    return channel, None


def _accept(conn: Connection, push: Push, channel: Any, now: datetime) -> str:
    newer = conn.execute(_MARK_SEEN, {"channel_id": push.channel_id, "number": push.message_number}).rowcount
    if push.state == "sync":
        return "sync"
    if not newer:
        return "duplicate"
    if channel.kind == "calendar_list":
        conn.execute(_OWE_LIST_REFRESH, {"account_id": channel.account_id, "now": now})
    elif channel.calendar_id is not None:
        conn.execute(_OWE_CALENDAR_SYNC, {"calendar_id": channel.calendar_id, "now": now})
    return "queued"


def _accept_in_one_statement(conn: Connection, push: Push, channel: Any, headers: dict[str, str],
                             now: datetime) -> tuple[str, int]:
    is_list = channel.kind == "calendar_list"
    row = conn.execute(_ACCEPT_PG, {
        "channel_id": push.channel_id, "number": push.message_number, "state": push.state, "now": now,
        "calendar_id": None if is_list else channel.calendar_id,
        "list_account_id": channel.account_id if is_list else None,
        "resource_id": (push.resource_id or "")[:255] or None, "headers": headers}).one()
    return str(row.outcome), int(row.id)


def request_calendar_sync(session: Session, calendar_id: int, now: datetime) -> None:
    """Owe one more sync, due now; coalescing lives in the counters.

    A sync already owed for later (a backoff's retry_at, or the follow-up of a burst) keeps its
    time: a notification never cuts a backoff short nor turns a burst into one call per message.
    """
    owed_later = (Calendar.sync_requested > Calendar.sync_done) & (Calendar.due_at > now)
    session.execute(update(Calendar).where(Calendar.id == calendar_id).values(
        sync_requested=Calendar.sync_requested + 1,
        due_at=case((Calendar.retry_at > now, Calendar.retry_at), (owed_later, Calendar.due_at), else_=now)))


def _log(conn: Connection, push: Push, headers: dict[str, str], outcome: str, now: datetime) -> int:
    result = conn.execute(_INSERT_LOG, {
        "channel_id": push.channel_id, "resource_state": push.state, "message_number": push.message_number,
        "resource_id": (push.resource_id or "")[:255] or None, "headers": headers, "outcome": outcome,
        "received_at": now})
    return int(result.inserted_primary_key[0])


def _record_quietly(rt: Any, headers: dict[str, str], *, outcome: str) -> None:
    try:
        with rt.engine.begin() as conn:
            conn.execute(_INSERT_LOG, {
                "channel_id": (headers.get("X-Goog-Channel-ID") or "")[:255] or None,
                "resource_state": (headers.get("X-Goog-Resource-State") or "")[:20] or None,
                "message_number": None, "resource_id": None, "headers": headers, "outcome": outcome,
                "received_at": rt.clock.now()})
    except SQLAlchemyError:
        log.exception("could not record a malformed notification")


def _headers_for_log() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _LOGGED_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            out[name] = "<redacted>" if name == "X-Goog-Channel-Token" else value[:512]
    return out
