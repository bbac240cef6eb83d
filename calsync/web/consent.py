"""End-user consent: /connect → Google → /oauth2callback → /connected, and /disconnect.

HTTP only: the session carries the pending consent between the two halves, and each outcome is a
page. The logic is `calsync.accounts.consent`; the first sync and the watch happen in a worker.
A consent started from an app's connect link (`/connect/<token>`) ends instead with a 303 back to
the app, whatever happened, once the link was claimed; a successful one carries the one-time code
the app's server confirms the connection with. The pages are never framed (no clickjacking of the
consent or of the disconnect button), and the end user's disconnect form carries a CSRF token.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from calsync.accounts import connect_sessions
from calsync.accounts.consent import finish_consent, start_consent
from calsync.accounts.disconnect import disconnect_account, find_account_id
from calsync.errors import ConnectionUnusable, ConnectLinkUnusable, ConsentError, NotFoundError
from calsync.store.db import transaction
from calsync.store.states import ConnectOutcome
from calsync.web.api_token import api_token_ok, json_error
from calsync.web.app import runtime
from calsync.web.operator_login import CSRF_FIELD, CSRF_HEADER, CSRF_KEY, csrf_token

log = logging.getLogger(__name__)

bp = Blueprint("consent", __name__)

OAUTH_KEY = "oauth_pending"
CONNECTED_KEY = "connected_accounts"
LAST_KEY = "last_connected"


@bp.after_request
def _not_framed(response: Response) -> Response:
    """Consent and disconnect pages act for the user who sees them: no other site may frame them."""
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    # The callback's address holds Google's code and the return holds the connection code.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


@bp.get("/connect")
def connect() -> ResponseReturnValue:
    """Start Google's consent with PKCE; the state and verifier wait in the session."""
    if not runtime().settings.public_connect:
        return _closed()
    try:
        pending = start_consent(runtime())
    except ConsentError as err:
        return _failure(err)
    session[OAUTH_KEY] = {"state": pending.state, "verifier": pending.verifier}
    return redirect(pending.url, code=302)


@bp.get("/connect/<token>")
def connect_link(token: str) -> ResponseReturnValue:
    """An app's connect link: claimed once, then the same consent as /connect, ending back at the app."""
    if request.method == "HEAD":  # a link checker's look must not use the link up
        return "", 200
    rt = runtime()
    try:
        with transaction(rt.sessions) as db:
            link = connect_sessions.claim(db, token, rt.clock.now())
    except ConnectLinkUnusable as err:
        return _page(
            "consent/link.html",
            404 if err.reason == "unknown" else 410,
            title=_LINK_TITLES[err.reason],
            message=str(err),
        )
    try:
        pending = start_consent(rt, login_hint=link.login_hint)
    except ConsentError as err:
        return _back_to_app(link.token_hash, ConnectOutcome.ERROR, error=err.reason)
    session[OAUTH_KEY] = {"state": pending.state, "verifier": pending.verifier, "link": link.token_hash}
    return redirect(pending.url, code=302)


@bp.get("/oauth2callback")
def oauth2callback() -> ResponseReturnValue:
    """Check the single-use state, then let the account be stored and its sync handed to a worker."""
    pending = session.pop(OAUTH_KEY, None)
    link = pending.get("link") if pending else None
    given_state = request.args.get("state")
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not a mismatch).
    expected = str(pending.get("state") if pending else "").encode()
    if not pending or not given_state or not secrets.compare_digest(expected, given_state.encode()):
        if link:
            return _back_to_app(link, ConnectOutcome.ERROR, error="state_mismatch")
        reason = (
            "This sign-in link has expired or was already used."
            if not pending
            else "The sign-in answer does not belong to this browser session."
        )
        return _page(
            "consent/error.html", 400, title="The connection could not be completed", message=reason, retry=True
        )
    if link and _consent_ended(link):
        return _back_to_app(link, ConnectOutcome.ERROR, error="link_used")
    if not link and not runtime().settings.public_connect:  # begun before it was closed
        return _closed()
    error = request.args.get("error")
    if error == "access_denied":
        if link:
            return _back_to_app(link, ConnectOutcome.DENIED, error="access_denied")
        return _page("consent/declined.html", 403)
    code = request.args.get("code")
    if error or not code:
        if link:
            return _back_to_app(link, ConnectOutcome.ERROR, error=_error_code(error))
        return _page(
            "consent/error.html",
            400,
            title="The connection could not be completed",
            message="Google did not grant access.",
            detail=error or "no authorization code",
            retry=True,
        )
    try:
        done = finish_consent(runtime(), pending["state"], pending.get("verifier"), code, link=link)
    except ConsentError as err:
        if link:
            return _back_to_app(link, ConnectOutcome.ERROR, error=err.reason)
        return _failure(err)
    except ConnectionUnusable:  # only a link's consent holds a connection: this link made one already
        return _back_to_app(str(link), ConnectOutcome.ERROR, error="link_used")
    email = done.email
    session[CONNECTED_KEY] = sorted(set(session.get(CONNECTED_KEY, [])) | {email})
    session[LAST_KEY] = email
    if link:
        return _back_to_app(link, ConnectOutcome.CONNECTED, account=email, connection=done.connection)
    return redirect(url_for("consent.connected"), code=303)


