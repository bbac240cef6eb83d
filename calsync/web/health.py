"""Liveness for load balancers and operators: the database answers and some worker is alive.

A web process with no worker behind it accepts notifications that nobody syncs, so a stale worker
heartbeat makes /healthz fail too.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError

from calsync.clock import rfc3339
from calsync.store.db import reading
from calsync.store.liveness import HEARTBEAT_SECONDS, heartbeat_is_fresh
from calsync.web.app import runtime
from calsync.work.liveness import last_heartbeat

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    rt = runtime()
    try:
        with reading(rt.sessions) as session:
            seen_at = last_heartbeat(session)
    except SQLAlchemyError as err:
        return jsonify(
            status="error", database=f"unreachable: {type(err).__name__}", worker="unknown", worker_seen_at=None
        ), 503
    now = rt.clock.now()
    if not heartbeat_is_fresh(seen_at, now):
        worker = (
            "no worker has ever reported"
            if seen_at is None
            else (
                f"stale: last heartbeat {int((now - seen_at).total_seconds())}s ago"
                f" (expected every {HEARTBEAT_SECONDS:g}s)"
            )
        )
        return jsonify(status="error", database="ok", worker=worker, worker_seen_at=rfc3339(seen_at)), 503
    return jsonify(status="ok", database="ok", worker="ok", worker_seen_at=rfc3339(seen_at)), 200
