from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from calsync.webhooks.signing import new_secret, signature_headers

BODY = '{"type":"event.updated","data":{"seq":1}}'


def test_secrets_are_whsec_prefixed_base64_of_at_least_24_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert new_secret() != secret


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    headers = signature_headers("msg_1", datetime.now(UTC), BODY, [secret])
    assert Webhook(secret).verify(BODY, headers) == {"type": "event.updated", "data": {"seq": 1}}
    assert headers["webhook-id"] == "msg_1"


def test_signature_fails_for_another_secret_or_a_changed_body() -> None:
    secret = new_secret()
    headers = signature_headers("msg_1", datetime.now(UTC), BODY, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("1", "2"), headers)


def test_two_secrets_give_two_signatures_each_verifiable() -> None:
    old, new = new_secret(), new_secret()
    headers = signature_headers("msg_1", datetime.now(UTC), BODY, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
