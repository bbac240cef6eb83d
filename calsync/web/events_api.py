"""Writes through calsync: POST, PATCH and DELETE of events under /api/calendars/{calendar_id}/events.

HTTP only: headers and parameters are read here, the write itself is `calsync.sync.writes`, and its
refusals (and Google's) are answered by the error table, `calsync.web.errors`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from calsync.errors import InvalidWrite
from calsync.sync import writes
from calsync.web.api_token import require_api_token
from calsync.web.app import runtime

bp = Blueprint("events_api", __name__, url_prefix="/api/calendars")


@bp.post("/<calendar_id>/events")
@require_api_token
def create(calendar_id: str) -> Any:
    result = writes.create_event(
        runtime(),
        _calendar(calendar_id),
        _json_body(),
        idempotency_key=_header("Idempotency-Key"),
        send_updates=_send_updates(),
    )
    return _answer({"event": result.event, "seq": result.seq}, 200 if result.replayed else 201)


@bp.patch("/<calendar_id>/events/<event_id>")
@require_api_token
def patch(calendar_id: str, event_id: str) -> Any:
    result = writes.patch_event(
        runtime(),
        _calendar(calendar_id),
        event_id,
        _json_body(),
        if_match=_header("If-Match"),
        send_updates=_send_updates(),
    )
    return _answer({"event": result.event, "seq": result.seq}, 200)


@bp.delete("/<calendar_id>/events/<event_id>")
@require_api_token
def delete(calendar_id: str, event_id: str) -> Any:
    result = writes.delete_event(
        runtime(), _calendar(calendar_id), event_id, if_match=_header("If-Match"), send_updates=_send_updates()
    )
    return _answer({"seq": result.seq}, 200)


# Helpers --------------------------------------------------------------------------------------
def _calendar(google_id: str) -> writes.CalendarName:
    """The calendar as named; the write itself finds it, in its first statement."""
    return writes.CalendarName(google_id, request.args.get("account") or None)


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidWrite("body", "the body must be a JSON object (a Google Calendar Event resource)")
    return body


def _header(name: str) -> str | None:
    return request.headers.get(name)


def _send_updates() -> str | None:
    return request.args.get("sendUpdates")


def _answer(body: dict[str, Any], status: int) -> Response:
    resp = jsonify(body)
    resp.status_code = status
    return resp
