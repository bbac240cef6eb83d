"""Calendar API v3 routes, shaped exactly as google-api-python-client calls them.

Each handler: authenticate the bearer token, apply injected faults, check the scope, then call
the emulator (which owns locking and push).  Errors are ``ApiError`` rendered by the app.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, cast

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import fields, grants
from .errors import ApiError
from .store import RawJson

if TYPE_CHECKING:
    from .emulator import Emulator

bp = Blueprint("calendar_api", __name__, url_prefix="/calendar/v3")
READ, LIST, WRITE = grants.READ_SCOPES, grants.LIST_SCOPES, grants.WRITE_SCOPES
AUTH_HEADER = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'


def api(name: str, scopes: frozenset[str]) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Mark a handler as Calendar API method ``name`` needing one of ``scopes``."""

    def decorate(handler: Callable[..., Response]) -> Callable[..., Response]:
        @wraps(handler)
        def wrapper(**kwargs: Any) -> Response:
            g.api_method = name
            if "calendarId" in kwargs:
                g.calendar_id = kwargs["calendarId"]
            emu = _emulator()
            token = _authenticate(emu)
            g.user = token.grant.user
            g.client_id = token.grant.client_id
            if g.get("calendar_id") == "primary":
                g.calendar_id = token.grant.user
            emu.faults.check(name, g.get("calendar_id"))
            emu.quota.check(token.grant.user, emu.clock().timestamp())
            if not scopes & token.scopes:
                raise ApiError(
                    403,
                    "insufficientPermissions",
                    "Request had insufficient authentication scopes.",
                    top_message="Request had insufficient authentication scopes.",
                )
            response = handler(emu, token.grant.user, **kwargs)
            if scopes is WRITE:
                emu.faults.check_after_write(name, g.get("calendar_id"))
            return response

        return wrapper

    return decorate


@bp.get("/users/me/calendarList")
@api("calendar.calendarList.list", LIST)
def calendar_list(emu: Emulator, user: str) -> Response:
    return _reply(emu._api_calendar_list(user, _params()))


@bp.get("/users/me/calendarList/<path:calendarId>")
@api("calendar.calendarList.get", LIST)
def calendar_list_get(emu: Emulator, user: str, calendarId: str) -> Response:
    return _reply(emu._api_calendar_list_entry(user, calendarId))


@bp.post("/users/me/calendarList/watch")
@api("calendar.calendarList.watch", LIST)
def calendar_list_watch(emu: Emulator, user: str) -> Response:
    return _reply(emu._api_watch(user, None, _body(), g.client_id))


@bp.get("/calendars/<calendarId>")
@api("calendar.calendars.get", LIST | READ)
def calendar_get(emu: Emulator, user: str, calendarId: str) -> Response:
    return _reply(emu._api_calendar(user, calendarId))


@bp.get("/calendars/<calendarId>/events")
@api("calendar.events.list", READ)
def events_list(emu: Emulator, user: str, calendarId: str) -> Response:
    return _reply(emu._api_list_events(user, calendarId, _params()))


@bp.post("/calendars/<calendarId>/events/watch")
@api("calendar.events.watch", READ)
def events_watch(emu: Emulator, user: str, calendarId: str) -> Response:
    return _reply(emu._api_watch(user, calendarId, _body(), g.client_id))


@bp.post("/calendars/<calendarId>/events")
@api("calendar.events.insert", WRITE)
def events_insert(emu: Emulator, user: str, calendarId: str) -> Response:
    return _reply(emu._api_write(user, calendarId, "insert", None, _body()))


@bp.get("/calendars/<calendarId>/events/<eventId>")
@api("calendar.events.get", READ)
def events_get(emu: Emulator, user: str, calendarId: str, eventId: str) -> Response:
    return _reply(emu._api_get_event(user, calendarId, eventId))


@bp.get("/calendars/<calendarId>/events/<eventId>/instances")
@api("calendar.events.instances", READ)
def events_instances(emu: Emulator, user: str, calendarId: str, eventId: str) -> Response:
    return _reply(emu._api_instances(user, calendarId, eventId, _params()))


@bp.patch("/calendars/<calendarId>/events/<eventId>")
@api("calendar.events.patch", WRITE)
def events_patch(emu: Emulator, user: str, calendarId: str, eventId: str) -> Response:
    return _reply(emu._api_write(user, calendarId, "patch", eventId, _body(), _if_match()))


@bp.put("/calendars/<calendarId>/events/<eventId>")
@api("calendar.events.update", WRITE)
def events_update(emu: Emulator, user: str, calendarId: str, eventId: str) -> Response:
    return _reply(emu._api_write(user, calendarId, "update", eventId, _body(), _if_match()))


@bp.delete("/calendars/<calendarId>/events/<eventId>")
@api("calendar.events.delete", WRITE)
def events_delete(emu: Emulator, user: str, calendarId: str, eventId: str) -> Response:
    emu._api_write(user, calendarId, "delete", eventId, None, _if_match())
    return Response(status=204)


@bp.post("/channels/stop")
@api("calendar.channels.stop", READ | LIST)
def channels_stop(emu: Emulator, user: str) -> Response:
    body = _body()
    emu._api_stop_channel(user, body.get("id"), body.get("resourceId"), g.client_id)
    return Response(status=204)


def _reply(body: Any) -> Response:
    """JSON response, trimmed to the ``fields`` selection when one is given.

    List pages carry their events as cached ``RawJson`` text, spliced in rather than re-encoded.
    """
    found = body.get("items") if isinstance(body, dict) else None
    items: list[Any] = found if isinstance(found, list) else []
    raw = any(isinstance(item, RawJson) for item in items)
    selector = request.args.get("fields")
    if raw and selector:
        body = dict(body, items=[json.loads(i) if isinstance(i, RawJson) else i for i in items])
    if selector:
        body = fields.select(body, fields.parse(selector))
    elif raw:
        head = _dumps({k: v for k, v in body.items() if k != "items"})
        parts = [item if isinstance(item, RawJson) else _dumps(item) for item in items]
        text = head[:-1] + ("," if len(head) > 2 else "") + '"items":[' + ",".join(parts) + "]}"
        return Response(text, mimetype="application/json")
    return jsonify(body)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _emulator() -> Emulator:
    return cast("Emulator", current_app.extensions["calsync_emulator"])


def _authenticate(emu: Emulator) -> grants.Token:
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(
            401,
            "required",
            "Login Required.",
            location="Authorization",
            location_type="header",
            headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            top_message="Request is missing required authentication credential. Expected OAuth 2 "
            "access token, login cookie or other valid authentication credential.",
        )
    scheme, _, value = header.partition(" ")
    token = emu.grants.check_access(value.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        raise ApiError(
            401,
            "authError",
            "Invalid Credentials",
            location="Authorization",
            location_type="header",
            headers={"WWW-Authenticate": AUTH_HEADER},
            top_message="Request had invalid authentication credentials. Expected OAuth 2 "
            "access token, login cookie or other valid authentication credential.",
        )
    return token


def _if_match() -> str | None:
    """The ``If-Match`` etag of an update, patch or delete (``*`` matches any version)."""
    value = request.headers.get("If-Match")
    return value.strip() if value and value.strip() != "*" else None


def _params() -> dict[str, list[str]]:
    return {key: request.args.getlist(key) for key in request.args}


def _body() -> dict[str, Any]:
    if not request.data:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "parseError", "Parse Error")
    return body
