"""Proving an endpoint belongs to the subscriber, the way Strava validates push subscriptions.

`GET url?hub.mode=subscribe&hub.challenge=R&hub.verify_token=T` must answer 200 with
`{"hub.challenge": "R"}` quickly and without a redirect; otherwise nobody could stop calsync's
traffic being pointed at a URL the subscriber does not control.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import urlencode, urlsplit, urlunsplit

from calsync.config import Settings
from calsync.errors import VerificationFailed
from calsync.webhooks.safety import resolve_target
from calsync.webhooks.transport import TransportError, exchange

MAX_ANSWER_BYTES = 4096


def verify_endpoint(
    url: str, settings: Settings, *, verify_token: str | None = None, timeout: float | None = None
) -> None:
    """Raise VerificationFailed (with the reason) unless the endpoint echoes a fresh challenge."""
    challenge = secrets.token_urlsafe(24)
    token = verify_token or secrets.token_urlsafe(16)
    # The subscriber's URL was held to the length limit; the challenge's parameters may take it past.
    target = resolve_target(challenge_url(url, challenge, token), settings, max_length=None)
    wait = settings.webhook_verify_timeout.total_seconds() if timeout is None else timeout
    try:
        answer = exchange(
            target, "GET", headers={"Accept": "application/json"}, timeout=wait, max_response=MAX_ANSWER_BYTES
        )
    except TransportError as err:
        raise VerificationFailed(f"endpoint verification failed: {err}") from err
    if 300 <= answer.status < 400:
        where = answer.headers.get("Location") or answer.headers.get("location") or "elsewhere"
        raise VerificationFailed(
            f"endpoint verification failed: HTTP {answer.status} redirect to {where} "
            "(redirects are not followed; give the final URL)"
        )
    if answer.status != 200:
        raise VerificationFailed(f"endpoint verification failed: HTTP {answer.status} (expected 200)")
    try:
        echoed = json.loads(answer.body).get("hub.challenge")
    except (ValueError, AttributeError):
        echoed = None
    if echoed != challenge:
        raise VerificationFailed(
            "endpoint verification failed: the answer must be the JSON "
            '{"hub.challenge": "<the hub.challenge query parameter>"}'
        )


def challenge_url(url: str, challenge: str, verify_token: str) -> str:
    """The URL with the hub.* parameters added to any query it already has."""
    parts = urlsplit(url)
    query = urlencode({"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": verify_token})
    return urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query, fragment=""))
