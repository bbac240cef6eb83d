"""Connect sessions: a single-use consent link an app makes for one of its users, and the way back.

The app names its user (`ref`) and where the user returns (`return_to`, which must start with a
prefix of `CALSYNC_RETURN_URLS`: calsync never redirects anywhere else). The link's token is random
and stored only as its SHA-256, so the table cannot be used to open a link. Opening the link claims
it, in one statement that only an unused, unexpired link passes; the consent that follows ends with
a 303 to `return_to` carrying `ref`, `status` and `account` or `error`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from calsync.config import Settings
from calsync.errors import ConnectLinkUnusable, InvalidConnectSession
from calsync.store.db import rows_affected
from calsync.store.models import ConnectSession
from calsync.store.states import ConnectOutcome

LINK_TTL = timedelta(minutes=15)
REF_MAX = 200
LOGIN_HINT_MAX = 320
RETURN_TO_MAX = 2000
# Links long gone are forgotten when new ones are made, so the table stays small.
KEEP_EXPIRED = timedelta(days=7)
FIELDS = frozenset({"ref", "return_to", "login_hint"})


@dataclass(frozen=True)
class ConnectRequest:
    """A checked request for a connect session."""

    ref: str
    return_to: str
    login_hint: str | None


@dataclass(frozen=True)
class OpenedLink:
    """A link just claimed: what its consent needs, and where its user goes back to."""

    token_hash: str
    ref: str
    return_to: str
    login_hint: str | None


def parse_request(body: Any, settings: Settings) -> ConnectRequest:
    """The JSON body of `POST /api/connect-sessions`, checked; InvalidConnectSession names the bad field."""
    if not isinstance(body, dict):
        raise InvalidConnectSession("body", "the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidConnectSession(unknown[0], f"{unknown[0]}: unknown field; use ref, return_to, login_hint")
    ref = body.get("ref")
    if not isinstance(ref, str) or not 1 <= len(ref) <= REF_MAX or not ref.isprintable():
        raise InvalidConnectSession("ref", f"ref: your id for the user, 1-{REF_MAX} printable characters")
    return_to = body.get("return_to")
    if not isinstance(return_to, str) or not return_to:
        raise InvalidConnectSession("return_to", "return_to: the URL of your app the user comes back to")
    check_return_to(return_to, settings)
    hint = body.get("login_hint")
    if hint is not None and (
        not isinstance(hint, str)
        or not 1 <= len(hint) <= LOGIN_HINT_MAX
        or not hint.isprintable()
        or hint.strip() != hint
    ):
        raise InvalidConnectSession("login_hint", f"login_hint: an email address, at most {LOGIN_HINT_MAX} characters")
    return ConnectRequest(ref=ref, return_to=return_to, login_hint=hint)


def check_return_to(url: str, settings: Settings) -> None:
    """Refuse any `return_to` outside `CALSYNC_RETURN_URLS`: an open redirect must not be possible."""
    if not settings.return_urls:
        raise InvalidConnectSession("return_to", "return_to: not accepted, because CALSYNC_RETURN_URLS is not set")
    parts = urlsplit(url)
    plain = len(url) <= RETURN_TO_MAX and url.isprintable() and " " not in url and "\\" not in url
    if not plain or parts.scheme not in {"http", "https"} or not parts.netloc or parts.username is not None:
        raise InvalidConnectSession("return_to", "return_to: an absolute http(s) URL without spaces or credentials")
    for prefix in settings.return_urls:
        if url.startswith(prefix) and urlsplit(prefix).netloc == parts.netloc:
            return
    raise InvalidConnectSession("return_to", "return_to: must start with one of CALSYNC_RETURN_URLS")


def create(session: Session, request: ConnectRequest, public_url: str, now: datetime) -> tuple[str, datetime]:
    """Store a new session; returns its link (`<public>/connect/<token>`) and when it expires."""
    session.execute(delete(ConnectSession).where(ConnectSession.expires_at < now - KEEP_EXPIRED))
    token = secrets.token_urlsafe(32)
    expires_at = now + LINK_TTL
    session.add(
        ConnectSession(
            token_hash=token_hash(token),
            ref=request.ref,
            return_to=request.return_to,
            login_hint=request.login_hint,
            created_at=now,
            expires_at=expires_at,
        )
    )
    session.flush()
    return f"{public_url}/connect/{token}", expires_at


def claim(session: Session, token: str, now: datetime) -> OpenedLink:
    """Mark the link used, if it still can be; ConnectLinkUnusable (changing nothing) otherwise."""
    digest = token_hash(token)
    done = session.execute(
        update(ConnectSession)
        .where(ConnectSession.token_hash == digest, ConnectSession.used_at.is_(None), ConnectSession.expires_at > now)
        .values(used_at=now)
    )
    row = session.get(ConnectSession, digest)
    if row is None:
        raise _unknown_link()
    if rows_affected(done) == 0:
        if row.used_at is not None:
            raise ConnectLinkUnusable(
                "This link was already used. Links to connect a calendar work once.", reason="used"
            )
        raise ConnectLinkUnusable(
            "This link has expired. Links to connect a calendar work for 15 minutes.", reason="expired"
        )
    return OpenedLink(token_hash=digest, ref=row.ref, return_to=row.return_to, login_hint=row.login_hint)


def settle(session: Session, digest: str, outcome: ConnectOutcome, account_id: int | None = None) -> ConnectSession:
    """Record how the claimed link's consent ended (the first outcome stays)."""
    row = session.get(ConnectSession, digest, with_for_update=True)
    if row is None:
        raise _unknown_link()
    if row.outcome is None:
        row.outcome = outcome
        row.account_id = account_id
    return row


def return_url(
    return_to: str, ref: str, outcome: ConnectOutcome, *, account: str | None = None, error: str | None = None
) -> str:
    """`return_to` with `ref`, `status` and `account` or `error` added to whatever query it has."""
    params = {"ref": ref, "status": outcome.value}
    if account is not None:
        params["account"] = account
    if error is not None:
        params["error"] = error
    parts = urlsplit(return_to)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _unknown_link() -> ConnectLinkUnusable:
    return ConnectLinkUnusable("This link is not a link to connect a calendar.", reason="unknown")
