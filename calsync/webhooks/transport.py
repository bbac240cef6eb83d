"""One HTTP exchange with a subscriber, connected to the address the safety check approved.

urllib3 connects to the checked IP while TLS (SNI and certificate) and the Host header use the
URL's name; redirects are never followed and only the first bytes of an answer are read. Each read
waits at most `timeout`, and the whole exchange at most `DEADLINE_FACTOR` times it: urllib3's read
timeout is per read, so an endpoint that sent its answer a byte at a time, each just within it,
held the thread (a worker's, or a web request's verifying a subscription) for as long as it liked,
and a delivery outlived its lease, to be sent again by another worker.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3 import HTTPHeaderDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    SSLError,
    TimeoutError,
)

from calsync.errors import WebhookError
from calsync.webhooks.safety import Target

MAX_RESPONSE_BYTES = 64 * 1024
DEADLINE_FACTOR = 2  # the whole exchange, in timeouts: a connection, then an answer, each within one
USER_AGENT = "calsync-webhooks/1"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    latency_ms: float


class TransportError(WebhookError):
    """No HTTP answer: timeout, refused connection, TLS failure … (`latency_ms` says how long it took)."""

    def __init__(self, message: str, latency_ms: float) -> None:
        super().__init__(message)
        self.latency_ms = latency_ms


def exchange(
    target: Target,
    method: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float,
    max_response: int = MAX_RESPONSE_BYTES,
) -> Response:
    """Send one request to the checked addresses (the next one only if connecting failed)."""
    deadline = _Deadline(DEADLINE_FACTOR * timeout)
    started = deadline.started
    try:
        for index, address in enumerate(target.addresses):
            try:
                return _exchange_with(address, target, method, headers, body, timeout, max_response, deadline)
            except NewConnectionError as err:
                if index == len(target.addresses) - 1:
                    raise TransportError(_describe(err, timeout), _ms(started)) from err
            except HTTPError as err:
                if deadline.passed:
                    raise TransportError(
                        f"no whole answer within {DEADLINE_FACTOR * timeout:g} s", _ms(started)
                    ) from err
                raise TransportError(_describe(err, timeout), _ms(started)) from err
    finally:
        deadline.cancel()
    raise TransportError("no address to connect to", _ms(started))


class _Deadline:
    """Shuts a connection's socket down when the exchange's time is up, ending whatever read waits."""

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.at = self.started + seconds
        self.passed = False
        self._timer: threading.Timer | None = None

    def arm(self, sock: socket.socket) -> None:
        self.cancel()
        self._timer = threading.Timer(max(0.0, self.at - time.monotonic()), self._end, (sock,))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end(self, sock: socket.socket) -> None:
        self.passed = True
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)


class _TimedConnection(HTTPConnection):
    """A connection whose socket the exchange's deadline shuts down."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.arm(self.sock)


class _TimedTLSConnection(_TimedConnection, HTTPSConnection):
    """`_TimedConnection`'s deadline on HTTPSConnection's connect (TLS wrapped, then armed)."""


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TimedConnection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TimedTLSConnection


def _exchange_with(
    address: str,
    target: Target,
    method: str,
    headers: Mapping[str, str] | None,
    body: bytes | None,
    timeout: float,
    max_response: int,
    deadline: _Deadline,
) -> Response:
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = _TLSPool(
            address,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            maxsize=1,
            retries=False,
            block=False,
            deadline=deadline,
        )
    else:
        pool = _Pool(address, target.port, maxsize=1, retries=False, block=False, deadline=deadline)
    all_headers = {"User-Agent": USER_AGENT, **(headers or {}), "Host": target.host_header}
    try:
        resp = pool.urlopen(
            method,
            target.path,
            body=body,
            headers=all_headers,
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
        )
        try:
            data = resp.read(max_response)
        finally:
            resp.release_conn()
    finally:
        pool.close()
    if deadline.passed:  # the answer's end was the deadline's, not the endpoint's
        raise ProtocolError("the answer was cut at the deadline")
    return Response(
        status=resp.status, headers=HTTPHeaderDict(resp.headers), body=data, latency_ms=_ms(deadline.started)
    )


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _describe(err: HTTPError, timeout: float) -> str:
    reason = getattr(err, "reason", None)
    if isinstance(err, NewConnectionError):  # before TimeoutError: urllib3 derives one from the other
        return "connection failed: " + str(err).split(": ", 1)[-1]
    if isinstance(err, TimeoutError) or isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(err, SSLError) or isinstance(reason, SSLError):
        return f"TLS error: {reason or err}"
    if isinstance(err, ProtocolError):
        return f"connection broken: {err}"
    return f"{type(err).__name__}: {err}"
