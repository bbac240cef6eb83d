"""The operator's read API: /api/calendars, /api/events, /api/changes, /api/freebusy (accounts: accounts_api).

Handlers are thin: parse and check parameters (a `BadParameter` is a 400, as `calsync.web.errors`
says), query, shape with `calsync.readmodels.reads`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from calsync.feed import reads as feed_reads
from calsync.readmodels import availability, reads
from calsync.readmodels.occurrences import check_window, known_zone, parse_instant
from calsync.store.db import reading
from calsync.store.jsontext import dumps
from calsync.web.api_token import require_api_token
from calsync.web.app import runtime
from calsync.web.errors import BadParameter

bp = Blueprint("api", __name__, url_prefix="/api")

_INTEGER = re.compile(r"-?[0-9]+")
_MAX_INT = 2**63 - 1


@bp.get("/calendars")
@require_api_token
def calendars() -> Any:
    with reading(runtime().sessions) as session:
        return jsonify(reads.list_calendars(session))


@bp.get("/events")
@require_api_token
def events() -> Any:
    google_id = _required("calendar")
    page_token = request.args.get("pageToken") or None
    if _flag("singleEvents"):
        return _single_events(google_id, page_token)
    for name in ("timeMin", "timeMax", "orderBy", "maxResults"):
        if name in request.args:
            raise BadParameter(f"{name}: only supported with singleEvents=true")
    with reading(runtime().sessions) as session:  # the page and its as_of_seq from one state of the mirror
        calendar = reads.one_calendar(session, google_id, request.args.get("account") or None)
        try:
            page = reads.events_page(session, calendar, page_token)
        except ValueError as err:
            raise BadParameter(f"pageToken: {err}") from err
    return jsonify(page)


def _single_events(google_id: str, page_token: str | None) -> Any:
    """Occurrences as Google's events.list?singleEvents=true gives them, from the mirror."""
    low, high = _required_time("timeMin"), _required_time("timeMax")
    try:
        check_window(low, high)
    except ValueError as err:
        raise BadParameter(f"timeMin/timeMax: {err}") from err
    order_by = request.args.get("orderBy")
    if order_by not in (None, "startTime"):
        raise BadParameter(f"orderBy: only startTime is supported with singleEvents=true, not {order_by!r}")
    size = min(
        _integer("maxResults", default=availability.SINGLE_EVENTS_DEFAULT_PAGE, minimum=1),
        availability.SINGLE_EVENTS_MAX_PAGE,
    )
    with reading(runtime().sessions) as session:
        calendar = reads.one_calendar(session, google_id, request.args.get("account") or None)
        try:
            page = availability.single_events_page(session, calendar, low, high, page_token=page_token, page_size=size)
        except ValueError as err:
            raise BadParameter(f"pageToken: {err}") from err
    return _json(page)


@bp.post("/freebusy")
@require_api_token
def freebusy() -> Any:
    """Google's freebusy.query body and answer shape, plus `as_of_seq`, `sync_state`, `last_synced_at`."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadParameter("body: a JSON object is required")
    low, high = _body_time(body, "timeMin"), _body_time(body, "timeMax")
    try:
        check_window(low, high)
    except ValueError as err:
        raise BadParameter(f"timeMin/timeMax: {err}") from err
    time_zone = body.get("timeZone")
    if time_zone is not None and (not isinstance(time_zone, str) or not known_zone(time_zone)):
        raise BadParameter(f"timeZone: not an IANA time zone: {time_zone!r}")
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise BadParameter('items: a non-empty list of {"id": calendar_id} is required')
    if len(items) > availability.FREEBUSY_MAX_CALENDARS:
        raise BadParameter(f"items: at most {availability.FREEBUSY_MAX_CALENDARS} calendars")
    ids: list[str] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise BadParameter('items: each item must be {"id": calendar_id}')
        if item["id"] not in ids:
            ids.append(item["id"])
    for name in ("calendarExpansionMax", "groupExpansionMax"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BadParameter(f"{name}: must be a positive whole number")
    seq, answers = availability.freebusy(runtime().sessions, ids, low, high)
    return Response(availability.freebusy_json(seq, answers, low, high, time_zone), mimetype="application/json")


def _json(body: dict[str, Any]) -> Response:
    """A JSON answer encoded by orjson: occurrence pages and busy lists are large and asked for often."""
    return Response(dumps(body), mimetype="application/json")


@bp.get("/changes")
@require_api_token
def changes() -> Any:
    after = _integer("after", default=0, minimum=0)
    limit = min(_integer("limit", default=feed_reads.CHANGES_DEFAULT_LIMIT, minimum=1), feed_reads.CHANGES_MAX_LIMIT)
    google_id = request.args.get("calendar")
    types = None
    if "types" in request.args:
        try:
            # comma-separated, or the parameter repeated (as generated clients send an array)
            types = feed_reads.parse_types(",".join(request.args.getlist("types")))
        except ValueError as err:
            raise BadParameter(f"types: {err}") from err
    origin = None
    if "origin" in request.args:
        try:
            origin = feed_reads.parse_origin(request.args["origin"])
        except ValueError as err:
            raise BadParameter(f"origin: {err}") from err
    with reading(runtime().sessions) as session:
        cals = None
        if google_id is not None:
            if not google_id:
                raise BadParameter("calendar: empty")
            cals = reads.find_calendars(session, google_id, request.args.get("account") or None)
        page = feed_reads.changes_page(session, after=after, limit=limit, calendars=cals, types=types, origin=origin)
    return jsonify(page.to_dict())


def _required(name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise BadParameter(f"{name}: required")
    return value


def _flag(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise BadParameter(f"{name}: must be true or false, not {raw!r}")


def _required_time(name: str) -> datetime:
    raw = request.args.get(name)
    if not raw:
        raise BadParameter(f"{name}: required with singleEvents=true")
    try:
        return parse_instant(raw)
    except ValueError as err:
        raise BadParameter(f"{name}: {err}") from err


def _body_time(body: dict[str, Any], name: str) -> datetime:
    raw = body.get(name)
    if not isinstance(raw, str) or not raw:
        raise BadParameter(f"{name}: required (an RFC 3339 time)")
    try:
        return parse_instant(raw)
    except ValueError as err:
        raise BadParameter(f"{name}: {err}") from err


def _integer(name: str, *, default: int, minimum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):  # as the document says: digits only, no padding
        raise BadParameter(f"{name}: not a whole number: {raw!r}")
    value = int(raw)
    if value < minimum:
        raise BadParameter(f"{name}: must be at least {minimum}")
    if value > _MAX_INT:
        raise BadParameter(f"{name}: too large")
    return value
