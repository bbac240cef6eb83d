"""calsync's errors answer HTTP through one table: one status and code per error, wherever it is raised."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from flask import Flask

from calsync import create_app
from calsync.config import Secret, Settings
from calsync.errors import (
    CalsyncError,
    CursorExpired,
    InvalidConnectSession,
    InvalidSubscription,
    NotFoundError,
    UnsafeURLError,
    VerificationFailed,
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
        AmbiguousCalendar("add account=EMAIL"): (400, {"error": "ambiguous_calendar"}),
        UnsafeURLError("loopback"): (400, {"error": "unsafe_url", "field": "url"}),
        VerificationFailed("no echo"): (422, {"error": "verification_failed", "field": "url"}),
        NotFoundError("no such subscription"): (404, {"error": "not_found"}),
        CursorExpired(3, 10): (410, {"error": "cursor_expired", "oldest_seq": 10}),
    }
    assert {type(err) for err in expected} == set(errors.ANSWERS)
    schemas = document()["components"]["schemas"]
    for err, (status, fields) in expected.items():
        body = errors.error_body(err)
        assert errors.answer_for(err).status == status
        assert body == {**fields, "message": str(err)}
        schema = schemas["CursorExpired" if isinstance(err, CursorExpired) else "Error"]
        assert set(body) <= set(schema["properties"]) and set(schema["required"]) <= set(body)


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
    described = document()["components"]["schemas"]["Error"]["properties"]["error"]["description"]
    assert [a.error for a in errors.ANSWERS.values() if f"`{a.error}`" not in described] == []

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
