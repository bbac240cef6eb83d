"""The operator's read API (/api/calendars, /api/events, /api/changes) and account disconnects.

Handlers are thin: parse and check parameters (400 with a JSON error), query, shape with
`calsync.sync.reads`.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request

from calsync.accounts.disconnect import disconnect_account, find_account_id
from calsync.errors import NotFoundError
from calsync.sync import reads
from calsync.web.api_token import json_error, require_api_token
from calsync.web.app import runtime

bp = Blueprint("api", __name__, url_prefix="/api")

_INTEGER = re.compile(r"-?[0-9]+")
_MAX_INT = 2**63 - 1


class _BadParameter(ValueError):
    pass


@bp.errorhandler(_BadParameter)
def _bad_parameter(err: _BadParameter) -> Any:
    return json_error(400, "bad_request", str(err))


@bp.errorhandler(NotFoundError)
def _not_found(err: NotFoundError) -> Any:
    return json_error(404, "not_found", str(err))


@bp.errorhandler(reads.AmbiguousCalendar)
def _ambiguous(err: reads.AmbiguousCalendar) -> Any:
    return json_error(400, "ambiguous_calendar", str(err))


@bp.get("/calendars")
@require_api_token
def calendars() -> Any:
    with runtime().sessions() as session:
        return jsonify(reads.list_calendars(session))


@bp.get("/events")
@require_api_token
def events() -> Any:
    google_id = _required("calendar")
    page_token = request.args.get("pageToken") or None
    with runtime().sessions() as session:
        calendar = reads.one_calendar(session, google_id, request.args.get("account") or None)
        try:
            page = reads.events_page(session, calendar, page_token)
        except ValueError as err:
            raise _BadParameter(f"pageToken: {err}") from err
    return jsonify(page)


@bp.get("/changes")
@require_api_token
def changes() -> Any:
    after = _integer("after", default=0, minimum=0)
    limit = min(_integer("limit", default=reads.CHANGES_DEFAULT_LIMIT, minimum=1),
                reads.CHANGES_MAX_LIMIT)
    google_id = request.args.get("calendar")
    with runtime().sessions() as session:
        cals = None
        if google_id is not None:
            if not google_id:
                raise _BadParameter("calendar: empty")
            cals = reads.find_calendars(session, google_id, request.args.get("account") or None)
        page = reads.changes_page(session, after=after, limit=limit, calendars=cals)
    return jsonify(page.to_dict())


@bp.post("/accounts/<path:email>/disconnect")
@require_api_token
def disconnect(email: str) -> Any:
    rt = runtime()
    result = disconnect_account(rt, find_account_id(rt, email))
    return jsonify(result.to_dict())


def _required(name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise _BadParameter(f"{name}: required")
    return value


def _integer(name: str, *, default: int, minimum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):  # as the document says: digits only, no padding
        raise _BadParameter(f"{name}: not a whole number: {raw!r}")
    value = int(raw)
    if value < minimum:
        raise _BadParameter(f"{name}: must be at least {minimum}")
    if value > _MAX_INT:
        raise _BadParameter(f"{name}: too large")
    return value
