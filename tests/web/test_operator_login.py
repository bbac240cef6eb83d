"""Operator sign-in: the dashboard is closed without a password, open only to a signed-in session,
and every state-changing form needs the session's CSRF token."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from calsync import create_app
from calsync.config import Secret, Settings
from calsync.runtime import Runtime
from tests.web.dashboard_support import PASSWORD, add_account, csrf_from, sign_in


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, admin_password=Secret(PASSWORD))


@pytest.fixture
def admin_runtime(admin_settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(admin_settings)
    yield rt
    rt.close()


@pytest.fixture
def admin_client(admin_runtime: Runtime) -> Any:
    return create_app(runtime=admin_runtime).test_client()


def test_without_a_password_the_dashboard_explains_how_to_enable_it_and_shows_nothing(
    client: Any, runtime: Runtime
) -> None:
    add_account(runtime, "secret-person@example.com")
    for path in (
        "/dashboard/",
        "/dashboard/changes",
        "/dashboard/notifications",
        "/dashboard/webhooks",
        "/dashboard/login",
    ):
        resp = client.get(path)
        assert resp.status_code == 403, path
        assert "CALSYNC_ADMIN_PASSWORD" in resp.text
        assert "secret-person@example.com" not in resp.text
    assert client.post("/dashboard/login", data={"password": ""}).status_code == 403


def test_dashboard_redirects_to_sign_in_and_back(admin_client: Any, admin_runtime: Runtime) -> None:
    add_account(admin_runtime, "ann@example.com")
    resp = admin_client.get("/dashboard/changes?calendar=1")
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/dashboard/login?next=")
    page = admin_client.get(resp.headers["Location"])
    assert "ann@example.com" not in page.text
    signed = admin_client.post(
        "/dashboard/login",
        data={"csrf_token": csrf_from(page.text), "password": PASSWORD, "next": "/dashboard/changes?calendar=1"},
    )
    assert signed.status_code == 302 and signed.headers["Location"] == "/dashboard/changes?calendar=1"
    assert "ann@example.com" in admin_client.get("/dashboard/").text


def test_site_root_leads_to_the_dashboard(admin_client: Any) -> None:
    resp = admin_client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"] == "/dashboard/"


def test_wrong_password_is_refused(admin_client: Any, admin_runtime: Runtime) -> None:
    add_account(admin_runtime, "ann@example.com")
    page = admin_client.get("/dashboard/login")
    resp = admin_client.post("/dashboard/login", data={"csrf_token": csrf_from(page.text), "password": "guess"})
    assert resp.status_code == 401
    assert "not right" in resp.text
    assert admin_client.get("/dashboard/").status_code == 302


def test_login_form_without_csrf_token_is_refused(admin_client: Any) -> None:
    admin_client.get("/dashboard/login")
    resp = admin_client.post("/dashboard/login", data={"password": PASSWORD})
    assert resp.status_code == 403
    assert admin_client.get("/dashboard/").status_code == 302


def test_csrf_token_of_another_session_is_refused(admin_runtime: Runtime) -> None:
    app = create_app(runtime=admin_runtime)
    victim, attacker = app.test_client(), app.test_client()
    sign_in(victim)
    attacker_token = csrf_from(attacker.get("/dashboard/login").text)
    resp = victim.post("/dashboard/logout", data={"csrf_token": attacker_token})
    assert resp.status_code == 403
    assert victim.get("/dashboard/").status_code == 200


def test_sign_out_ends_the_session(admin_client: Any) -> None:
    token = sign_in(admin_client)
    assert admin_client.get("/dashboard/").status_code == 200
    resp = admin_client.post("/dashboard/logout", data={"csrf_token": token})
    assert resp.status_code == 302
    assert admin_client.get("/dashboard/").status_code == 302


def test_changing_the_password_signs_everyone_out(admin_client: Any, admin_settings: Settings) -> None:
    sign_in(admin_client)
    cookie = admin_client.get_cookie("session")
    changed = Runtime.create(dataclasses.replace(admin_settings, admin_password=Secret("a new password")))
    try:
        other = create_app(runtime=changed).test_client()
        other.set_cookie("session", cookie.value, domain=cookie.domain)
        assert other.get("/dashboard/").status_code == 302
    finally:
        changed.close()


def test_next_parameter_never_leaves_the_dashboard(admin_client: Any) -> None:
    page = admin_client.get("/dashboard/login")
    resp = admin_client.post(
        "/dashboard/login",
        data={"csrf_token": csrf_from(page.text), "password": PASSWORD, "next": "https://evil.example/dashboard"},
    )
    assert resp.headers["Location"] == "/dashboard/"


def test_repeated_wrong_passwords_are_throttled(admin_client: Any) -> None:
    token = csrf_from(admin_client.get("/dashboard/login").text)
    for _ in range(10):
        assert admin_client.post("/dashboard/login", data={"csrf_token": token, "password": "x"}).status_code == 401
    resp = admin_client.post("/dashboard/login", data={"csrf_token": token, "password": PASSWORD})
    assert resp.status_code == 429
    assert admin_client.get("/dashboard/").status_code == 302


def test_fragments_answer_401_to_scripts_without_a_session(admin_client: Any) -> None:
    resp = admin_client.get("/dashboard/changes/fragment?after=0", headers={"X-Requested-With": "fetch"})
    assert resp.status_code == 401


def test_connect_stays_public(admin_client: Any) -> None:
    resp = admin_client.get("/connect")
    assert not resp.headers.get("Location", "").startswith("/dashboard")
    assert resp.status_code not in (401, 403)


def test_dashboard_pages_are_not_cached_nor_framed(admin_client: Any) -> None:
    sign_in(admin_client)
    resp = admin_client.get("/dashboard/")
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
