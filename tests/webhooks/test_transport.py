"""The connection is made to the address the safety check approved, under the URL's host name."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from werkzeug.serving import make_server

from calsync.webhooks.safety import Target
from calsync.webhooks.transport import DEADLINE_FACTOR, TransportError, exchange
from tests.webhooks.receiver import Answer, Receiver


def pinned(receiver: Receiver, *addresses: str) -> Target:
    return Target(
        url=f"http://hooks.example.test:{receiver.port}/in",
        scheme="http",
        host="hooks.example.test",
        port=receiver.port,
        path="/in?x=1",
        addresses=addresses,
    )


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
    with pytest.raises(TransportError, match=re.escape("timed out after 0.2 s")):
        exchange(pinned(receiver, "127.0.0.1"), "POST", body=b"{}", timeout=0.2)


@pytest.fixture
def dripping() -> Iterator[tuple[int, list[str]]]:
    """An endpoint that answers a byte at a time, each well within the read timeout: first its
    status and headers (`?part=head`), or its headers whole and then its body (`?part=body`)."""
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(65536).decode("latin-1")
                served.append(request.split(" ", 2)[1])
                if "part=body" in request:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                    drip = b"x" * 100
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    drip = b"X-Drip: " + b"y" * 100
                try:
                    for byte in drip:
                        conn.sendall(bytes([byte]))
                        time.sleep(0.05)
                except OSError:
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], served
    listener.close()


@pytest.mark.parametrize("part", ["head", "body"])
def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_whole_exchange_s_deadline(
    dripping: tuple[int, list[str]], part: str
) -> None:
    """Each byte came within the read timeout (0.3 s), so the exchange went on for as long as the
    endpoint liked: here 5 s, and a delivery's lease ran out meanwhile."""
    port, served = dripping
    target = Target(
        url=f"http://hooks.example.test:{port}/in",
        scheme="http",
        host="hooks.example.test",
        port=port,
        path=f"/in?part={part}",
        addresses=("127.0.0.1",),
    )
    started = time.monotonic()
    with pytest.raises(TransportError, match=re.escape(f"no whole answer within {DEADLINE_FACTOR * 0.3:g} s")):
        exchange(target, "POST", body=b"{}", timeout=0.3)
    assert time.monotonic() - started < DEADLINE_FACTOR * 0.3 + 1.0
    assert served == [f"/in?part={part}"]


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """An https endpoint whose certificate names hooks.example.test, trusted through SSL_CERT_FILE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ.get("HTTP_HOST", "").encode()]

    server = make_server("127.0.0.1", 0, app, ssl_context=context, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield int(server.server_port)
    server.shutdown()
    server.server_close()


def test_https_to_the_checked_address_verifies_the_certificate_for_the_url_s_name(tls_server: int) -> None:
    def target(host: str) -> Target:
        return Target(
            url=f"https://{host}:{tls_server}/",
            scheme="https",
            host=host,
            port=tls_server,
            path="/",
            addresses=("127.0.0.1",),
        )

    resp = exchange(target("hooks.example.test"), "POST", body=b"{}", timeout=2)
    assert resp.status == 200 and resp.body == f"hooks.example.test:{tls_server}".encode()
    with pytest.raises(TransportError, match=re.escape("TLS error: hostname 'other.example.test' doesn't match")):
        exchange(target("other.example.test"), "POST", body=b"{}", timeout=2)
