"""JSON control API under ``/_emulator/``: the Python API for an emulator in another process.

Every route takes and returns JSON; bad input is a 400 ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request

from .errors import ApiError

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator
    from .push import PushRecord

bp = Blueprint("control", __name__, url_prefix="/_emulator")

Json = dict[str, Any]
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def error_response(status: int, message: str, reason: str | None = None) -> Response:
    """The control API's error shape."""
    error: dict[str, Any] = {"code": status, "message": message}
    if reason:
        error["reason"] = reason
    response = jsonify({"error": error})
    response.status_code = status
    return response


def route(rule: str, methods: list[str]) -> Callable[[_Handler], _Handler]:
    """Register a JSON handler receiving ``(emu, body, **path_args)``; map bad input to 400."""

    def decorate(handler: _Handler) -> _Handler:
        @wraps(handler)
        def wrapper(**kwargs: Any) -> Response:
            body = request.get_json(silent=True) if request.data else {}
            if not isinstance(body, dict):
                return error_response(400, "request body must be a JSON object")
            try:
                result = handler(current_app.extensions["calsync_emulator"], body, **kwargs)
            except ApiError as err:
                return error_response(err.code, err.message, err.reason)
            except (ValueError, TypeError, KeyError) as err:
                return error_response(400, f"bad request: {err}")
            return jsonify(_jsonable(result if result is not None else {}))

        bp.add_url_rule(rule, handler.__name__, wrapper, methods=methods)
        return handler

    return decorate


@route("/reset", ["POST"])
def reset(emu: Emulator, body: Json) -> Json:
    emu.reset()
    return {}


@route("/users", ["GET"])
def users(emu: Emulator, body: Json) -> list[Json]:
    with emu.store.lock:
        return [
            {
                "email": u.email,
                "name": u.name,
                "calendars": [e.calendar_id for e in u.entries.values() if not e.deleted],
            }
            for u in emu.store.users.values()
        ]


@route("/users", ["POST"])
def create_user(emu: Emulator, body: Json) -> Json:
    return {"email": emu.create_user(_str(body, "email"), body.get("name"))}


@route("/users/<email>/calendars", ["POST"])
def create_calendar(emu: Emulator, body: Json, email: str) -> Json:
    return {"id": emu.create_calendar(email, _str(body, "summary"), body.get("time_zone", "UTC"))}


@route("/users/<email>/calendars/<calendar_id>", ["DELETE"])
def remove_calendar(emu: Emulator, body: Json, email: str, calendar_id: str) -> Json:
    emu.remove_calendar(email, calendar_id)
    return {}


@route("/users/<email>/shared/<calendar_id>", ["POST"])
def share_calendar(emu: Emulator, body: Json, email: str, calendar_id: str) -> Json:
    emu.share_calendar(calendar_id, email, str(body.get("role", "reader")))
    return {}


@route("/users/<email>/revoke", ["POST"])
def revoke_grant(emu: Emulator, body: Json, email: str) -> Json:
    emu.revoke_grant(email)
    return {}


@route("/calendars/<calendar_id>/events", ["GET"])
def list_events(emu: Emulator, body: Json, calendar_id: str) -> list[Json]:
    return emu.events(calendar_id, include_cancelled=request.args.get("include_cancelled") == "true")


@route("/calendars/<calendar_id>/events", ["POST"])
def insert_event(emu: Emulator, body: Json, calendar_id: str) -> Json:
    return emu.insert_event(calendar_id, body)


@route("/calendars/<calendar_id>/events/bulk", ["POST"])
def bulk_insert(emu: Emulator, body: Json, calendar_id: str) -> Json:
    items = body.get("events")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("'events' must be a list of event objects")
    return {"inserted": emu.bulk_insert_events(calendar_id, items)}


@route("/calendars/<calendar_id>/events/<event_id>", ["PATCH"])
def patch_event(emu: Emulator, body: Json, calendar_id: str, event_id: str) -> Json:
    return emu.patch_event(calendar_id, event_id, body)


@route("/calendars/<calendar_id>/events/<event_id>", ["PUT"])
def update_event(emu: Emulator, body: Json, calendar_id: str, event_id: str) -> Json:
    return emu.update_event(calendar_id, event_id, body)


@route("/calendars/<calendar_id>/events/<event_id>", ["DELETE"])
def delete_event(emu: Emulator, body: Json, calendar_id: str, event_id: str) -> Json:
    emu.delete_event(calendar_id, event_id)
    return {}


@route("/calendars/<calendar_id>/events/<series_id>/instances/<original_start>", ["PATCH"])
def patch_instance(emu: Emulator, body: Json, calendar_id: str, series_id: str, original_start: str) -> Json:
    return emu.patch_instance(calendar_id, series_id, original_start, body)


