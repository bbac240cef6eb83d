"""One HTTP exchange with a subscriber, connected to the address the safety check approved.

urllib3 connects to the checked IP while TLS (SNI and certificate) and the Host header use the
URL's name; redirects are never followed and only the first bytes of an answer are read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3
from urllib3 import HTTPHeaderDict
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
    started = time.monotonic()
    for index, address in enumerate(target.addresses):
        try:
            return _exchange_with(address, target, method, headers, body, timeout, max_response, started)
        except NewConnectionError as err:
            if index == len(target.addresses) - 1:
                raise TransportError(_describe(err, timeout), _ms(started)) from err
        except HTTPError as err:
            raise TransportError(_describe(err, timeout), _ms(started)) from err
    raise TransportError("no address to connect to", _ms(started))


def _exchange_with(
    address: str,
    target: Target,
    method: str,
    headers: Mapping[str, str] | None,
    body: bytes | None,
    timeout: float,
    max_response: int,
    started: float,
) -> Response:
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            maxsize=1,
            retries=False,
            block=False,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, maxsize=1, retries=False, block=False)
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
    return Response(status=resp.status, headers=HTTPHeaderDict(resp.headers), body=data, latency_ms=_ms(started))


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
