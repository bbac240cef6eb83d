"""OAuth 2.0 web-server flow endpoints: consent page, token, revoke, userinfo.

Usable unchanged by google-auth-oauthlib's ``Flow`` and google-auth's ``Credentials.refresh``.
Problems with the client or redirect URI are shown as a page and never redirected, like Google's
"Error 400: redirect_uri_mismatch"; token errors use Google's ``{"error", "error_description"}``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
)

from . import grants
from .errors import ApiError

if TYPE_CHECKING:
    from .emulator import Emulator

bp = Blueprint("oauth", __name__, template_folder="templates")


@bp.get("/o/oauth2/auth")
@bp.get("/o/oauth2/v2/auth")
def authorize() -> Any:
    """Validate the authorization request, then show the consent page (or auto-approve)."""
    g.api_method = "oauth.authorize"
    emu = _emulator()
    args = request.args
    client = emu.grants.clients.get(args.get("client_id", ""))
    if client is None:
        return _error_page(401, "invalid_client", "The OAuth client was not found.")
    redirect_uri = args.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return _error_page(
            400,
            "redirect_uri_mismatch",
            f"You can't sign in to this app because it doesn't comply with Google's "
            f"OAuth 2.0 policy. Request details: redirect_uri={redirect_uri}",
        )
    problem = _check_request(args)
    if problem:
        return _error_page(400, "invalid_request", problem)
    pending = {
        key: args.get(key)
        for key in (
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "access_type",
            "prompt",
            "include_granted_scopes",
            "code_challenge",
            "code_challenge_method",
            "login_hint",
        )
    }
    if emu.auto_approve:
        if emu.auto_approve.lower() not in emu.store.users:
            emu.create_user(emu.auto_approve)
        return redirect(_approve(emu, pending, emu.auto_approve.lower()))
    request_id = secrets.token_urlsafe(16)
    with emu.grants.lock:
        emu._pending_consents[request_id] = pending
    accounts = sorted(emu.store.users.values(), key=lambda u: u.email)
    hint = (args.get("login_hint") or "").lower()
    chosen = hint if hint in emu.store.users else (accounts[0].email if accounts else "")
    return render_template(
        "consent.html",
        request_id=request_id,
        accounts=accounts,
        chosen=chosen,
        hint=hint if hint not in emu.store.users else "",
        scopes=(args.get("scope") or "").split(),
    )


@bp.post("/o/oauth2/consent")
def consent() -> Any:
    """The consent form's Allow / Deny post: redirect back with a code or ``access_denied``."""
    g.api_method = "oauth.consent"
    emu = _emulator()
    with emu.grants.lock:
        pending = emu._pending_consents.pop(request.form.get("request_id", ""), None)
    if pending is None:
        return _error_page(400, "invalid_request", "This sign-in request has expired; start again.")
    if request.form.get("action") != "allow":
        return redirect(_with_query(pending["redirect_uri"], {"error": "access_denied", "state": pending.get("state")}))
    email = (request.form.get("other_account") or request.form.get("account") or "").strip().lower()
    if "@" not in email:
        return _error_page(400, "invalid_request", "Choose an account to continue.")
    if email not in emu.store.users:
        emu.create_user(email)
    return redirect(_approve(emu, pending, email))


@bp.post("/token")
def token() -> Any:
    """Token endpoint: ``authorization_code`` and ``refresh_token`` grants."""
    g.api_method = "oauth.token"
    emu = _emulator()
    try:
        emu.faults.check("oauth.token", None)
    except ApiError as err:  # an injected outage of the token endpoint, in OAuth's error shape
        response = _oauth_error(err.code, err.reason, err.message)
        response.headers.update(err.headers)
        return response
    form = request.form
    client_id, secret = _client_auth()
    client = emu.grants.clients.get(client_id or "")
    if client is None:
        return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
    if not secret or not secrets.compare_digest(secret, client.client_secret):
        return _oauth_error(401, "invalid_client", "Unauthorized")
    grant_type = form.get("grant_type")
    if not grant_type:
        return _oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
    if grant_type == "authorization_code":
        return _exchange_code(emu, client.client_id)
    if grant_type == "refresh_token":
        return _refresh(emu, client.client_id)
    return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")


@bp.route("/revoke", methods=["POST", "GET"])
@bp.route("/o/oauth2/revoke", methods=["POST", "GET"])
def revoke() -> Any:
    """Revoke the grant behind an access or refresh token."""
    g.api_method = "oauth.revoke"
    value = request.values.get("token", "")
    if not value:
        return _oauth_error(400, "invalid_request", "Missing required parameter: token")
    if not _emulator().grants.revoke_token(value):
        return _oauth_error(400, "invalid_token", "Token expired or revoked")
    return jsonify({})