@route("/calendars/<calendar_id>/events/<series_id>/instances/<original_start>", ["DELETE"])
def cancel_instance(emu: Emulator, body: Json, calendar_id: str, series_id: str, original_start: str) -> Json:
    return emu.cancel_instance(calendar_id, series_id, original_start)


@route("/clients", ["POST"])
def register_client(emu: Emulator, body: Json) -> Json:
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise ValueError("'redirect_uris' must be a list of strings")
    return emu.client_config(uris)


@route("/tokens", ["POST"])
def issue_tokens(emu: Emulator, body: Json) -> Json:
    scopes = body.get("scopes", ["https://www.googleapis.com/auth/calendar.readonly"])
    if isinstance(scopes, str):
        scopes = scopes.split()
    return emu.issue_tokens(_str(body, "email"), scopes, bool(body.get("offline", True)))


@route("/tokens/expire", ["POST"])
def expire_tokens(emu: Emulator, body: Json) -> Json:
    emu.expire_access_tokens()
    return {}


@route("/auto_approve", ["PUT"])
def auto_approve(emu: Emulator, body: Json) -> Json:
    email = body.get("email")
    if email is not None and not isinstance(email, str):
        raise ValueError("'email' must be a string or null")
    emu.auto_approve = email
    return {"email": email}


@route("/faults/fail_next", ["POST"])
def fail_next(emu: Emulator, body: Json) -> Json:
    emu.fail_next(
        int(body.get("n", 1)),
        int(body.get("status", 429)),
        str(body.get("reason", "rateLimitExceeded")),
        body.get("retry_after"),
        body.get("method"),
        body.get("calendar_id"),
    )
    return {}


@route("/faults/fail_after_write", ["POST"])
def fail_after_write(emu: Emulator, body: Json) -> Json:
    status = body.get("status", 503)
    emu.fail_after_write(
        int(body.get("n", 1)),
        hold=float(body.get("hold", 0.0)),
        status=None if status is None else int(status),
        reason=str(body.get("reason", "backendError")),
        method=body.get("method"),
        calendar_id=body.get("calendar_id"),
    )
    return {}


@route("/faults/slow_next", ["POST"])
def slow_next(emu: Emulator, body: Json) -> Json:
    emu.slow_next(int(body.get("n", 1)), float(body.get("seconds", 1.0)), body.get("method"), body.get("calendar_id"))
    return {}


@route("/faults/invalidate_sync_tokens", ["POST"])
def invalidate(emu: Emulator, body: Json) -> Json:
    emu.invalidate_sync_tokens(body.get("calendar_id"))
    return {}


@route("/faults/push", ["POST"])
def push_faults(emu: Emulator, body: Json) -> Json:
    emu.push_faults(
        float(body.get("drop", 0)),
        float(body.get("duplicate", 0)),
        float(body.get("delay", 0)),
        bool(body.get("reorder", False)),
    )
    return {}


@route("/quota", ["GET", "PUT"])
def quota(emu: Emulator, body: Json) -> Json:
    if body:
        per_project, per_user = body.get("per_project"), body.get("per_user")
        emu.enforce_quota(
            None if per_project is None else int(per_project),
            None if per_user is None else int(per_user),
            float(body.get("window", 60.0)),
        )
    cfg = emu.quota.config
    return {
        "per_project": cfg.per_project,
        "per_user": cfg.per_user,
        "window": cfg.window,
        "refused": emu.quota.refused,
    }


@route("/config", ["GET", "PUT"])
def config(emu: Emulator, body: Json) -> Json:
    for key in ("max_channel_ttl", "access_token_ttl"):
        if key in body:
            setattr(emu, key, int(body[key]))
    if "sync_token_max_age" in body:
        emu.sync_token_max_age = None if body["sync_token_max_age"] is None else float(body["sync_token_max_age"])
    return {
        "max_channel_ttl": emu.max_channel_ttl,
        "access_token_ttl": emu.access_token_ttl,
        "sync_token_max_age": emu.sync_token_max_age,
        "auto_approve": emu.auto_approve,
    }


@route("/requests", ["GET"])
def requests_log(emu: Emulator, body: Json) -> list[ApiRequest]:
    name, cal = request.args.get("api_method"), request.args.get("calendar_id")
    return [r for r in emu.requests if (name is None or r.api_method == name) and (cal is None or r.calendar_id == cal)]


@route("/notifications", ["GET"])
def notifications(emu: Emulator, body: Json) -> list[PushRecord]:
    return emu.notifications


@route("/channels", ["GET"])
def channels(emu: Emulator, body: Json) -> list[Json]:
    return emu.channels()


@route("/wait_push_idle", ["POST"])
def wait_push_idle(emu: Emulator, body: Json) -> Json:
    return {"idle": emu.wait_push_idle(min(float(body.get("timeout", 5.0)), 60.0))}


def _str(body: Json, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' is required (a string)")
    return value


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value
