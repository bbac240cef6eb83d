"""`/api/connect-sessions` and `/api/accounts`: how an app connects its users' calendars and finds them again.

An app asks for a connect session for one of its users (`ref`), sends the user to its link and gets
them back at `return_to` with a one-time `connection` code, which its server confirms with the ref
of the user signed in to it; from then on the account carries the ref, and the app can list, look
up and disconnect accounts by it. Handlers parse, authorise and call calsync.accounts.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from calsync.accounts import connect_sessions, connections
from calsync.accounts.disconnect import disconnect_account, find_account_id
from calsync.clock import rfc3339
from calsync.errors import InvalidConnectSession
from calsync.readmodels import reads
from calsync.store.db import reading, transaction
from calsync.web.api_token import require_api_token
from calsync.web.app import runtime

bp = Blueprint("accounts_api", __name__, url_prefix="/api")


@bp.post("/connect-sessions")
@require_api_token
def create_connect_session() -> ResponseReturnValue:
    """A single-use link (15 minutes) that connects a Google account for the app's user `ref`."""
    rt = runtime()
    wanted = connect_sessions.parse_request(request.get_json(silent=True), rt.settings)
    with transaction(rt.sessions) as session:
        url, expires_at = connect_sessions.create(session, wanted, rt.settings.public_url, rt.clock.now())
    return jsonify({"url": url, "expires_at": rfc3339(expires_at)}), 201


@bp.post("/connect-sessions/confirm")
@require_api_token
def confirm_connection() -> ResponseReturnValue:
    """Attach the account a link's consent made to `ref`, the app's signed-in user, if the link was theirs.

    409 `ref_mismatch` drops the connection; an unknown code is a 404, a used or expired one a 410.
    """
    code, ref = connections.parse_confirm(request.get_json(silent=True))
    done = connections.confirm(runtime(), code, ref)
    return jsonify({"account": done.account, "ref": done.ref})


@bp.get("/accounts")
@require_api_token
def accounts() -> ResponseReturnValue:
    ref = _ref()
    with reading(runtime().sessions) as session:
        return jsonify(reads.list_accounts(session, ref))


@bp.post("/accounts/<path:email>/disconnect")
@require_api_token
def disconnect(email: str) -> ResponseReturnValue:
    """Disconnect the account; with `?ref=`, only if it is that user's (an app's guard against a wrong email)."""
    ref = _ref()
    rt = runtime()
    account_id = find_account_id(rt, email, ref=ref)
    return jsonify(disconnect_account(rt, account_id).to_dict())


def _ref() -> str | None:
    if "ref" not in request.args:
        return None
    ref = request.args["ref"]
    if not 1 <= len(ref) <= connect_sessions.REF_MAX or not ref.isprintable():
        raise InvalidConnectSession("ref", f"ref: 1-{connect_sessions.REF_MAX} printable characters")
    return ref