@bp.get("/oauth2/v2/userinfo")
@bp.get("/oauth2/v3/userinfo")
def userinfo() -> Any:
    """Who the bearer token belongs to (what an app asks after sign-in)."""
    g.api_method = "oauth.userinfo"
    emu = _emulator()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    found = emu.grants.check_access(value.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        return _oauth_error(401, "invalid_request", "Invalid Credentials")
    g.user = found.grant.user
    user = emu.store.users.get(found.grant.user)
    name = user.name if user else found.grant.user
    uid = str(int(hashlib.sha256(found.grant.user.encode()).hexdigest()[:15], 16))
    if request.path.startswith("/oauth2/v3"):
        return jsonify({"sub": uid, "email": found.grant.user, "email_verified": True, "name": name})
    return jsonify({"id": uid, "email": found.grant.user, "verified_email": True, "name": name})


def _exchange_code(emu: Emulator, client_id: str) -> Any:
    form = request.form
    code_value = form.get("code")
    if not code_value:
        return _oauth_error(400, "invalid_request", "Missing required parameter: code")
    code = emu.grants.redeem(code_value)
    if code is None or code.grant.client_id != client_id:
        return _oauth_error(400, "invalid_grant", "Malformed auth code.")
    if form.get("redirect_uri") != code.redirect_uri:
        return _oauth_error(400, "redirect_uri_mismatch", "Bad Request")
    if code.challenge:
        verifier = form.get("code_verifier")
        if not verifier:
            return _oauth_error(400, "invalid_grant", "Missing code verifier.")
        if not grants.pkce_ok(verifier, code.challenge, code.method):
            return _oauth_error(400, "invalid_grant", "Invalid code verifier.")
    g.user = code.grant.user
    return jsonify(emu.grants.issue(code.grant, code.scopes, emu.access_token_ttl, code.give_refresh))


def _refresh(emu: Emulator, client_id: str) -> Any:
    value = request.form.get("refresh_token")
    if not value:
        return _oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
    found = emu.grants.check_refresh(value)
    if found is None:
        return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
    if found.grant.client_id != client_id:
        return _oauth_error(400, "unauthorized_client", "Unauthorized")
    asked = frozenset((request.form.get("scope") or "").split())
    if asked and not asked <= found.scopes:
        unknown = ", ".join(sorted(asked - found.scopes))
        return _oauth_error(400, "invalid_scope", f"Some requested scopes were invalid. {{invalid=[{unknown}]}}")
    g.user = found.grant.user
    return jsonify(emu.grants.issue(found.grant, asked or found.scopes, emu.access_token_ttl, False))


def _approve(emu: Emulator, pending: dict[str, Any], email: str) -> str:
    """Record consent and build the redirect back to the app with a fresh code."""
    g.user = email
    asked = set((pending.get("scope") or "").split())
    include = (pending.get("include_granted_scopes") or "").lower() == "true"
    grant = emu.grants.grant(email, pending["client_id"], asked, include)
    scopes = frozenset(grant.scopes if include else asked)
    code = emu.grants.new_code(
        grant,
        scopes,
        pending["redirect_uri"],
        pending.get("access_type") == "offline",
        "consent" in (pending.get("prompt") or "").split(),
        pending.get("code_challenge"),
        pending.get("code_challenge_method"),
    )
    return _with_query(
        pending["redirect_uri"],
        {
            "state": pending.get("state"),
            "code": code,
            "scope": " ".join(sorted(scopes)),
            "authuser": "0",
            "prompt": "consent",
        },
    )


def _check_request(args: Any) -> str | None:
    if args.get("response_type") != "code":
        return f"Invalid response_type: {args.get('response_type')!r} (only 'code' is supported)."
    if not args.get("scope"):
        return "Missing required parameter: scope"
    if args.get("access_type") not in (None, "online", "offline"):
        return f"Invalid access_type: {args.get('access_type')}"
    if args.get("code_challenge") and args.get("code_challenge_method", "plain") not in ("S256", "plain"):
        return "Invalid code_challenge_method."
    return None


def _client_auth() -> tuple[str | None, str | None]:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            raw = base64.b64decode(header[6:].strip()).decode()
        except ValueError:
            return None, None
        client_id, _, secret = raw.partition(":")
        return unquote(client_id), unquote(secret)
    return request.form.get("client_id"), request.form.get("client_secret")


def _with_query(url: str, params: dict[str, Any]) -> str:
    parts = urlsplit(url)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _error_page(status: int, error: str, detail: str) -> Response:
    html = render_template("oauth_error.html", status=status, error=error, detail=detail)
    return Response(html, status=status, mimetype="text/html")


def _oauth_error(status: int, error: str, description: str) -> Response:
    response = jsonify({"error": error, "error_description": description})
    response.status_code = status
    return response


def _emulator() -> Emulator:
    return cast("Emulator", current_app.extensions["calsync_emulator"])
