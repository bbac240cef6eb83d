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
from sqlalchemy import case, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from calsync.db import transaction
from calsync.metrics import NOTIFICATIONS
from calsync.models import Account, Calendar, Channel, Notification
from calsync.scheduler import trim_log
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
        with transaction(rt.sessions) as session:
            outcome = _handle(session, push, rt.clock.now())
            row = _log(session, push, headers, outcome, rt.clock.now())
            if outcome == "queued":
                rt.wakeup.notify_after_commit(session)
            if row.id % TRIM_EVERY == 0:
                trim_log(session, rt.settings.notification_log_size, newest_id=row.id)
    except SQLAlchemyError:
        log.exception("could not record notification for channel %s", push.channel_id)
        NOTIFICATIONS.labels(push.state, "db_error").inc()
        return Response("cannot record the notification now\n", status=503, mimetype="text/plain")
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


def _handle(session: Session, push: Push, now: datetime) -> str:
    channel = session.get(Channel, push.channel_id)
    if channel is None:
        return "unknown_channel"
    if not token_matches(channel.token_hash, push.token):
        return "bad_token"
    if channel.resource_id and push.resource_id != channel.resource_id:
        return "bad_resource"
    if channel.status not in ("pending", "active"):
        return "stopped_channel"
    status = session.scalar(select(Account.status).where(Account.id == channel.account_id))
    if status != "active":
        return "account_inactive"
    # Atomic "newer than anything seen": a duplicate or an older message changes no row.
    newer = session.execute(
        update(Channel).where(Channel.id == channel.id, (Channel.last_message_number.is_(None))
                              | (Channel.last_message_number < push.message_number))
        .values(last_message_number=push.message_number,
                status=case((Channel.status == "pending", "active"), else_=Channel.status))
    ).rowcount
    if push.state == "sync":
        return "sync"
    if not newer:
        return "duplicate"
    if channel.kind == "calendar_list":
        _request_list_refresh(session, channel.account_id, now)
    elif channel.calendar_id is not None:
        request_calendar_sync(session, channel.calendar_id, now)
    return "queued"


def request_calendar_sync(session: Session, calendar_id: int, now: datetime) -> None:
    """Owe one more sync, due now; coalescing lives in the counters.

    A sync already owed for later (a backoff's retry_at, or the follow-up of a burst) keeps its
    time: a notification never cuts a backoff short nor turns a burst into one call per message.
    """
    owed_later = (Calendar.sync_requested > Calendar.sync_done) & (Calendar.due_at > now)
    session.execute(update(Calendar).where(Calendar.id == calendar_id).values(
        sync_requested=Calendar.sync_requested + 1,
        due_at=case((Calendar.retry_at > now, Calendar.retry_at), (owed_later, Calendar.due_at), else_=now)))


def _request_list_refresh(session: Session, account_id: int, now: datetime) -> None:
    in_backoff = (Account.list_error_count > 0) & (Account.list_due_at > now)
    session.execute(update(Account).where(Account.id == account_id).values(
        list_requested=Account.list_requested + 1,
        list_due_at=case((in_backoff, Account.list_due_at), else_=now)))


def _log(session: Session, push: Push, headers: dict[str, str], outcome: str, now: datetime) -> Notification:
    row = Notification(channel_id=push.channel_id, resource_state=push.state, message_number=push.message_number,
                       resource_id=(push.resource_id or "")[:255] or None, headers=headers, outcome=outcome,
                       received_at=now)
    session.add(row)
    session.flush()
    return row


def _record_quietly(rt: Any, headers: dict[str, str], *, outcome: str) -> None:
    try:
        with transaction(rt.sessions) as session:
            session.add(Notification(channel_id=(headers.get("X-Goog-Channel-ID") or "")[:255] or None,
                                     resource_state=(headers.get("X-Goog-Resource-State") or "")[:20] or None,
                                     headers=headers, outcome=outcome, received_at=rt.clock.now()))
    except SQLAlchemyError:
        log.exception("could not record a malformed notification")


def _headers_for_log() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _LOGGED_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            out[name] = "<redacted>" if name == "X-Goog-Channel-Token" else value[:512]
    return out
