"""Connect sessions: a single-use consent link an app makes for one of its users, and the way back.

The app names its user (`ref`) and where the user returns (`return_to`, which must lie under an
entry of `CALSYNC_RETURN_URLS`, compared after normalising its path: calsync never redirects
anywhere else). The link's token is random and stored only as its SHA-256, so the table cannot be
used to open a link. Opening the link claims it, in one statement that only an unused, unexpired
link passes; the consent that follows ends with a 303 to `return_to` carrying `ref`, `status` and
`account` and `connection` (the code the app confirms it with: `calsync.accounts.connections`), or
`error`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, select, update
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
    return_to = check_return_to(return_to, settings)
    hint = body.get("login_hint")
    if hint is not None and (
        not isinstance(hint, str)
        or not 1 <= len(hint) <= LOGIN_HINT_MAX
        or not hint.isprintable()
        or hint.strip() != hint
    ):
        raise InvalidConnectSession("login_hint", f"login_hint: an email address, at most {LOGIN_HINT_MAX} characters")
    return ConnectRequest(ref=ref, return_to=return_to, login_hint=hint)


def check_return_to(url: str, settings: Settings) -> str:
    """`url` with its path normalised, if it lies under an entry of `CALSYNC_RETURN_URLS`; otherwise
    InvalidConnectSession. An open redirect must not be possible, so the path is compared the way a
    browser or a server resolves it (`..`, `%2e%2e`), by segments, never as a string prefix."""
    if not settings.return_urls:
        raise InvalidConnectSession("return_to", "return_to: not accepted, because CALSYNC_RETURN_URLS is not set")
    place = _place(url)
    if place is None:
        raise InvalidConnectSession(
            "return_to",
            "return_to: an absolute http(s) URL without spaces, backslashes or credentials, whose path has"
            " no empty segment and no encoded `/`, `\\` or `%`",
        )
    for prefix in settings.return_urls:
        allowed = _place(prefix)
        if allowed is not None and _under(place, allowed):
            parts = urlsplit(url)
            return urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(place.path), parts.query, parts.fragment))
    raise InvalidConnectSession("return_to", "return_to: must lie under one of CALSYNC_RETURN_URLS")


def create(session: Session, request: ConnectRequest, public_url: str, now: datetime) -> tuple[str, datetime]:
    """Store a new session; returns its link (`<public>/connect/<token>`) and when it expires."""
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


def purge_expired(session: Session, now: datetime) -> None:
    """Forget sessions expired over `KEEP_EXPIRED` ago, from the scheduler's pass: done when a new
    session was made, they stayed for good once an app stopped making them. A row still holding a
    connection's tokens waits for that pass to revoke them (`connections.drop_unconfirmed`)."""
    session.execute(
        delete(ConnectSession).where(
            ConnectSession.expires_at < now - KEEP_EXPIRED, ConnectSession.credentials.is_(None)
        )
    )


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


def consent_ended(session: Session, digest: str) -> bool:
    """Whether the claimed link's consent has ended already (connected, denied, failed): its state
    lives in the browser's cookie, and an old copy of the cookie must not start it again."""
    return session.scalar(select(ConnectSession.outcome).where(ConnectSession.token_hash == digest)) is not None


def settle(session: Session, digest: str, outcome: ConnectOutcome) -> ConnectSession:
    """Record how the claimed link's consent ended (the first outcome stays)."""
    row = session.get(ConnectSession, digest, with_for_update=True)
    if row is None:
        raise _unknown_link()
    if row.outcome is None:
        row.outcome = outcome
    return row


def return_url(
    return_to: str,
    ref: str,
    outcome: ConnectOutcome,
    *,
    account: str | None = None,
    connection: str | None = None,
    error: str | None = None,
) -> str:
    """`return_to` with `ref`, `status` and `account` and `connection`, or `error`, added to its query."""
    params = {"ref": ref, "status": outcome.value}
    if account is not None:
        params["account"] = account
    if connection is not None:
        params["connection"] = connection
    if error is not None:
        params["error"] = error
    parts = urlsplit(return_to)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Place:
    """Where a URL leads: scheme, lower-case host, port, and its path's segments with dot segments
    resolved (`path` as written, `decoded` for comparing; a trailing `/` is a last empty segment)."""

    scheme: str
    host: str
    port: int
    path: tuple[str, ...]
    decoded: tuple[str, ...]


_DEFAULT_PORTS = {"http": 80, "https": 443}
# Encoded `/` and `\` split segments on some servers and not on others; `%25` decodes twice on some.
_AMBIGUOUS = re.compile(r"%(2f|5c|25)", re.IGNORECASE)


def _place(url: str) -> _Place | None:
    """The place `url` leads to, or None when it is not plainly one absolute http(s) URL."""
    if len(url) > RETURN_TO_MAX or not url.isprintable() or " " in url or "\\" in url:
        return None
    try:
        parts = urlsplit(url)  # ValueError for a bracket left open, or a host that NFKC turns into `/`, `@` …
        hostname = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not hostname or "@" in parts.netloc:
        return None
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:  # a port that is not a number, or out of range
        return None
    path = parts.path or "/"
    if not path.startswith("/") or "//" in path or _AMBIGUOUS.search(path):
        return None
    resolved: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        # `%2e%2e` is `..` to browsers; `..;x` is `..` to servers that drop path parameters.
        dots = unquote(segment).split(";", 1)[0]
        if dots in {".", ".."}:
            if dots == ".." and resolved:
                resolved.pop()
            if i == len(segments) - 1:
                resolved.append("")
            continue
        resolved.append(segment)
    return _Place(
        scheme=parts.scheme,
        host=hostname.lower(),
        port=port,
        path=tuple(resolved),
        decoded=tuple(unquote(segment) for segment in resolved),
    )


def _under(place: _Place, allowed: _Place) -> bool:
    """Same scheme, host and port, and the path is the allowed one or below it, segment by segment.

    An entry ending in `/` admits what lies below that folder; one without admits that path itself
    and what lies below it (`/after` admits `/after` and `/after/x`, never `/afterwards`)."""
    if (place.scheme, place.host, place.port) != (allowed.scheme, allowed.host, allowed.port):
        return False
    base = allowed.decoded[:-1] if allowed.decoded and allowed.decoded[-1] == "" else allowed.decoded
    if place.decoded[: len(base)] != base:
        return False
    return len(place.decoded) > len(base) or base == allowed.decoded


def _unknown_link() -> ConnectLinkUnusable:
    return ConnectLinkUnusable("This link is not a link to connect a calendar.", reason="unknown")
