"""The OpenAPI document: valid, served without a token, complete, and enforced on every /api response."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import requests
from flask import Flask, request
from openapi_spec_validator import validate

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.owed import request_calendar_sync
from calsync.web.openapi import document
from calsync.work.worker import Worker
from tests.conftest import API_TOKEN
from tests.openapi_support import CONFORMANCE
from tests.sync_support import calendar_row_id, connect_account
from tests.web.process_support import calsync_web

REPO = Path(__file__).resolve().parents[2]


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document())  # raises on any error
    assert document()["openapi"].startswith("3.1")


def test_it_is_served_without_a_token_as_json(client: Any) -> None:
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.get_json() == document()
    assert document()["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The value of `CALSYNC_API_TOKEN`.",
    }


def test_every_api_route_of_the_app_is_described_and_nothing_else(app: Flask) -> None:
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api")
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    described = {
        (path, method)
        for path, item in document()["paths"].items()
        if path.startswith("/api")
        for method in item
        if method != "parameters"
    }
    assert routes == described
    assert set(document()["paths"]["/notifications"]) == {"post"}
    assert document()["paths"]["/notifications"]["post"]["security"] == []


def test_protected_operations_name_the_bearer_scheme_and_their_401() -> None:
    assert document()["security"] == [{"bearer": []}]
    for path, item in document()["paths"].items():
        for method, op in item.items():
            if method == "parameters" or op.get("security") == []:
                continue
            assert "401" in op["responses"], (method, path)


def test_every_operation_on_the_database_declares_its_503() -> None:
    """The app answers 503 with Retry-After whenever the database is away, on every route that reads
    or writes it; the confirmation of a connection did not say so."""
    for path, item in document()["paths"].items():
        for method, op in item.items():
            if method == "parameters" or op["operationId"] == "getOpenApiDocument":
                continue
            assert "503" in op["responses"], (method, path)


def test_a_response_outside_the_document_is_caught(app: Flask, client: Any, api_headers: dict[str, str]) -> None:
    @app.after_request
    def corrupt(resp: Any) -> Any:
        if request.path == "/api/changes":
            resp.set_data(b'{"changes": [], "next": "zero"}')
        if request.path == "/api/calendars":
            resp.status_code = 418
        return resp

    checked = CONFORMANCE.checked
    assert client.get("/api/changes", headers=api_headers).status_code == 200
    assert client.get("/api/calendars", headers=api_headers).status_code == 418
    assert client.get("/api/webhooks", headers=api_headers).status_code == 200  # untouched: conforms
    assert client.put("/api/webhooks", headers=api_headers).get_json()["error"] == "method_not_allowed"
    assert CONFORMANCE.checked == checked + 4
    changes, calendars = CONFORMANCE.take()  # taken here, so that this test itself passes
    assert changes.startswith("GET /api/changes → 200: InvalidData") and "'zero' is not of type 'integer'" in changes
    assert calendars.startswith("GET /api/calendars → 418: ResponseNotFound")


def test_a_test_whose_response_breaks_the_document_fails(tmp_path: Path) -> None:
    """The whole mechanism, as a test run sees it: the test that made the wrong response fails."""
    (tmp_path / "test_wrong.py").write_text(
        textwrap.dedent("""
        from flask import request

        def test_right(client, api_headers):
            assert client.get("/api/changes", headers=api_headers).status_code == 200

        def test_wrong(app, client, api_headers):
            @app.after_request
            def corrupt(resp):
                if request.path == "/api/changes":
                    resp.set_data(b'{"changes": [], "next": 0, "surprise": true}')
                return resp
            assert client.get("/api/changes", headers=api_headers).status_code == 200
    """)
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "-k",
            "sqlite",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "1 failed, 1 passed" in run.stdout, run.stdout + run.stderr
    assert "ConformanceError" in run.stdout and "'surprise' was unexpected" in run.stdout


def test_a_generated_python_client_lists_a_real_change_from_a_live_calsync(
    settings: Settings, runtime: Runtime, emu: Any, tmp_path: Path
) -> None:
    """openapi-python-client, as the README shows it, against `calsync web`: typed pages, typed errors."""
    connect_account(runtime, emu, "ann@example.com")
    event = emu.insert_event(
        "ann@example.com",
        {
            "summary": "Standup",
            "start": {"dateTime": "2026-12-07T09:00:00Z"},
            "end": {"dateTime": "2026-12-07T09:15:00Z"},
        },
    )
    Worker(runtime, threads=1).run_burst()  # connects: lists calendars, first sync
    emu.patch_event("ann@example.com", event["id"], {"summary": "Standup (moved)"})
    with transaction(runtime.sessions) as session:
        request_calendar_sync(session, calendar_row_id(runtime, "ann@example.com"), runtime.clock.now())
    Worker(runtime, threads=1).run_burst()  # the edit becomes a change in the feed

    with calsync_web(settings, tmp_path / "web.log") as base:
        (tmp_path / "openapi.json").write_text(json.dumps(requests.get(base + "/api/openapi.json", timeout=10).json()))
        generated = subprocess.run(  # the README's command
            [
                str(Path(sys.executable).parent / "openapi-python-client"),
                "generate",
                "--path",
                "openapi.json",
                "--meta",
                "none",
                "--output-path",
                "calsync_client",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert generated.returncode == 0, generated.stdout + generated.stderr
        sys.path.insert(0, str(tmp_path))
        try:
            client_pkg = importlib.import_module("calsync_client")
            list_changes = importlib.import_module("calsync_client.api.feed.list_changes")
            models = importlib.import_module("calsync_client.models")
            with client_pkg.AuthenticatedClient(base_url=base, token=API_TOKEN) as client:
                page = list_changes.sync(client=client, after=0)
            with client_pkg.Client(base_url=base) as anonymous:
                refused = list_changes.sync_detailed(client=anonymous)
        finally:
            sys.path.remove(str(tmp_path))
            for name in [m for m in sys.modules if m == "calsync_client" or m.startswith("calsync_client.")]:
                del sys.modules[name]

    assert isinstance(page, models.ChangesPage)
    updated = [c for c in page.changes if c.change == models.ChangeKind.UPDATED]
    assert len(updated) == 1 and updated[0].event_id == event["id"] and updated[0].fields == ["summary"]
    assert updated[0].after.additional_properties["summary"] == "Standup (moved)"
    assert page.next_ == page.changes[-1].seq  # `next` is a builtin: the generator names it `next_`
    assert refused.status_code == 401 and isinstance(refused.parsed, models.Error)
    assert refused.parsed.error == "unauthorized"


def test_every_reconnect_description_includes_the_confirm_step() -> None:
    text = json.dumps(document())
    described = list(re.finditer(r'"reconnect": \{[^{}]*\}', text))
    assert len(described) >= 2
    for match in described:
        assert "POST /api/connect-sessions/confirm" in match.group(0)
