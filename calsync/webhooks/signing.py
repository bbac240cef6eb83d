"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature`.

The package `standardwebhooks` computes each signature; during a secret rotation the message carries
one signature per live secret, so consumers holding either secret accept it.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh `whsec_` secret: base64 of 32 random bytes (the spec asks for at least 24)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_headers(msg_id: str, timestamp: datetime, body: str, keys: Sequence[str]) -> dict[str, str]:
    """The three headers for `body`, signed with every secret in `keys` (newest first)."""
    if not keys:
        raise ValueError("no secret to sign with")
    signatures = " ".join(Webhook(key).sign(msg_id, timestamp, body) for key in keys)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signatures,
    }
