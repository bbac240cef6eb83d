"""`POST /notifications`: Google's push messages. Checks the channel, marks work, answers at once.

Google retries only 500/502/503/504, and treats every other non-2xx as a failed message; so forged
or stale channels get 404 (no retries), and 503 is kept for "the database could not record it".
The request never calls Google: it hands the notification to the process's intake (group commit,
`calsync.web.intake`) and answers once it is committed.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, request
from sqlalchemy import case, update
from sqlalchemy.orm import Session

from calsync.metrics import NOTIFICATIONS
from calsync.models import Calendar
from calsync.web.app import runtime
from calsync.web.intake import Intake, IntakeUnavailable
from calsync.web.intake_sql import REFUSED, Push

bp = Blueprint("receiver", __name__)
log = logging.getLogger(__name__)

STATES = ("sync", "exists", "not_exists")
BODY_CAP = 64 * 1024  # Google sends no body; anything this large is not Google
_LOGGED_HEADERS = ("X-Goog-Channel-ID", "X-Goog-Channel-Token", "X-Goog-Channel-Expiration",
                   "X-Goog-Message-Number", "X-Goog-Resource-ID", "X-Goog-Resource-State",
                   "X-Goog-Resource-URI", "User-Agent")
_ENVIRON_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in _LOGGED_HEADERS)


@bp.post("/notifications")
def notifications() -> Response:
    if (request.content_length or 0) > BODY_CAP:
        NOTIFICATIONS.labels("none", "oversized").inc()
        return Response("body too large; notifications carry none\n", status=413, mimetype="text/plain")
    sent = _google_headers()
    push, problem = parse_headers(sent)
    state = push.state if push else sent.get("X-Goog-Resource-State", "none")[:20]
    try:
        outcome = _intake().record(push, _for_log(sent))
    except IntakeUnavailable:
        NOTIFICATIONS.labels(state, "db_error").inc()
        if push is not None:
            return Response("cannot record the notification now\n", status=503, mimetype="text/plain")
        outcome = "malformed"
    NOTIFICATIONS.labels(state, outcome).inc()
    if push is None:
        return Response(f"bad request: {problem}\n", status=400, mimetype="text/plain")
    if outcome in REFUSED:
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


def _intake() -> Intake:
    """The app's intake, made on first use (in the serving process, after any fork)."""
    intake = current_app.extensions.get("calsync.intake")
    if intake is None:
        intake = current_app.extensions.setdefault("calsync.intake", Intake(runtime()))
    return intake  # type: ignore[no-any-return]


def request_calendar_sync(session: Session, calendar_id: int, now: datetime) -> None:
    """Owe one more sync, due now; coalescing lives in the counters.

    A sync already owed for later (a backoff's retry_at, or the follow-up of a burst) keeps its
    time: a notification never cuts a backoff short nor turns a burst into one call per message.
    """
    owed_later = (Calendar.sync_requested > Calendar.sync_done) & (Calendar.due_at > now)
    session.execute(update(Calendar).where(Calendar.id == calendar_id).values(
        sync_requested=Calendar.sync_requested + 1,
        due_at=case((Calendar.retry_at > now, Calendar.retry_at), (owed_later, Calendar.due_at), else_=now)))


def _google_headers() -> dict[str, str]:
    """The headers Google sends, read from the WSGI environ: werkzeug's case-insensitive view of the
    headers cost more than the rest of the receiver's own work."""
    environ = request.environ
    return {name: environ[key] for name, key in _ENVIRON_KEYS if key in environ}


def _for_log(headers: dict[str, str]) -> dict[str, str]:
    return {name: "<redacted>" if name == "X-Goog-Channel-Token" else value[:512] for name, value in headers.items()}
