"""The Strava-style hub.challenge handshake against a real endpoint on loopback."""

from __future__ import annotations

import re
import time

import pytest

from calsync.config import Settings
from calsync.errors import UnsafeURLError, VerificationFailed
from calsync.webhooks.verification import verify_endpoint
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import loopback_settings

SETTINGS = loopback_settings(Settings(database_url="sqlite://"))


def test_an_endpoint_echoing_the_challenge_passes(receiver: Receiver) -> None:
    verify_endpoint(receiver.url + "?team=7", SETTINGS, verify_token="my-token")
    (seen,) = receiver.verifications()
    assert seen.path == "/hook"
    assert seen.args["hub.mode"] == "subscribe" and seen.args["hub.verify_token"] == "my-token"
    assert seen.args["team"] == "7" and len(seen.args["hub.challenge"]) >= 20


def test_each_verification_uses_a_fresh_challenge(receiver: Receiver) -> None:
    verify_endpoint(receiver.url, SETTINGS)
    verify_endpoint(receiver.url, SETTINGS)
    first, second = receiver.verifications()
    assert first.args["hub.challenge"] != second.args["hub.challenge"]


def test_a_wrong_echo_fails(receiver: Receiver) -> None:
    receiver.verify_mode = "wrong"
    with pytest.raises(VerificationFailed, match=re.escape("hub.challenge")):
        verify_endpoint(receiver.url, SETTINGS)


def test_a_non_200_answer_fails(receiver: Receiver) -> None:
    receiver.verify_mode = "status:201"
    with pytest.raises(VerificationFailed, match="HTTP 201"):
        verify_endpoint(receiver.url, SETTINGS)


def test_a_slow_endpoint_fails_at_the_timeout(receiver: Receiver) -> None:
    receiver.verify_mode = "sleep:2"
    started = time.monotonic()
    with pytest.raises(VerificationFailed, match=re.escape("timed out after 0.5 s")):
        verify_endpoint(receiver.url, SETTINGS)
    assert time.monotonic() - started < 1.5


def test_a_redirect_is_not_followed_and_fails(receiver: Receiver) -> None:
    receiver.verify_mode = "redirect"
    with pytest.raises(VerificationFailed, match="HTTP 302 redirect"):
        verify_endpoint(receiver.url, SETTINGS)
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_an_unreachable_endpoint_fails(receiver: Receiver) -> None:
    url = receiver.url
    receiver.stop()
    with pytest.raises(VerificationFailed, match="connection failed"):
        verify_endpoint(url, SETTINGS)


def test_the_safety_check_comes_first(receiver: Receiver) -> None:
    strict = Settings(database_url="sqlite://", webhook_allow_http=True)
    with pytest.raises(UnsafeURLError, match="loopback"):
        verify_endpoint(receiver.url, strict)
    assert receiver.requests == []
