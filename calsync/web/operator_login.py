"""Operator sign-in for the dashboard: one password (CALSYNC_ADMIN_PASSWORD), a session cookie, CSRF.

The session holds a keyed fingerprint of the password, not a bare flag, so changing the password
signs every operator out. Every state-changing form carries a per-session CSRF token, checked in
constant time before any view runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from calsync.web.app import runtime

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("operator_login", __name__, url_prefix="/dashboard")

SESSION_KEY = "calsync_admin"
SIGNED_IN_AT = "calsync_admin_at"
CSRF_KEY = "calsync_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_HOURS = 12
_FAILURES_ALLOWED = 10
_FAILURE_WINDOW = 300.0


def dashboard_enabled() -> bool:
    return bool(runtime().settings.admin_password)


def is_admin() -> bool:
    """True when this request's session was signed in with the current password, recently."""
    if not dashboard_enabled():
        return False
    marker = session.get(SESSION_KEY)
    signed_in_at = session.get(SIGNED_IN_AT)
    if not isinstance(marker, str) or not isinstance(signed_in_at, int | float):
        return False
    if time.time() - signed_in_at > SESSION_HOURS * 3600:
        return False
    return hmac.compare_digest(marker, _password_fingerprint())


def require_admin(view: F) -> F:
    """Dashboard views: the 'disabled' page without a password, the sign-in page without a session."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not dashboard_enabled():
            return render_template("dashboard/disabled.html"), 403
        if not is_admin():
            if request.headers.get("X-Requested-With") == "fetch" or request.method != "GET":
                abort(401)
            return redirect(url_for("operator_login.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def csrf_token() -> str:
    """This session's CSRF token, made on first use; put it in every form as `csrf_token`."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def check_csrf() -> None:
    """Refuse (403) a state-changing request whose form field or header lacks the session's token."""
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    expected = session.get(CSRF_KEY)
    given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(
            403, description="The form has expired or did not come from this dashboard. Reload the page and try again."
        )


@bp.record_once
def _install(state: Any) -> None:
    state.app.jinja_env.globals.update(csrf_token=csrf_token, csrf_field=CSRF_FIELD, is_admin=is_admin)
    state.app.extensions["calsync_login_throttle"] = _Throttle()


def render_error(err: Any) -> Any:
    """Dashboard errors in the dashboard's own page, not a bare server page."""
    return render_template("dashboard/error.html", error=err), err.code


bp.before_request(check_csrf)
for _code in (401, 403, 404, 429):
    bp.register_error_handler(_code, render_error)


@bp.after_request
def _no_store(response: Any) -> Any:
    return secure_headers(response)


def secure_headers(response: Any) -> Any:
    """Dashboard pages are private and never framed or cached; scripts and styles come from us only."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not dashboard_enabled():
        return render_template("dashboard/disabled.html"), 403
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if is_admin():
            return redirect(target)
        return render_template("dashboard/login.html", next=target)
    throttle: _Throttle = current_app.extensions["calsync_login_throttle"]
    client = request.remote_addr or "?"
    if throttle.blocked(client):
        return render_template(
            "dashboard/login.html", next=target, error="Too many failed attempts. Wait a few minutes and try again."
        ), 429
    given = request.form.get("password", "")
    expected = str(runtime().settings.admin_password)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        throttle.failed(client)
        return render_template("dashboard/login.html", next=target, error="That password is not right."), 401
    throttle.reset(client)
    session.clear()
    session[SESSION_KEY] = _password_fingerprint()
    session[SIGNED_IN_AT] = int(time.time())
    csrf_token()  # a fresh token for the signed-in session
    return redirect(target)


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("operator_login.login"))


def _password_fingerprint() -> str:
    """HMAC of the password under the app's secret key: proves the sign-in without storing the password."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    password = str(runtime().settings.admin_password or "").encode()
    return hmac.new(key, b"calsync-admin:" + password, hashlib.sha256).hexdigest()


def _safe_next(value: str | None) -> str:
    """Only dashboard paths on this site: a `next` parameter must never become an open redirect."""
    default = url_for("dashboard.overview")
    if not value:
        return default
    # A control character (CR, LF) cannot go into a Location header: werkzeug would raise, a 500.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard") or "\\" in value:
        return default
    return value


class _Throttle:
    """Slows password guessing: a client with too many failures in a window must wait (per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def blocked(self, client: str) -> bool:
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if time.monotonic() - t < _FAILURE_WINDOW]
            self._failures[client] = recent
            return len(recent) >= _FAILURES_ALLOWED

    def failed(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, []).append(time.monotonic())

    def reset(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
