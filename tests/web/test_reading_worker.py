"""The reading worker against a real server: half-sent requests hold no request thread, and the event loop
answers plain notifications itself, as a thread would."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from gunicorn.config import Config
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import select

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.models import Account, Channel, Notification
from calsync.store.states import NotificationOutcome
from calsync.web.reading_worker import ReadingThreadWorker
from tests.push_support import push_headers
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


def _webhook_request(settings: Settings, extra: bytes = b"") -> tuple[bytes, bytes]:
    """The head and body of a subscription request the app refuses for its URL (a 400 naming `url`)."""
    body = b'{"url": "ftp://calsync.invalid/hook", "events": ["event.created"]}'
    head = (
        b"POST /api/webhooks HTTP/1.1\r\nHost: calsync\r\nAuthorization: Bearer "
        + str(settings.api_token).encode()
        + b"\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    return head, body


def test_a_request_sent_in_pieces_is_answered_whole(settings: Settings, tmp_path: Path) -> None:
    """The event loop gathers a request across reads and hands the thread all of it, body included."""
    with calsync_process(settings, tmp_path / "serve.log", ["serve"]) as base:
        request = b"".join(_webhook_request(settings))
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
        (b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 60),
        (b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", None),  # the body's rest is awaited
        (b"POST /x HTTP/1.1\r\ncontent-length:  5 \r\n\r\nabcdeGET", 46),  # a next request follows
        (b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", 28),
        (b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", -1),  # the parser's 400
        (b"POST /x HTTP/1.1\r\nContent-Length: 0001048577\r\n\r\n", "413 Content Too Large"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "411 Length Required"),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000, "431 Request Header Fields Too Large"),
        (b"GET / HTTP/1.1\r\nHost: x", None),
    ],
)
def test_the_event_loop_hands_over_only_whole_requests(raw: bytes, answer: int | str | None) -> None:
    from calsync.web import MAX_BODY_BYTES
    from calsync.web.reading_worker import _complete, _Refused

    try:
        got: int | str | None = _complete(bytearray(raw), MAX_BODY_BYTES)
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


# Notifications the event loop answers itself ------------------------------------------------------


def _notification(headers: dict[str, str], line: bytes = b"POST /notifications HTTP/1.1") -> bytes:
    fields = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
    return line + b"\r\nHost: calsync\r\n" + fields + b"\r\n"


def _read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes, bytes]]:
    """`count` answers from a kept-alive connection: status code, head and body of each."""
    buffered, answers = b"", list[tuple[int, bytes, bytes]]()
    while len(answers) < count:
        end = buffered.find(b"\r\n\r\n")
        if end >= 0:
            head = buffered[:end]
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            if len(buffered) >= end + 4 + length:
                answers.append((int(head.split()[1]), head, buffered[end + 4 : end + 4 + length]))
                buffered = buffered[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {len(answers)} answer(s)"
        buffered += chunk
    return answers


def test_pipelined_notifications_are_answered_in_order_on_one_kept_alive_connection(
    settings: Settings, runtime: Runtime, watched: dict[str, Any], tmp_path: Path
) -> None:
    """The loop answers a notification, then reads the next request the client already sent; a forged
    one between two real ones is refused alone, and an ordinary request after them goes to a thread."""
    channel = watched["channel"]
    forged = push_headers(channel, number=4, **{"X-Goog-Channel-Token": "not-the-token"})
    with calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "1", "--threads", "2"]) as base:
        sock = _half_sent(base, b"")
        try:
            sock.sendall(
                _notification(push_headers(channel, number=3))
                + _notification(forged)
                + _notification(push_headers(channel, number=5))
                + b"GET /healthz HTTP/1.1\r\nHost: calsync\r\n\r\n"
            )
            answers = _read_answers(sock, 4)
            sock.sendall(_notification(push_headers(channel, number=6)))  # the connection is still open
            answers += _read_answers(sock, 1)
        finally:
            sock.close()
    assert [code for code, _, _ in answers] == [200, 404, 200, answers[3][0], 200]
    assert answers[3][0] in (200, 503) and b"application/json" in answers[3][1]  # /healthz, from Flask
    assert all(b"\r\nConnection: keep-alive" in head for _, head, _ in answers[:3])
    with runtime.sessions() as session:
        assert session.get_one(Channel, str(channel["id"])).last_message_number == 6
        logged = session.scalars(select(Notification.outcome).order_by(Notification.id)).all()
    assert logged[-4:-2] == [NotificationOutcome.QUEUED, NotificationOutcome.BAD_TOKEN]
    assert set(logged[-2:]) <= {NotificationOutcome.QUEUED, NotificationOutcome.DUPLICATE}


def test_pipelined_notifications_past_one_read_are_each_answered_and_the_process_lives(
    settings: Settings, watched: dict[str, Any], tmp_path: Path
) -> None:
    """More than one read (64 KB) of pipelined requests: a connection the loop handed to the intake
    while still readable got its stale read event in the same pass, read on, and the loop raised
    (KeyError): the process died with every connection it served."""
    forged = push_headers(watched["channel"], number=4, **{"X-Goog-Channel-Token": "forged"})
    too_big = _notification({**forged, "Content-Length": "65537"}) + b"y" * 65537  # refused by the receiver
    pipelined = (_notification(forged) + too_big) * 2
    with calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "1", "--threads", "2"]) as base:
        sock = _half_sent(base, b"")
        sender = threading.Thread(target=sock.sendall, args=(pipelined,))
        sender.start()
        try:
            answers = _read_answers(sock, 4)
        finally:
            sender.join(10)
            sock.close()
        after = requests.post(base + "/notifications", headers=forged, timeout=5)
        log = (tmp_path / "web.log").read_text()
    assert [code for code, _, _ in answers] == [404, 413, 404, 413]
    assert after.status_code == 404 and "Traceback" not in log


@pytest.mark.parametrize(
    ("line", "extra", "status"),
    [
        (b"POST /notifications HTTP/1.0", {}, 200),  # the loop's, and closed
        (b"POST /notifications?via=proxy HTTP/1.1", {}, 200),  # a thread's
        (b"POST /notifications HTTP/1.1", {"Connection": "close"}, 200),  # the loop's, and closed
        (b"POST /notifications HTTP/1.1", {"Connection": "Keep-Alive"}, 200),  # the loop's
        (b"POST /notifications HTTP/1.1", {"X_Goog_Channel_Token": "x"}, 200),  # dropped, by a thread
        (b"POST /notifications HTTP/1.1", {"User-Agent": "APIs-Google\x00"}, 400),  # a thread's 400
        (b"POST /notifications HTTP/1.1", {"User-Agent": "APIs-Google\xe9"}, 200),  # latin-1, the loop's
        (b"POST /notifications HTTP/1.1", {"X-Goog-Message-Number": "7, 8"}, 400),  # the loop's 400
    ],
)
def test_notifications_in_other_shapes_get_the_answer_a_thread_gives(
    settings: Settings, watched: dict[str, Any], tmp_path: Path, line: bytes, extra: dict[str, str], status: int
) -> None:
    headers = {**push_headers(watched["channel"], number=3), **extra}
    with calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "1", "--threads", "2"]) as base:
        sock = _half_sent(base, _notification(headers, line))
        try:
            [(code, _, _)] = _read_answers(sock, 1)
        finally:
            sock.close()
    assert code == status


@pytest.mark.parametrize(
    ("line", "extra"),
    [
        (b"POST /notifications HTTP/1.0", {}),  # as a proxy may forward it
        (b"POST /notifications HTTP/1.1", {"Connection": "close"}),
    ],
)
def test_a_notification_that_asks_for_the_connection_to_close_is_answered_then_closed(
    settings: Settings, runtime: Runtime, watched: dict[str, Any], tmp_path: Path, line: bytes, extra: dict[str, str]
) -> None:
    with calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "1", "--threads", "2"]) as base:
        sock = _half_sent(base, _notification({**push_headers(watched["channel"], number=3), **extra}, line))
        try:
            answer = _answer(sock)  # to the end of the stream: the server closed it
        finally:
            sock.close()
    assert answer.startswith(line.split()[-1] + b" 200 ")  # in the request's version, as gunicorn answers
    assert b"\r\nConnection: close\r\n" in answer
    with runtime.sessions() as session:
        assert session.get_one(Channel, str(watched["channel"]["id"])).last_message_number == 3


def test_a_notification_is_answered_while_every_request_thread_waits_on_the_database(
    settings: Settings, runtime: Runtime, watched: dict[str, Any], tmp_path: Path
) -> None:
    """The one request thread waits for an account's row lock (a disconnect); a notification needs no
    thread, and is recorded and answered meanwhile."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("a row lock that the intake does not take is PostgreSQL's")
    channel = watched["channel"]
    with (
        calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "1", "--threads", "1"]) as base,
        runtime.engine.connect() as locker,
        ThreadPoolExecutor(1) as pool,
    ):
        locker.execute(select(Account.id).where(Account.id == watched["account_id"]).with_for_update())
        disconnecting = pool.submit(
            requests.post,
            base + "/api/accounts/ann@example.com/disconnect",
            headers={"Authorization": f"Bearer {settings.api_token}"},
            timeout=30,
        )
        time.sleep(0.5)  # the thread is waiting for the lock by now
        started = time.monotonic()
        answer = requests.post(base + "/notifications", headers=push_headers(channel, number=3), timeout=5)
        took = time.monotonic() - started
        assert not disconnecting.done()
        locker.rollback()
        assert disconnecting.result().status_code == 200
    assert answer.status_code == 200 and took < 2
    with runtime.sessions() as session:
        assert session.get_one(Channel, str(channel["id"])).last_message_number == 3


