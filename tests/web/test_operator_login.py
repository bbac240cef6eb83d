"""Operator sign-in: the dashboard is closed without a password, open only to a signed-in session,
and every state-changing form needs the session's CSRF token."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from calsync import create_app
from calsync.clock import FrozenClock
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


PROXY = "10.0.0.1"  # the reverse proxy every request comes through
GUESSER = "203.0.113.7"
OPERATOR = "198.51.100.20"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC))


def proxied_app(settings: Settings, clock: FrozenClock, trusted_proxies: int) -> Iterator[Flask]:
    rt = Runtime.create(
        dataclasses.replace(settings, admin_password=Secret(PASSWORD), trusted_proxies=trusted_proxies), clock=clock
    )
    try:
        yield create_app(runtime=rt)
    finally:
        rt.close()


@pytest.fixture
def behind_proxy(settings: Settings, clock: FrozenClock) -> Iterator[Flask]:
    """calsync behind one reverse proxy, which it trusts (CALSYNC_TRUSTED_PROXIES=1)."""
    yield from proxied_app(settings, clock, 1)


@pytest.fixture
def direct(settings: Settings, clock: FrozenClock) -> Iterator[Flask]:
    """calsync reached directly (CALSYNC_TRUSTED_PROXIES left at 0)."""
    yield from proxied_app(settings, clock, 0)


def attempt(client: Any, password: str, *, peer: str, forwarded_for: str | None = None) -> Any:
    token = csrf_from(client.get("/dashboard/login", environ_base={"REMOTE_ADDR": peer}).text)
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post(
        "/dashboard/login",
        data={"csrf_token": token, "password": password},
        headers=headers,
        environ_base={"REMOTE_ADDR": peer},
    )


def test_a_guesser_is_slowed_while_the_operator_behind_the_same_proxy_signs_in(
    behind_proxy: Flask, clock: FrozenClock
) -> None:
    guesser, operator = behind_proxy.test_client(), behind_proxy.test_client()
    waits = []
    for n in range(12):
        resp = attempt(guesser, f"guess {n}", peer=PROXY, forwarded_for=GUESSER)
        if resp.status_code == 429:
            waits.append(int(resp.headers["Retry-After"]))
            # Held back before the password is even looked at: the right one does not help.
            assert attempt(guesser, PASSWORD, peer=PROXY, forwarded_for=GUESSER).status_code == 429
            clock.advance(waits[-1])
            resp = attempt(guesser, f"guess {n}", peer=PROXY, forwarded_for=GUESSER)
        assert resp.status_code == 401, resp.text
    assert waits == [1, 2, 4, 8, 16, 32, 64], "five free failures, then a doubling delay"

    signed = attempt(operator, PASSWORD, peer=PROXY, forwarded_for=OPERATOR)
    assert signed.status_code == 302
    assert operator.get("/dashboard/").status_code == 200
    assert attempt(guesser, PASSWORD, peer=PROXY, forwarded_for=GUESSER).status_code == 429


def test_the_delay_stops_growing_and_a_right_password_clears_it(behind_proxy: Flask, clock: FrozenClock) -> None:
    client = behind_proxy.test_client()
    for n in range(20):
        resp = attempt(client, f"guess {n}", peer=PROXY, forwarded_for=GUESSER)
        if resp.status_code == 429:
            assert int(resp.headers["Retry-After"]) <= 300
            clock.advance(int(resp.headers["Retry-After"]))
            resp = attempt(client, f"guess {n}", peer=PROXY, forwarded_for=GUESSER)
        assert resp.status_code == 401
    clock.advance(300)
    assert attempt(client, PASSWORD, peer=PROXY, forwarded_for=GUESSER).status_code == 302
    again = behind_proxy.test_client()  # the same address, not yet signed in
    for n in range(5):  # the count starts again: typing mistakes are free once more
        assert attempt(again, f"typo {n}", peer=PROXY, forwarded_for=GUESSER).status_code == 401


def test_without_trusted_proxies_a_forged_x_forwarded_for_is_ignored(direct: Flask) -> None:
    guesser = direct.test_client()
    for n in range(5):
        forged = f"192.0.2.{n}"
        assert attempt(guesser, "guess", peer=GUESSER, forwarded_for=forged).status_code == 401
    assert attempt(guesser, "guess", peer=GUESSER, forwarded_for="192.0.2.99").status_code == 429
    assert attempt(direct.test_client(), PASSWORD, peer=OPERATOR).status_code == 302


def test_behind_a_trusted_proxy_only_the_address_it_added_counts(behind_proxy: Flask) -> None:
    """A client can put anything in front of the header; the proxy appends the address it saw."""
    guesser = behind_proxy.test_client()
    for n in range(5):
        forwarded = f"192.0.2.{n}, {GUESSER}"
        assert attempt(guesser, "guess", peer=PROXY, forwarded_for=forwarded).status_code == 401
    assert attempt(guesser, "guess", peer=PROXY, forwarded_for=f"192.0.2.99, {GUESSER}").status_code == 429


def test_an_ipv6_guesser_cannot_escape_the_delay_by_changing_address_in_its_network(direct: Flask) -> None:
    guesser = direct.test_client()
    for n in range(5):
        assert attempt(guesser, "guess", peer=f"2001:db8:1:2::{n + 1:x}").status_code == 401
    assert attempt(guesser, "guess", peer="2001:db8:1:2:ffff::9").status_code == 429
    assert attempt(direct.test_client(), PASSWORD, peer="2001:db8:1:3::1").status_code == 302


def test_a_cookie_copied_before_sign_out_is_refused_after_it(admin_client: Any, admin_runtime: Runtime) -> None:
    token = sign_in(admin_client)
    copied = admin_client.get_cookie("session")
    assert admin_client.post("/dashboard/logout", data={"csrf_token": token}).status_code == 302
    replay = create_app(runtime=admin_runtime).test_client()
    replay.set_cookie("session", copied.value, domain=copied.domain)
    assert replay.get("/dashboard/").status_code == 302
    assert replay.get("/dashboard/changes/fragment?after=0", headers={"X-Requested-With": "fetch"}).status_code == 401


def test_signing_out_ends_only_that_session(admin_runtime: Runtime) -> None:
    app = create_app(runtime=admin_runtime)
    first, second = app.test_client(), app.test_client()
    token = sign_in(first)
    sign_in(second)
    first.post("/dashboard/logout", data={"csrf_token": token})
    assert first.get("/dashboard/").status_code == 302
    assert second.get("/dashboard/").status_code == 200


def test_a_session_ends_after_twelve_hours(behind_proxy: Flask, clock: FrozenClock) -> None:
    client = behind_proxy.test_client()
    assert attempt(client, PASSWORD, peer=PROXY, forwarded_for=OPERATOR).status_code == 302
    clock.advance(hours=11, minutes=59)
    assert client.get("/dashboard/").status_code == 200
    clock.advance(minutes=2)
    assert client.get("/dashboard/").status_code == 302


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
