"""Slow clients against a real `calsync serve`: half-sent requests hold no request thread."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import requests
from gunicorn.config import Config

from calsync.config import Settings
from calsync.web.reading_worker import ReadingThreadWorker
from tests.web.process_support import calsync_process, calsync_web, server_process, web_env

SLOW_SOCKETS = 16  # twice the request threads of `calsync serve`
BIG_BODY = 1_000_000  # under the app's limit of 1 MiB, over what a thread may be left to read


def _half_sent(base: str, partial: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(partial)
    return sock


def test_sixteen_slow_sockets_leave_notifications_and_healthz_answering(settings: Settings, tmp_path: Path) -> None:
    with calsync_process(settings, tmp_path / "serve.log", ["serve"]) as base:
        partials = [
            b"POST /notifications HTTP/1.1\r\nHost: calsync\r\nX-Goog-Channel-ID: a",  # headers never end
            b"POST /notifications HTTP/1.1\r\nHost: calsync\r\nContent-Length: 100\r\n\r\n{",  # nor does the body
        ]
        slow = [_half_sent(base, partials[i % 2]) for i in range(SLOW_SOCKETS)]
        try:
            time.sleep(0.5)  # gthread's threads would be reading them by now
            for _ in range(3):
                _answers_within_two_seconds(base)
        finally:
            for sock in slow:
                sock.close()


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_sockets_trickling_big_bodies_leave_notifications_and_healthz_answering(
    settings: Settings, tmp_path: Path
) -> None:
    """A body the loop held only in part (256 KB of it) was handed to a thread that then read the rest
    a byte at a time: eight such clients held all eight threads. The loop now holds the whole body."""
    with calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "1", "--threads", "8"]) as base:
        head = f"POST /disconnect HTTP/1.1\r\nHost: calsync\r\nContent-Length: {BIG_BODY}\r\n\r\n".encode()
        slow = [_half_sent(base, head + b"x" * 300_000) for _ in range(SLOW_SOCKETS)]
        try:
            for _ in range(3):
                time.sleep(1)
                for sock in slow:
                    sock.send(b"x")
                _answers_within_two_seconds(base)
        finally:
            for sock in slow:
                sock.close()


def test_bodies_the_app_would_refuse_are_refused_at_once_and_others_reach_it(
    settings: Settings, tmp_path: Path
) -> None:
    """Over the app's limit: 413 from the event loop, before the body is sent (what was, is read
    away, so the answer is not lost to a reset). Chunked: 411, as no client of calsync sends one.
    Under the limit, a big JSON body reaches the app whole."""
    with calsync_web(settings, tmp_path / "web.log") as base:
        too_big = b"POST /api/webhooks HTTP/1.1\r\nHost: calsync\r\nContent-Length: 1048577\r\n\r\n"
        chunked = b"POST /api/webhooks HTTP/1.1\r\nHost: calsync\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"
        for request, status in ((too_big + b"x" * 100_000, b"413"), (chunked, b"411")):
            started = time.monotonic()
            sock = _half_sent(base, request)
            try:
                answer = _answer(sock)
            finally:
                sock.close()
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
            assert time.monotonic() - started < 2

        url = "ftp://calsync.invalid/" + "a" * 500_000
        resp = requests.post(
            base + "/api/webhooks",
            json={"url": url, "events": ["event.created"]},
            headers={"Authorization": f"Bearer {settings.api_token}"},
            timeout=10,
        )
        assert resp.status_code == 400 and resp.json()["field"] == "url"


def test_a_request_sent_in_pieces_is_answered_whole(settings: Settings, tmp_path: Path) -> None:
    """The event loop gathers a request across reads and hands the thread all of it, body included."""
    with calsync_process(settings, tmp_path / "serve.log", ["serve"]) as base:
        body = b'{"url": "ftp://calsync.invalid/hook", "events": ["event.created"]}'
        request = (
            b"POST /api/webhooks HTTP/1.1\r\nHost: calsync\r\nAuthorization: Bearer "
            + str(settings.api_token).encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        sock = _half_sent(base, request[:40])
        try:
            for start in range(40, len(request), 25):
                time.sleep(0.05)
                sock.sendall(request[start : start + 25])
            answer = _answer(sock)
        finally:
            sock.close()
        # The URL (the body's first field) was judged: the JSON body reached the app whole.
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["field"] == "url"


def test_a_process_is_judged_by_its_heartbeat_from_the_moment_it_is_made() -> None:
    """gunicorn's master replaces a process once `monotonic() - tmp.last_update()` passes its limit. Its
    heartbeat writes monotonic seconds, but the file is born with the wall clock's, about 1.8e9 ahead:
    a process stopped before its first beat (as under the stuck-process test, now and then) was never
    replaced. The age must be a real age from the start."""
    worker = ReadingThreadWorker(1, os.getpid(), [], None, 10, Config(), None)
    try:
        assert 0 <= time.monotonic() - worker.tmp.last_update() < 5
    finally:
        worker.tmp.close()


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        (b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", True),
        (b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", False),  # the body's rest is awaited
        (b"POST /x HTTP/1.1\r\ncontent-length:  5 \r\n\r\nabcde", True),
        (b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", True),  # the parser's 400
        (b"POST /x HTTP/1.1\r\nContent-Length: 0001048577\r\n\r\n", "413 Content Too Large"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "411 Length Required"),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000, "431 Request Header Fields Too Large"),
        (b"GET / HTTP/1.1\r\nHost: x", False),
    ],
)
def test_the_event_loop_hands_over_only_whole_requests(raw: bytes, answer: bool | str) -> None:
    from calsync.web import MAX_BODY_BYTES
    from calsync.web.reading_worker import _complete, _Refused

    try:
        got: bool | str = _complete(bytearray(raw), MAX_BODY_BYTES)
    except _Refused as refusal:
        got = refusal.status
    assert got == answer


def _answers_within_two_seconds(base: str) -> None:
    """`/healthz` and `/notifications` (an unknown channel's 404: a thread took it) both answer at once."""
    started = time.monotonic()
    health = requests.get(base + "/healthz", timeout=2)
    notified = requests.post(
        base + "/notifications",
        headers={
            "X-Goog-Channel-ID": "00000000-0000-4000-8000-000000000000",
            "X-Goog-Resource-State": "exists",
            "X-Goog-Message-Number": "2",
        },
        timeout=2,
    )
    assert health.status_code in (200, 503) and notified.status_code == 404
    assert time.monotonic() - started < 2


def test_the_worker_serves_an_app_that_sets_no_body_limit_of_its_own(settings: Settings, tmp_path: Path) -> None:
    """The worker's body limit is calsync's constant, not read from the app it loads: read from the
    app, it failed to boot under a plain Flask app (the receiver benchmark's bare endpoint)."""
    bare = Path(__file__).resolve().parents[1] / "bench" / "_bare_app.py"
    argv = [sys.executable, str(bare), "--workers", "1"]
    with server_process(argv, web_env(settings), tmp_path / "bare.log", "/healthz", "the bare app") as base:
        # past calsync's limit: refused by the worker itself
        assert requests.post(base + "/notifications", data=b"x" * 2_000_000, timeout=5).status_code == 413