def test_a_notification_the_intake_cannot_record_in_time_is_answered_503(
    settings: Settings, runtime: Runtime, watched: dict[str, Any], tmp_path: Path
) -> None:
    """While the SQLite writers' turn is held elsewhere, the writer waits; the loop answers 503 at its
    deadline (Google retries), and the late batch's outcome is not sent to the next request."""
    from calsync.store.db import intake_lock_path
    from calsync.web.reading_worker import RECORD_SECONDS

    lock_path = intake_lock_path(runtime.engine)
    if lock_path is None:
        pytest.skip("the writers' turn is a SQLite file's")
    channel = watched["channel"]
    with calsync_process(settings, tmp_path / "web.log", ["web", "--workers", "1", "--threads", "2"]) as base:
        sock = _half_sent(base, b"")
        sock.settimeout(RECORD_SECONDS + 5)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            started = time.monotonic()
            sock.sendall(_notification(push_headers(channel, number=3)))
            [(code, _, _)] = _read_answers(sock, 1)
            waited = time.monotonic() - started
            fcntl.flock(fd, fcntl.LOCK_UN)
            # The late batch is written now; this one's answer is its own (a 404), not the late 200.
            sock.sendall(_notification(push_headers(channel, number=4, **{"X-Goog-Channel-Token": "forged"})))
            [(then, _, _)] = _read_answers(sock, 1)
        finally:
            os.close(fd)
            sock.close()
    assert code == 503 and RECORD_SECONDS - 0.5 <= waited < RECORD_SECONDS + 3
    assert then == 404


