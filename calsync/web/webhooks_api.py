"""`/api/webhooks`: operators manage subscriptions, read the claim check and replay failures.

Handlers parse, authorise and call calsync.webhooks; nothing here delivers a message (the worker
does). Creating a subscription calls the endpoint once, to verify it, before anything is stored.
"""

from __future__ import annotations

import sys
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from calsync.errors import (
    InvalidSubscription,
)
from calsync.store.db import transaction
from calsync.sync.mirror import unusable_text
from calsync.web.api_token import require_api_token
from calsync.web.app import runtime
from calsync.webhooks import claimcheck, subscriptions

bp = Blueprint("webhooks_api", __name__, url_prefix="/api/webhooks")

_MAX_ID = 2**63 - 1


@bp.post("")
@require_api_token
def create() -> ResponseReturnValue:
    rt = runtime()
    spec = subscriptions.parse_spec(_body(), rt.settings)
    sub, secret = subscriptions.register(rt, spec)
    return jsonify({**subscriptions.subscription_to_dict(sub), "secret": secret}), 201


@bp.get("")
@require_api_token
def index() -> ResponseReturnValue:
    with transaction(runtime().sessions) as session:
        subs = [subscriptions.subscription_to_dict(s) for s in subscriptions.list_subscriptions(session)]
    return jsonify({"webhooks": subs})


@bp.get("/<sub_id>")
@require_api_token
def show(sub_id: str) -> ResponseReturnValue:
    with transaction(runtime().sessions) as session:
        return jsonify(subscriptions.subscription_to_dict(subscriptions.get_subscription(session, sub_id)))


@bp.patch("/<sub_id>")
@require_api_token
def patch(sub_id: str) -> ResponseReturnValue:
    body = _body()
    unknown = sorted(set(body) - {"status"})
    if unknown or "status" not in body:
        field = unknown[0] if unknown else "status"
        raise InvalidSubscription(field, 'only {"status": "active" | "paused"} can be changed')
    rt = runtime()
    with transaction(rt.sessions) as session:
        sub = subscriptions.set_status(subscriptions.get_subscription(session, sub_id, lock=True), body["status"])
        rt.wakeup.notify_after_commit(session)
        return jsonify(subscriptions.subscription_to_dict(sub))


@bp.delete("/<sub_id>")
@require_api_token
def delete(sub_id: str) -> ResponseReturnValue:
    with transaction(runtime().sessions) as session:
        subscriptions.delete_subscription(session, subscriptions.get_subscription(session, sub_id, lock=True))
    return "", 204


@bp.post("/<sub_id>/rotate-secret")
@require_api_token
def rotate_secret(sub_id: str) -> ResponseReturnValue:
    body = _body(optional=True, fields={"grace_seconds"})
    grace = body.get("grace_seconds", subscriptions.DEFAULT_GRACE_SECONDS)
    if isinstance(grace, bool) or not isinstance(grace, int | float):
        raise InvalidSubscription("grace_seconds", "grace_seconds: a number of seconds")
    rt = runtime()
    with transaction(rt.sessions) as session:
        sub = subscriptions.get_subscription(session, sub_id, lock=True)
        secret = subscriptions.rotate_secret(rt.cipher, sub, rt.clock.now(), float(grace))
        return jsonify({**subscriptions.subscription_to_dict(sub), "secret": secret})


@bp.get("/<sub_id>/deliveries")
@require_api_token
def deliveries(sub_id: str) -> ResponseReturnValue:
    limit = request.args.get("limit", str(claimcheck.DEFAULT_LIMIT))
    if not (limit.isascii() and limit.isdigit()):  # str.isdigit alone also takes "²", which int() refuses
        raise InvalidSubscription("limit", "limit: a whole number")
    with transaction(runtime().sessions) as session:
        sub = subscriptions.get_subscription(session, sub_id)
        items = claimcheck.list_deliveries(session, sub, state=request.args.get("state"), limit=int(limit))
    return jsonify({"deliveries": items})


@bp.post("/<sub_id>/replay")
@require_api_token
def replay(sub_id: str) -> ResponseReturnValue:
    body = _body(optional=True, fields={"delivery_ids"})
    ids = body.get("delivery_ids")
    # Bounded, as the databases' integers are: SQLite raised OverflowError (a 500) on a larger one.
    if ids is not None and (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= _MAX_ID for i in ids)
    ):
        raise InvalidSubscription("delivery_ids", "delivery_ids: a non-empty list of delivery ids")
    rt = runtime()
    with transaction(rt.sessions) as session:
        sub = subscriptions.get_subscription(session, sub_id, lock=True)
        queued = claimcheck.replay(session, sub, ids, rt.clock.now())
        rt.wakeup.notify_after_commit(session)
    return jsonify({"replayed": len(queued), "delivery_ids": queued}), 202


def _body(*, optional: bool = False, fields: set[str] | None = None) -> dict[str, Any]:
    """The JSON object sent; with `fields`, any other key is refused (as creating a subscription does)."""
    if optional and not request.get_data():
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidSubscription("body", "the body must be a JSON object")
    unknown = sorted(set(data) - fields) if fields is not None else []
    if unknown:
        raise InvalidSubscription(unknown[0], f"{unknown[0]}: unknown field")
    for key, value in data.items():
        if _unstorable(key) or _unstorable(value):
            raise InvalidSubscription(key, f"{key}: a NUL character or a lone surrogate (\\ud800) is not allowed")
    return data


def _unstorable(value: Any) -> bool:
    """Text no database column holds: a NUL (PostgreSQL stores none in text or jsonb) or a lone
    surrogate (JSON allows `"\\ud800"`, UTF-8 has no form for it). Each was a 500, one of them after
    the endpoint had been called to verify it."""
    if isinstance(value, str):
        return unusable_text(value, sys.maxsize) is not None
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    return False
