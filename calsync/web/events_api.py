"""Writes through calsync: POST, PATCH and DELETE of events under /api/calendars/{calendar_id}/events.

HTTP only: headers and parameters are read here, the write itself is `calsync.sync.writes`, and its
refusals become the JSON errors of the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from calsync.errors import (
    Duplicate,
    Forbidden,
    GoogleApiError,
    GoogleNotFound,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidWrite,
    TransientGoogleError,
    WriteConflict,
)
from calsync.readmodels import reads
from calsync.store.db import statements_alone
from calsync.sync import writes
from calsync.web.api_token import json_error, require_api_token
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


# Errors ---------------------------------------------------------------------------------------
@bp.errorhandler(InvalidWrite)
def _invalid(err: InvalidWrite) -> Any:
    return _answer({"error": "bad_request", "message": str(err), "field": err.field}, 400)


@bp.errorhandler(InsufficientScope)
def _insufficient_scope(err: InsufficientScope) -> Any:
    return _answer({"error": "insufficient_scope", "message": str(err), "reconnect": err.reconnect}, 403)


@bp.errorhandler(IdempotencyKeyReused)
def _key_reused(err: IdempotencyKeyReused) -> Any:
    return json_error(422, "idempotency_key_reused", str(err))


@bp.errorhandler(WriteConflict)
def _conflict(err: WriteConflict) -> Any:
    return _answer({"error": "precondition_failed", "message": str(err), "current": err.current}, 412)


@bp.errorhandler(GoogleApiError)
def _google(err: GoogleApiError) -> Any:
    """Google's refusal, said plainly; a pause on Google's side is a 503 the app may retry."""
    if isinstance(err, TransientGoogleError):
        resp = json_error(503, "google_unavailable", f"Google did not answer the write; retry later ({err})")
        resp.headers["Retry-After"] = str(max(1, int(err.retry_after or 1)))
        return resp
    if isinstance(err, GoogleNotFound):
        return json_error(404, "not_found", f"Google has no such event (or it was deleted): {err}")
    if isinstance(err, Duplicate):
        return json_error(409, "duplicate", f"the calendar already holds an event with this id: {err}")
    if isinstance(err, Forbidden):
        return json_error(403, "forbidden", f"Google refused the write ({err.reason or 'forbidden'}): {err}")
    if err.status == 400:
        return json_error(400, "invalid_event", f"Google refused the event: {err}")
    return json_error(502, "google_error", f"Google answered {err.status or 'an error'}: {err}")


# Helpers --------------------------------------------------------------------------------------
def _calendar(google_id: str) -> int:
    with runtime().sessions() as session:
        statements_alone(session)  # one round trip: no BEGIN, no ROLLBACK
        return reads.one_calendar(session, google_id, request.args.get("account") or None).id


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