@bp.get("/connected")
def connected() -> ResponseReturnValue:
    email = session.get(LAST_KEY)
    if not email:
        return redirect(url_for("consent.connect"))
    return _page("consent/connected.html", 200, account=email, csrf_field=CSRF_FIELD, csrf=csrf_token())


@bp.post("/disconnect")
def disconnect() -> ResponseReturnValue:
    """For the operator's bearer token, or for the end user whose session connected the account
    (with the session's CSRF token: another site must not be able to post this form for them)."""
    payload = request.get_json(silent=True) if request.is_json else None
    email = (payload or {}).get("account") if isinstance(payload, dict) else request.form.get("account")
    as_operator = api_token_ok()
    if not as_operator and not _csrf_ok():
        return json_error(403, "csrf_failed", "the form has expired or did not come from this site: reload the page")
    if not isinstance(email, str) or not email:
        return json_error(400, "bad_request", "give the account's email in the field `account`")
    if not as_operator and email not in session.get(CONNECTED_KEY, []):
        return json_error(403, "forbidden", "only the operator or the user who connected it may disconnect it")
    rt = runtime()
    try:
        result = disconnect_account(rt, find_account_id(rt, email))
    except NotFoundError as err:
        return json_error(404, "not_found", str(err))
    if as_operator or request.is_json:
        return result.to_dict()
    session[CONNECTED_KEY] = [e for e in session.get(CONNECTED_KEY, []) if e != email]
    if session.get(LAST_KEY) == email:
        session.pop(LAST_KEY)
    return _page("consent/disconnected.html", 200, account=email, revoked=result.revoked)


_FAILURE_PAGES = {  # reason → (status, title, the variable to set, whether starting again may help)
    "not_configured": (503, "Connecting is not configured", "CALSYNC_GOOGLE_CLIENT_SECRETS", False),
    "exchange_refused": (400, "The connection could not be completed", None, True),
    "google_unreachable": (502, "Google could not be reached", None, True),
    "no_primary_calendar": (502, "The connection could not be completed", None, True),
    "quota_exhausted": (503, "Google is busy for a moment", None, True),
}


_LINK_TITLES = {
    "unknown": "This link does not work",
    "expired": "This link has expired",
    "used": "This link was already used",
}
_ERROR_CODE = re.compile(r"[a-z_]{1,40}")


def _csrf_ok() -> bool:
    expected = session.get(CSRF_KEY)
    given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    return isinstance(expected, str) and bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _back_to_app(
    link: str,
    outcome: ConnectOutcome,
    *,
    account: str | None = None,
    connection: str | None = None,
    error: str | None = None,
) -> ResponseReturnValue:
    """The 303 that ends every consent of a claimed link, after its outcome is recorded."""
    rt = runtime()
    try:
        with transaction(rt.sessions) as db:
            row = connect_sessions.settle(db, link, outcome)
            target = connect_sessions.return_url(
                row.return_to, row.ref, outcome, account=account, connection=connection, error=error
            )
    except ConnectLinkUnusable as err:
        return _page("consent/link.html", 404, title=_LINK_TITLES[err.reason], message=str(err))
    return redirect(target, code=303)


def _closed() -> ResponseReturnValue:
    """Plain `/connect` turned off (`CALSYNC_PUBLIC_CONNECT=0`): accounts come through an app's links."""
    return _page(
        "consent/error.html",
        404,
        title="Connect your calendar from the app you use",
        message="This calsync connects calendars only through the links its app makes for its users.",
        retry=False,
    )


def _consent_ended(link: str) -> bool:
    with runtime().sessions() as db:
        return connect_sessions.consent_ended(db, link)


def _error_code(error: str | None) -> str:
    """Google's error code when it is one (`invalid_scope`, `server_error`, …), never free text."""
    if error is None:
        return "no_code"
    return error if _ERROR_CODE.fullmatch(error) else "google_error"


def _failure(err: ConsentError) -> ResponseReturnValue:
    status, title, variable, retry = _FAILURE_PAGES[err.reason]
    return _page(
        "consent/error.html", status, title=title, message=str(err), detail=err.detail, variable=variable, retry=retry
    )


def _page(template: str, status: int, **context: Any) -> ResponseReturnValue:
    static = current_app.static_folder
    has_css = static is not None and (Path(static) / "calsync.css").is_file()
    return render_template(template, stylesheet=has_css, **context), status
