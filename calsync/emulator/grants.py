"""OAuth 2.0 state: registered clients, grants, authorization codes, access and refresh tokens.

A grant is one user's consent to one client.  Revoking it bumps its generation, which kills every
token minted under an older generation (access and refresh alike), as Google does.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CLIENT_ID = "1061200318841-calsyncemulator0000000000.apps.googleusercontent.com"
DEFAULT_CLIENT_SECRET = "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et"
CODE_TTL = dt.timedelta(seconds=60)
READ_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.readonly",
        "https://www.googleapis.com/auth/calendar.events",
        "https://www.googleapis.com/auth/calendar.events.readonly",
        "https://www.googleapis.com/auth/calendar.events.owned",
        "https://www.googleapis.com/auth/calendar.events.owned.readonly",
    }
)
LIST_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.readonly",
        "https://www.googleapis.com/auth/calendar.calendarlist",
        "https://www.googleapis.com/auth/calendar.calendarlist.readonly",
    }
)
WRITE_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.events",
        "https://www.googleapis.com/auth/calendar.events.owned",
    }
)


@dataclass
class Client:
    """An OAuth web client with its exact registered redirect URIs."""

    client_id: str
    client_secret: str
    redirect_uris: set[str] = field(default_factory=set)


@dataclass
class Grant:
    """One user's consent to one client; ``generation`` moves on revocation."""

    user: str
    client_id: str
    scopes: set[str] = field(default_factory=set)
    generation: int = 0
    has_refresh: bool = False


@dataclass
class Token:
    """An access or refresh token, valid while its grant keeps the same generation."""

    value: str
    grant: Grant
    generation: int
    scopes: frozenset[str]
    expires: dt.datetime | None


@dataclass
class AuthCode:
    """A single-use authorization code and what it was issued for."""

    grant: Grant
    scopes: frozenset[str]
    redirect_uri: str
    offline: bool
    give_refresh: bool
    challenge: str | None
    method: str | None
    expires: dt.datetime


class Grants:
    """Token issuing and checking; every method takes the lock itself."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.clients: dict[str, Client] = {DEFAULT_CLIENT_ID: Client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)}
        self.clear()

    def clear(self) -> None:
        """Drop grants, codes and tokens (registered clients stay)."""
        with self.lock:
            self.grants: dict[tuple[str, str], Grant] = {}
            self.codes: dict[str, AuthCode] = {}
            self.access: dict[str, Token] = {}
            self.refresh: dict[str, Token] = {}

    def register(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> Client:
        """Add (or extend) a client and its redirect URIs."""
        with self.lock:
            client = self.clients.setdefault(client_id, Client(client_id, client_secret))
            client.client_secret = client_secret
            client.redirect_uris.update(redirect_uris)
            return client

    def grant(self, user: str, client_id: str, scopes: set[str], include_granted: bool) -> Grant:
        """The user's grant to the client, widened by the newly consented scopes."""
        with self.lock:
            grant = self.grants.get((user, client_id))
            if grant is None:
                grant = self.grants[(user, client_id)] = Grant(user, client_id)
            grant.scopes |= scopes
            return grant

    def new_code(
        self,
        grant: Grant,
        scopes: frozenset[str],
        redirect_uri: str,
        offline: bool,
        force_consent: bool,
        challenge: str | None,
        method: str | None,
    ) -> str:
        """Issue a 60-second code; a refresh token comes with it only on first offline consent."""
        with self.lock:
            code = "4/0" + secrets.token_urlsafe(40)
            give_refresh = offline and (force_consent or not grant.has_refresh)
            self.codes[code] = AuthCode(
                grant, scopes, redirect_uri, offline, give_refresh, challenge, method, self.clock() + CODE_TTL
            )
            return code

    def redeem(self, code: str) -> AuthCode | None:
        """Consume a code (single use); ``None`` if unknown, used or expired."""
        with self.lock:
            found = self.codes.pop(code, None)
            if found is None or found.expires <= self.clock():
                return None
            return found

    def issue(self, grant: Grant, scopes: frozenset[str], ttl: int, with_refresh: bool) -> dict[str, Any]:
        """Mint tokens and return Google's token response body."""
        with self.lock:
            access = "ya29.a0" + secrets.token_urlsafe(48)
            self.access[access] = Token(
                access, grant, grant.generation, scopes, self.clock() + dt.timedelta(seconds=ttl)
            )
            body: dict[str, Any] = {"access_token": access, "expires_in": ttl}
            if with_refresh:
                refresh = "1//0" + secrets.token_urlsafe(64)
                self.refresh[refresh] = Token(refresh, grant, grant.generation, scopes, None)
                grant.has_refresh = True
                body["refresh_token"] = refresh
            body["scope"] = " ".join(sorted(scopes))
            body["token_type"] = "Bearer"
            return body

    def check_access(self, value: str) -> Token | None:
        """The live access token, or ``None`` if unknown, expired or revoked."""
        with self.lock:
            token = self.access.get(value)
            if token is None or token.generation != token.grant.generation:
                return None
            if token.expires is not None and token.expires <= self.clock():
                return None
            return token

    def check_refresh(self, value: str) -> Token | None:
        """The live refresh token, or ``None`` if unknown or revoked."""
        with self.lock:
            token = self.refresh.get(value)
            if token is None or token.generation != token.grant.generation:
                return None
            return token

    def revoke_token(self, value: str) -> bool:
        """Revoke the grant behind an access or refresh token; False if the token is unknown."""
        with self.lock:
            token = self.access.get(value) or self.refresh.get(value)
            if token is None or token.generation != token.grant.generation:
                return False
            self._revoke(token.grant)
            return True

    def revoke_user(self, user: str) -> None:
        """Revoke every grant of a user (all their tokens die)."""
        with self.lock:
            for grant in self.grants.values():
                if grant.user == user:
                    self._revoke(grant)

    def expire_access_tokens(self) -> None:
        """Make every current access token expired now; refresh tokens keep working."""
        with self.lock:
            now = self.clock()
            for token in self.access.values():
                if token.expires is None or token.expires > now:
                    token.expires = now

    @staticmethod
    def _revoke(grant: Grant) -> None:
        grant.generation += 1
        grant.scopes.clear()
        grant.has_refresh = False


def pkce_ok(verifier: str, challenge: str, method: str | None) -> bool:
    """Check a PKCE verifier against its S256 (or plain) challenge."""
    if (method or "plain") == "S256":
        digest = hashlib.sha256(verifier.encode()).digest()
        return secrets.compare_digest(base64.urlsafe_b64encode(digest).decode().rstrip("="), challenge)
    return secrets.compare_digest(verifier, challenge)
