"""Operator sign-in for the dashboard: one password (CALSYNC_ADMIN_PASSWORD), a session cookie, CSRF.

The cookie names a server-side session (calsync.accounts.operator_sign_in), so signing out ends it
for every copy of the cookie; it also holds a keyed fingerprint of the password, so changing the
password signs every operator out. Failed passwords slow down their own client only. Every
state-changing form carries a per-session CSRF token, checked in constant time before any view runs.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from calsync.accounts.operator_sign_in import (
    claim_attempt,
    client_key,
    end_session,
    forget_failures,
    session_is_live,
    start_session,
)
from calsync.store.db import statements_alone, transaction
from calsync.web.app import runtime

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("operator_login", __name__, url_prefix="/dashboard")

SESSION_KEY = "calsync_admin"
SESSION_ID = "calsync_sid"
CSRF_KEY = "calsync_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def dashboard_enabled() -> bool:
    return bool(runtime().settings.admin_password)


def is_admin() -> bool:
    """True when this request's cookie names a live sign-in made with the current password."""
    if not dashboard_enabled():
        return False
    if "calsync_is_admin" not in g:
        g.calsync_is_admin = _signed_in()
    return bool(g.calsync_is_admin)


def _signed_in() -> bool:
    marker = session.get(SESSION_KEY)
    session_id = session.get(SESSION_ID)
    if not isinstance(marker, str) or not isinstance(session_id, str):
        return False
    if not hmac.compare_digest(marker, _password_fingerprint()):
        return False
    rt = runtime()
    with rt.sessions() as db:
        statements_alone(db)
        return session_is_live(db, session_id, rt.clock.now())


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
    rt = runtime()
    client = client_key(request.remote_addr)
    with transaction(rt.sessions) as db:
        wait = claim_attempt(db, client, rt.clock.now())
    if wait:
        seconds = math.ceil(wait)
        page = render_template(
            "dashboard/login.html",
            next=target,
            error=f"Too many failed attempts from your address. Try again in {seconds} s.",
        )
        return page, 429, {"Retry-After": str(seconds)}
    given = request.form.get("password", "")
    expected = str(rt.settings.admin_password)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return render_template("dashboard/login.html", next=target, error="That password is not right."), 401
    with transaction(rt.sessions) as db:
        forget_failures(db, client)
        session_id = start_session(db, rt.clock.now())
    session.clear()
    session[SESSION_KEY] = _password_fingerprint()
    session[SESSION_ID] = session_id
    csrf_token()  # a fresh token for the signed-in session
    return redirect(target)


@bp.post("/logout")
def logout() -> Any:
    session_id = session.get(SESSION_ID)
    if isinstance(session_id, str):
        with transaction(runtime().sessions) as db:
            end_session(db, session_id)
    session.clear()
    g.calsync_is_admin = False
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