PLAIN_HEADERS = ["X-Goog-Channel-ID", "x-goog-resource-state", "User-Agent", "Content-Length", "Connection"]
CONNECTION_VALUES = ["close", "keep-alive", "Keep-Alive, close", "upgrade"]


@settings_(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.one_of(st.sampled_from(PLAIN_HEADERS), st.from_regex(r"\A[A-Za-z_ -]{1,12}\Z")),
                st.text(st.sampled_from(list("0123456789 \t,abc-_\x00\x01\x7f\xe9\xff")), max_size=8),
            ),
            st.tuples(st.sampled_from(["Connection", "connection"]), st.sampled_from(CONNECTION_VALUES)),
        ),
        max_size=8,
    ),
    st.sampled_from(["1.0", "1.1"]),
)
def test_the_loop_reads_a_notification_head_as_gunicorn_does(fields: list[tuple[str, str]], version: str) -> None:
    """Whatever head the loop takes, gunicorn's own parser takes too, into the same environ; the loop
    leaves the rest (and anything it is unsure of) to a thread."""
    from gunicorn.http import wsgi
    from gunicorn.http.parser import RequestParser

    from calsync.web.reading_worker import _complete, _notification_environ, _Refused

    head = f"POST /notifications HTTP/{version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    raw = head.encode("latin-1")
    try:
        size = _complete(bytearray(raw), 1 << 20)
    except _Refused:
        return
    parsed = _notification_environ(bytearray(raw), size) if size is not None and size > 0 else None
    if parsed is None:
        return
    ours, keep_alive = parsed
    cfg = Config()
    left, right = socket.socketpair()
    try:
        request = next(RequestParser(cfg, iter([raw]), ("127.0.0.1", 1)))
        _, theirs = wsgi.create(request, left, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg)
        assert keep_alive == (not request.should_close())
    finally:
        left.close()
        right.close()
    assert {k: v for k, v in theirs.items() if k in ours} == ours
    assert {k for k in theirs if k.startswith("HTTP_")} <= set(ours)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /notifications HTTP/1.1\r\nX-Goog-Channel-ID : a\r\n\r\n",  # space before the colon
        b"POST /notifications HTTP/1.1\r\nX-Goog-Channel-ID: a\r\n b\r\n\r\n",  # a folded line
        b"POST /notifications HTTP/1.1\r\nX-Goog-Channel-ID: a\nb\r\n\r\n",  # a bare LF
        b"POST /notifications HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"POST /notifications HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
        b"POST /notifications HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n",
        b"POST /notifications HTTP/2.0\r\n\r\n",
        b"POST /notifications HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"post /notifications HTTP/1.1\r\n\r\n",
        b"POST /notifications/ HTTP/1.1\r\n\r\n",
    ],
)
def test_the_loop_leaves_unusual_heads_to_a_thread(raw: bytes) -> None:
    from calsync.web.reading_worker import _notification_environ

    assert _notification_environ(bytearray(raw), len(raw)) is None


def test_a_client_that_expects_100_continue_is_told_at_once_and_only_once(settings: Settings, tmp_path: Path) -> None:
    """curl sends `Expect: 100-continue` with a body over 1 KB and waits a second for the interim
    answer before sending it anyway: the loop, which holds the request until its body is in, sends it."""
    head, body = _webhook_request(settings, b"Expect: 100-continue\r\n")
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    with calsync_web(settings, tmp_path / "web.log") as base:
        sock = _half_sent(base, head)
        try:
            sock.settimeout(0.5)
            first = sock.recv(len(interim))
            sock.settimeout(5)
            sock.sendall(body)
            rest = _answer(sock)
        finally:
            sock.close()
    assert first == interim
    assert rest.startswith(b"HTTP/1.1 400 ") and json.loads(rest.partition(b"\r\n\r\n")[2])["field"] == "url"
