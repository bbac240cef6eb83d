"""End-user consent: /connect → Google → /oauth2callback → /connected, and /disconnect.

The callback only stores the account and wakes a worker: the first sync and the watch happen in
the worker, so the page answers at once.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from google.oauth2.credentials import Credentials
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from requests import RequestException

from calsync.accounts.connected import upsert_account
from calsync.accounts.disconnect import disconnect_account, find_account_id
from calsync.errors import ConfigError, GoogleApiError, NotFoundError
from calsync.google.calendar import GoogleCalendar
from calsync.google.oauth import authorization_url, make_flow
from calsync.store.db import transaction
from calsync.web.api_token import api_token_ok, json_error
from calsync.web.app import runtime

log = logging.getLogger(__name__)

bp = Blueprint("consent", __name__)

OAUTH_KEY = "oauth_pending"
CONNECTED_KEY = "connected_accounts"
LAST_KEY = "last_connected"


@bp.get("/connect")
def connect() -> Any:
    """Start Google's consent with PKCE; the state and verifier wait in the session."""
    settings = runtime().settings
    try:
        flow = make_flow(settings)
        url, state = authorization_url(flow)
    except ConfigError as err:
        log.error("consent unavailable: %s", err)
        return _page("consent/error.html", 503, title="Connecting is not configured",
                     message="This calsync installation cannot connect Google accounts yet.",
                     detail=str(err), variable="CALSYNC_GOOGLE_CLIENT_SECRETS")
    session[OAUTH_KEY] = {"state": state, "verifier": flow.code_verifier}
    return redirect(url, code=302)


@bp.get("/oauth2callback")
def oauth2callback() -> Any:
    """Check the single-use state, exchange the code, store the account, hand the sync to a worker."""
    pending = session.pop(OAUTH_KEY, None)
    given_state = request.args.get("state")
    if not pending or not given_state or not secrets.compare_digest(str(pending.get("state")), given_state):
        reason = "This sign-in link has expired or was already used." if not pending else \
            "The sign-in answer does not belong to this browser session."
        return _page("consent/error.html", 400, title="The connection could not be completed",
                     message=reason, retry=True)
    error = request.args.get("error")
    if error == "access_denied":
        return _page("consent/declined.html", 403)
    if error or not request.args.get("code"):
        return _page("consent/error.html", 400, title="The connection could not be completed",
                     message="Google did not grant access.", detail=error or "no authorization code", retry=True)
    rt = runtime()
    try:
        flow = make_flow(rt.settings, state=pending["state"], code_verifier=pending.get("verifier"))
        flow.fetch_token(code=request.args["code"])
        creds = flow.credentials
    except ConfigError as err:
        return _page("consent/error.html", 503, title="Connecting is not configured",
                     message="This calsync installation cannot connect Google accounts yet.",
                     detail=str(err), variable="CALSYNC_GOOGLE_CLIENT_SECRETS")
    except OAuth2Error as err:
        log.info("code exchange refused: %s", err.error)
        return _page("consent/error.html", 400, title="The connection could not be completed",
                     message="Google refused the sign-in code (it may have expired or been used already).",
                     detail=err.error, retry=True)
    except RequestException as err:
        log.warning("code exchange failed: %s", err)
        return _page("consent/error.html", 502, title="Google could not be reached",
                     message="The sign-in could not be finished because Google did not answer.", retry=True)
    try:
        email = GoogleCalendar(creds, rt.settings.calendar_api_endpoint).get_calendar("primary")["id"]
    except GoogleApiError as err:
        log.warning("primary calendar lookup failed: %s", err)
        return _page("consent/error.html", 502, title="The connection could not be completed",
                     message="Google did not let calsync read the account's primary calendar.",
                     detail=str(err), retry=True)
    with transaction(rt.sessions) as db:
        upsert_account(db, rt.cipher, email, creds, _granted_scopes(creds), rt.clock.now())
        rt.wakeup.notify_after_commit(db)
    log.info("account %s connected", email)
    session[CONNECTED_KEY] = sorted(set(session.get(CONNECTED_KEY, [])) | {email})
    session[LAST_KEY] = email
    return redirect(url_for("consent.connected"), code=303)


@bp.get("/connected")
def connected() -> Any:
    email = session.get(LAST_KEY)
    if not email:
        return redirect(url_for("consent.connect"))
    return _page("consent/connected.html", 200, account=email)


@bp.post("/disconnect")
def disconnect() -> Any:
    """For the operator's bearer token, or for the end user whose session connected the account."""
    payload = request.get_json(silent=True) if request.is_json else None
    email = (payload or {}).get("account") if isinstance(payload, dict) else request.form.get("account")
    as_operator = api_token_ok()
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


def _granted_scopes(creds: Credentials) -> list[str]:
    scopes: Any = creds.granted_scopes or creds.scopes or []
    if isinstance(scopes, str):
        scopes = scopes.split()
    return sorted(set(scopes))


def _page(template: str, status: int, **context: Any) -> Any:
    static = current_app.static_folder
    has_css = bool(static) and (Path(static) / "calsync.css").is_file()  # type: ignore[arg-type]
    return render_template(template, stylesheet=has_css, **context), status
