"""calsync's errors answer HTTP through one table: one status and code per error, wherever it is raised."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from flask import Flask
from sqlalchemy.exc import OperationalError

from calsync import create_app
from calsync.config import Secret, Settings
from calsync.errors import (
    CalendarHeld,
    CalendarUsageLimited,
    CalsyncError,
    ConnectionUnusable,
    CursorExpired,
    Duplicate,
    Forbidden,
    GoogleApiError,
    GoogleNotFound,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidConnectSession,
    InvalidSubscription,
    InvalidWrite,
    NotFoundError,
    QuotaWait,
    RefMismatch,
    TransientGoogleError,
    UnsafeURLError,
    VerificationFailed,
    WriteConflict,
)
from calsync.readmodels.reads import AmbiguousCalendar
from calsync.runtime import Runtime
from calsync.web import errors
from calsync.web.openapi import DOCUMENT, document
from tests.web.dashboard_support import PASSWORD, sign_in


def test_every_error_of_the_table_answers_its_status_and_the_documented_shape() -> None:
    expected: dict[Exception, tuple[int, dict[str, Any]]] = {
        errors.BadParameter("limit: a whole number"): (400, {"error": "bad_request"}),
        InvalidConnectSession("ref", "ref: required"): (400, {"error": "bad_request", "field": "ref"}),
        InvalidSubscription("events", "events: unknown"): (400, {"error": "bad_request", "field": "events"}),
        InvalidWrite("start", "start: required"): (400, {"error": "bad_request", "field": "start"}),
        AmbiguousCalendar("add account=EMAIL"): (400, {"error": "ambiguous_calendar"}),
        UnsafeURLError("loopback"): (400, {"error": "unsafe_url", "field": "url"}),
        VerificationFailed("no echo"): (422, {"error": "verification_failed", "field": "url"}),
        errors.Unauthorized("missing or wrong bearer token"): (401, {"error": "unauthorized"}),
        NotFoundError("no such subscription"): (404, {"error": "not_found"}),
        CursorExpired(3, 10): (410, {"error": "cursor_expired", "oldest_seq": 10}),
        errors.DatabaseUnavailable("retry shortly"): (503, {"error": "database_unavailable"}),
        RefMismatch("another user's link"): (409, {"error": "ref_mismatch"}),
        ConnectionUnusable("too late", reason="expired"): (410, {"error": "connection_expired"}),
        InsufficientScope("read-only grant", reconnect="connect again"): (
            403,
            {"error": "insufficient_scope", "reconnect": "connect again"},
        ),
        IdempotencyKeyReused("another body"): (422, {"error": "idempotency_key_reused"}),
        WriteConflict("moved", current=None): (412, {"error": "precondition_failed", "current": None}),
        TransientGoogleError("backendError", retry_after=3): (
            503,
            {"error": "google_unavailable", "message": "Google did not answer the write; retry later (backendError)"},
        ),
        CalendarUsageLimited("Calendar usage limits exceeded.", retry_after=3600): (
            429,
            {
                "error": "calendar_usage_limits",
                "message": "Google's Calendar usage limits refuse this user's changes for some hours (too many "
                "events, invitations or calendars made in a short time); reads go on (Calendar usage limits exceeded.)",
            },
        ),
        CalendarHeld("held for 30 s", wait=5.0): (
            503,
            {"error": "calendar_busy", "message": "held for 30 s; nothing was sent to Google, retry"},
        ),
        QuotaWait("no room", wait=2.5): (
            503,
            {
                "error": "quota_exhausted",
                "message": "calsync's Google quota has no room for this write now; retry later (no room)",
            },
        ),
        GoogleNotFound("gone"): (
            404,
            {"error": "not_found", "message": "Google has no such event (or it was deleted): gone"},
        ),
        Duplicate("taken"): (
            409,
            {"error": "duplicate", "message": "the calendar already holds an event with this id: taken"},
        ),
        Forbidden("read-only", reason="requiredAccessLevel"): (
            403,
            {"error": "forbidden", "message": "Google refused the write (requiredAccessLevel): read-only"},
        ),
        GoogleApiError("boom", status=500): (502, {"error": "google_error", "message": "Google answered 500: boom"}),
    }
    assert {type(err) for err in expected} == set(errors.ANSWERS)
    schemas = document()["components"]["schemas"]
    for err, (status, fields) in expected.items():
        body = errors.error_body(err)
        assert errors.answer_for(err).status == status
        assert body == {"message": str(err), **fields}
        if isinstance(err, WriteConflict):
            continue  # its schema is the 412 answer's own (checked by the API's tests)
        name = {CursorExpired: "CursorExpired", InsufficientScope: "InsufficientScope"}.get(type(err), "Error")
        schema = schemas[name]
        assert set(body) <= set(schema["properties"]) and set(schema["required"]) <= set(body)


def test_an_error_whose_answer_depends_on_it_picks_its_variant() -> None:
    def answered(err: Exception) -> tuple[int, str, str]:
        return errors.answer_for(err).status, errors.error_body(err)["error"], errors.error_body(err)["message"]

    assert answered(ConnectionUnusable("no such code", reason="unknown")) == (404, "unknown_connection", "no such code")
    assert answered(ConnectionUnusable("done", reason="used")) == (410, "connection_used", "done")
    assert answered(GoogleApiError("bad time", status=400)) == (
        400,
        "invalid_event",
        "Google refused the event: bad time",
    )
    assert answered(GoogleApiError("no status")) == (502, "google_error", "Google answered an error: no status")


def test_the_database_away_answers_503_with_retry_after_in_the_api_and_on_pages(app: Flask) -> None:
    down = OperationalError("SELECT 1", {}, Exception("connection refused"))
    with app.test_request_context("/api/events"):
        api = app.make_response(app.handle_user_exception(down))
    with app.test_request_context("/dashboard"):
        page = app.make_response(app.handle_user_exception(down))
    assert (api.status_code, api.headers["Retry-After"]) == (503, "2")
    assert api.get_json() == {
        "error": "database_unavailable",
        "message": "the database cannot answer now; retry shortly",
    }
    assert (page.status_code, page.headers["Retry-After"], page.mimetype) == (503, "2", "text/html")
    assert page.get_data(as_text=True) == "the database cannot answer now; retry shortly\n"


def test_google_s_pause_answers_retry_after_from_its_own(app: Flask) -> None:
    with app.test_request_context("/api/calendars/x/events", method="POST"):
        resp = app.make_response(app.handle_user_exception(TransientGoogleError("rateLimit", retry_after=7.5)))
    # Rounded up: a client that retries after 7 s would come back before Google is ready.
    assert (resp.status_code, resp.headers["Retry-After"], resp.get_json()["error"]) == (503, "8", "google_unavailable")


def test_field_errors_have_one_code_whichever_part_refused_the_field(client: Any, api_headers: dict[str, str]) -> None:
    webhook = client.post("/api/webhooks", json={"url": "https://example.com/x", "events": []}, headers=api_headers)
    session = client.post("/api/connect-sessions", json={"return_to": "https://x.example/"}, headers=api_headers)
    deliveries = client.get("/api/webhooks/wh_x/deliveries?limit=x", headers=api_headers)
    assert [r.status_code for r in (webhook, session, deliveries)] == [400, 400, 400]
    assert {r.get_json()["error"] for r in (webhook, session, deliveries)} == {"bad_request"}
    assert [r.get_json()["field"] for r in (webhook, session, deliveries)] == ["events", "ref", "limit"]


def test_not_found_is_one_answer_in_every_part_of_the_api(client: Any, api_headers: dict[str, str]) -> None:
    answers = [
        client.get("/api/webhooks/wh_nope", headers=api_headers),
        client.post("/api/accounts/nobody@example.com/disconnect", headers=api_headers),
        client.get("/api/events?calendar=nobody@example.com", headers=api_headers),
    ]
    assert [(r.status_code, r.get_json()["error"]) for r in answers] == [(404, "not_found")] * 3
    assert all(set(r.get_json()) == {"error", "message"} for r in answers)


def test_outside_the_api_an_error_of_the_table_is_the_page_s_own_error_page(admin: Any) -> None:
    page = admin.post("/dashboard/webhooks/wh_nope/replay", data={"csrf_token": admin.csrf})
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert b"<html" in page.data.lower()


def test_the_table_is_registered_once_on_the_app_and_nowhere_else(app: Flask) -> None:
    """No blueprint answers an error of the table by itself: a second mapping could drift from it."""
    by_blueprint = {
        name: [kind for kind in handlers.get(None, {}) if any(issubclass(kind, row) for row in errors.ANSWERS)]
        for name, handlers in app.error_handler_spec.items()
    }
    assert {name: kinds for name, kinds in by_blueprint.items() if name is not None and kinds} == {}
    on_the_app = app.error_handler_spec[None][None]
    assert {kind: on_the_app[kind] for kind in errors.ANSWERS} == dict.fromkeys(errors.ANSWERS, errors.handle)
    assert all(issubclass(kind, CalsyncError | ValueError) for kind in errors.ANSWERS)


def test_the_openapi_document_names_every_code_of_the_table_and_has_no_duplicate_key() -> None:
    described = DOCUMENT.read_text(encoding="utf-8")
    codes = {a.error for a in errors.every_answer()}
    assert sorted(c for c in codes if f"`{c}`" not in described and f"const: {c}" not in described) == []

    class Strict(yaml.SafeLoader):
        """PyYAML keeps the last of two equal keys without a word; a document must not rely on that."""

    def no_duplicates(loader: Strict, node: yaml.MappingNode) -> Any:
        keys = [key.value for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
        duplicated = {k for k in keys if keys.count(k) > 1}
        assert not duplicated, f"duplicate keys {duplicated} at line {node.start_mark.line + 1}"
        return loader.construct_mapping(node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicates)
    yaml.load(DOCUMENT.read_text(encoding="utf-8"), Loader=Strict)


@pytest.fixture
def admin(settings: Settings) -> Iterator[Any]:
    """A test client signed in as the operator; `admin.csrf` holds the session's token."""
    runtime = Runtime.create(dataclasses.replace(settings, admin_password=Secret(PASSWORD)))
    client = create_app(runtime=runtime).test_client()
    client.csrf = sign_in(client)  # type: ignore[attr-defined]
    yield client
    runtime.close()


def test_a_pool_with_every_connection_busy_answers_503_not_500(runtime: Runtime, api_headers: dict[str, str]) -> None:
    """More requests holding a connection than the pool has (many threads, writes waiting their turn):
    the one left waiting past the pool's timeout is told to retry, as when the database is away."""
    from calsync.store.db import make_engine, make_sessionmaker

    engine = make_engine(runtime.settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    small = dataclasses.replace(runtime, engine=engine, sessions=make_sessionmaker(engine))
    app = create_app(runtime=small)
    try:
        with engine.connect():  # the pool's only connection, held
            resp = app.test_client().get("/api/changes", headers=api_headers)
        assert (resp.status_code, resp.headers["Retry-After"]) == (503, "2")
        assert resp.get_json()["error"] == "database_unavailable"
        assert app.test_client().get("/api/changes", headers=api_headers).status_code == 200  # free again
    finally:
        engine.dispose()
