"""The connection is made to the address the safety check approved, under the URL's host name."""

from __future__ import annotations

import pytest

from calsync.webhooks.safety import Target
from calsync.webhooks.transport import TransportError, exchange
from tests.webhooks.receiver import Answer, Receiver


def pinned(receiver: Receiver, *addresses: str) -> Target:
    return Target(url=f"http://hooks.example.test:{receiver.port}/in", scheme="http", host="hooks.example.test",
                  port=receiver.port, path="/in?x=1", addresses=addresses)


def test_request_goes_to_the_checked_address_with_the_url_s_host_header(receiver: Receiver) -> None:
    receiver.script(Answer(202, b"accepted", {"Retry-After": "5"}))
    resp = exchange(pinned(receiver, "127.0.0.1"), "POST", headers={"X-A": "1"}, body=b"{}", timeout=2)
    (seen,) = receiver.posts()
    assert seen.headers["Host"] == f"hooks.example.test:{receiver.port}"
    assert seen.path == "/in" and seen.args == {"x": "1"} and seen.body == b"{}"
    assert resp.status == 202 and resp.body == b"accepted" and resp.headers["retry-after"] == "5"
    assert resp.latency_ms >= 0


def test_the_next_checked_address_is_tried_when_connecting_fails(receiver: Receiver) -> None:
    exchange(pinned(receiver, "127.0.0.2", "127.0.0.1"), "POST", body=b"{}", timeout=2)
    assert len(receiver.posts()) == 1


def test_only_the_first_bytes_of_an_answer_are_read(receiver: Receiver) -> None:
    receiver.script(Answer(200, b"x" * 100_000))
    resp = exchange(pinned(receiver, "127.0.0.1"), "POST", body=b"{}", timeout=2, max_response=1000)
    assert len(resp.body) == 1000


def test_no_answer_in_time_is_a_transport_error(receiver: Receiver) -> None:
    receiver.script(Answer(delay=1.0))
    with pytest.raises(TransportError, match="timed out after 0.2 s"):
        exchange(pinned(receiver, "127.0.0.1"), "POST", body=b"{}", timeout=0.2)
