"""gunicorn's threaded worker, but a request thread only ever gets a request that has fully arrived.

gunicorn's gthread hands a connection to a thread as soon as its first bytes arrive, and the thread
then reads the rest with no deadline. Eight clients that send half a request and stop (slowloris)
held all eight threads of `calsync serve`, and nothing was answered, not even `/healthz`, for as long
as they stayed connected. Here the worker's event loop reads each request itself, without blocking,
until its headers and its whole body (by Content-Length) are in; only then does a thread parse and
answer it, from the bytes already read, so a thread never waits on a client's reads. A connection
that has not sent a whole request within `REQUEST_SECONDS` of its first byte (or a new one that sends
nothing within `FIRST_BYTE_SECONDS`) is closed. The loop refuses at once, and closes, what it would
otherwise have to hold without bound: headers past `HEADER_LIMIT` (431), a declared body past the
app's own limit (413, `calsync.web.MAX_BODY_BYTES`) and a chunked body (411). So the
loop holds at most that body limit, `HEADER_LIMIT` and one read (64 KB) past them, about 1.2 MB, per
connection, times gunicorn's `worker_connections` (1,000 by default), each for `REQUEST_SECONDS`.

Google's notifications do not go to a thread at all when their head has the plain shape Google sends
(`_NOTIFICATION_HEAD`): the loop checks one (`calsync.web.receiver.Receiver.check`), hands it to the
intake without waiting, and sends the answer when the intake's writer hands its batch back, one wake-up
of the loop per batch. The thread, gunicorn's parsing of the request and the two hand-offs between
threads per notification cost more CPU than recording it; without them a process answers several
times as many (docs/performance.md). Any other head, and every other request, goes to a thread.
"""

from __future__ import annotations

import contextlib
import errno
import io
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn.util import http_date
from gunicorn.workers.gthread import TConn, ThreadWorker

from calsync.push.intake_sql import Item
from calsync.web import MAX_BODY_BYTES
from calsync.web.handover import wait_for_replacements
from calsync.web.receiver import Answer, Checked, Receiver, mounted

FIRST_BYTE_SECONDS = 5.0  # from a new connection to its first byte (gthread's own wait for data)
REQUEST_SECONDS = 10.0  # from a request's first byte to its last
READ_SECONDS = 5.0  # each blocking socket call of a thread (its writes: it has the whole request)
BOOT_BEAT_SECONDS = 1.0  # while the app is built, how often gunicorn is told the process is alive
# Bytes of a request line and headers the event loop waits for: well past any real client's, and
# refused there rather than handed to a thread that would read the rest of them itself.
HEADER_LIMIT = 64 * 1024
LINGER_SECONDS = 2.0  # after a refusal, how long the loop discards what the client still sends
_HEADER_END = b"\r\n\r\n"
# Found with a regular expression, not by splitting the head into lines: every notification goes
# through this, and the regular expressions cost half as much.
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.IGNORECASE)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([^\r]*?)[ \t]*(?=\r)", re.IGNORECASE)
UNKNOWN_SIZE = -1  # a whole request whose size the thread's parser will judge (see `_complete`)
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*\r\n", re.IGNORECASE)

# Notifications the event loop answers itself (`_answer_here`): only a head of this plain shape, which
# gunicorn's parser would read the same way; anything else goes to a thread as every other request.
# A header name leaves "_" out (gunicorn drops such headers), a value holds no control character.
RECORD_SECONDS = 10.0  # how long a notification waits for the intake before it is answered 503
_NAME, _VALUE = rb"[!#$%&'*+.^`|~0-9A-Za-z-]+", rb"[\x20-\x7e\x80-\xff]*?"
_HEADER = re.compile(rb"(" + _NAME + rb"):[ \t]*(" + _VALUE + rb")[ \t]*\r\n")
_NOTIFICATION_HEAD = re.compile(
    rb"(POST /notifications HTTP/1\.([01])\r\n)(?:" + _NAME + rb":[ \t]*" + _VALUE + rb"[ \t]*\r\n)*\r\n"
)
_DIRECT_HEAD_LIMIT = 8190  # gunicorn's own limit for one header line; a notification's whole head is ~600
_NOT_DIRECT = frozenset(("HTTP_EXPECT", "HTTP_UPGRADE"))


class ReadingConn(TConn):  # type: ignore[misc]
    """A connection with the bytes of its next request read so far."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.pending = bytearray()
        self.request_size = 0  # of the request in `pending` that the event loop answers itself
        self.keep_alive = True  # whether that request leaves the connection open
        self.continued = False  # "100 Continue" sent by the loop for the request being read
        self.protocol = "HTTP/1.1"  # of the request the event loop answers itself
        self.dropped = False
        self.deadline = 0.0
        self.refused = False  # answered by the event loop; what still arrives is discarded

    def init(self) -> None:
        super().init()
        self.sock.settimeout(READ_SECONDS)  # gthread made it blocking; reads past what we hold must end


class ReadingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread whose event loop reads whole requests before a thread handles them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[ReadingConn, None] = {}  # connections the event loop is reading from
        # Notifications the event loop handed to the intake, by connection: at most one each.
        self.recording: dict[ReadingConn, _Recording] = {}
        self.receiver: Receiver | None = None  # the app's receiver, when the app is calsync's
        self.stopping = False
        # gunicorn judges a process by the mtime of this file, which its heartbeat sets to monotonic
        # seconds; made (here, in the master, before the fork) it holds the wall clock's, decades ahead
        # of them. A process stuck before its first heartbeat (stopped, or hung at boot) looked alive
        # for ever and was never replaced. The first heartbeat is now the file's birth.
        self.tmp.notify()

    def load_wsgi(self) -> None:
        """Build the app while telling gunicorn this process is alive: its limit for a silent process
        (`calsync.web.server.HUNG_SECONDS`) is for a stuck event loop, and a start-up slowed by a busy
        machine is not one (killed, its replacement would start as slowly, and so on)."""
        loaded = threading.Event()

        def beat() -> None:
            while not loaded.wait(BOOT_BEAT_SECONDS):
                self.notify()

        threading.Thread(target=beat, name="calsync-boot-beat", daemon=True).start()
        try:
            super().load_wsgi()
        finally:
            loaded.set()
        self.receiver = mounted(self.wsgi)

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: stop gracefully, but on a socket of its own only once a replacement listens
        (`calsync.web.handover`); until then this process goes on accepting."""
        if self.stopping:
            return
        self.stopping = True
        if not (self.cfg.reuse_port and self.sockets):
            self.alive = False
            return
        port = self.sockets[0].getsockname()[1]
        threading.Thread(target=self._hand_over, args=(port,), name="calsync-handover", daemon=True).start()

    def _hand_over(self, port: int) -> None:
        wait_for_replacements(port, self.cfg.workers)
        self.method_queue.defer(self._stop)  # run by the event loop, which the queue's pipe wakes

    def _stop(self) -> None:
        self.alive = False

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = ReadingConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.deadline = time.monotonic() + FIRST_BYTE_SECONDS
        self._read_from(conn)

    def on_client_socket_readable(self, conn: ReadingConn, client: Any) -> None:
        """A kept-alive connection has bytes of its next request: read them here, not on a thread."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_from(conn)

    def handle(self, conn: ReadingConn) -> Any:
        """On a thread: parse and answer the request the event loop read (gthread's own handling)."""
        conn.data_ready = True
        conn.sock.setblocking(True)
        conn.init()
        if conn.pending:
            buf = conn.parser.unreader.buf
            buf.seek(0, io.SEEK_END)
            buf.write(bytes(conn.pending))
            conn.pending.clear()
        return super().handle(conn)

    def handle_request(self, req: Any, conn: ReadingConn) -> Any:
        """On a thread: gunicorn's own handling, less its "100 Continue" when the loop sent one already."""
        if conn.continued:
            conn.continued = False
            req._expected_100_continue = False
        return super().handle_request(req, conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.reading if c.deadline <= now]:
            self._drop(conn)
        for conn, waiting in list(self.recording.items()):
            if waiting.deadline <= now and self.receiver is not None:
                del self.recording[conn]
                self._answer(conn, self.receiver.conclude(waiting.checked, None))

    # In the event loop ---------------------------------------------------------------------------
    def _read_from(self, conn: ReadingConn) -> None:
        conn.sock.setblocking(False)
        self._watch(conn)
        self._on_bytes(conn, conn.sock)

    def _watch(self, conn: ReadingConn) -> None:
        """Read the connection's bytes in the loop from now on (`_on_bytes`)."""
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_bytes, conn))

    def _on_bytes(self, conn: ReadingConn, _sock: Any) -> None:
        # A readable event from the same select() as the queue's wake-up that handed this connection
        # on (to the intake, or a thread) before this callback ran: the socket is not ours to read.
        if conn not in self.reading:
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:  # the client closed (or went away mid-request)
            self._drop(conn)
            return
        if conn.refused:
            return
        if not conn.pending:
            conn.deadline = time.monotonic() + REQUEST_SECONDS
        conn.pending += data
        self._advance(conn)

    def _advance_if_reading(self, conn: ReadingConn) -> None:
        if conn in self.reading:  # not handed on, nor dropped, meanwhile
            self._advance(conn)

    def _advance(self, conn: ReadingConn) -> None:
        """Hand the request on once all of it is here (the connection is being read from)."""
        try:
            size = _complete(conn.pending, MAX_BODY_BYTES)
        except _Refused as refusal:
            self._refuse(conn, refusal.status)
            return
        if size is not None:
            self.poller.unregister(conn.sock)
            del self.reading[conn]
            self._dispatch(conn, size)
        elif not conn.continued and _expects_continue(conn.pending):
            # The client waits for this before it sends the body (curl for a second, others longer);
            # gunicorn would send it only once a thread made the environ, after the whole body.
            conn.continued = True
            with contextlib.suppress(OSError):  # a few bytes into an idle socket's send buffer
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _dispatch(self, conn: ReadingConn, size: int) -> None:
        """Hand a whole request to a thread, unless it is a notification the loop answers itself."""
        if self.receiver and self.alive and self.cfg.keepalive and size > 0:
            try:
                if self._answer_here(conn, self.receiver, size):
                    return
            except Exception:  # the loop must go on; a thread's failure would be a 500 and a log line
                self.log.exception("a notification the event loop could not take goes to a thread")
        self.enqueue_req(conn)

    def _answer_here(self, conn: ReadingConn, receiver: Receiver, size: int) -> bool:
        """Take a notification without a thread: check it here, hand it to the intake, and answer once
        the writer has recorded it (`_recorded`). A notification is checked and recorded as a thread
        would (the same `Receiver.check` and `conclude`); what the loop saves is gunicorn's parsing of
        the request and two hand-offs between threads, which cost more than the rest of the receiver.
        False: not a plain notification (see `_NOTIFICATION_HEAD`), for a thread to take."""
        parsed = _notification_environ(conn.pending, size)
        if parsed is None:
            return False
        environ, conn.keep_alive = parsed
        conn.protocol = environ["SERVER_PROTOCOL"]
        conn.request_size = size
        checked = receiver.check(environ)
        if not isinstance(checked, Checked):
            self._answer(conn, checked)
            return True
        waiting = _Recording(conn, checked, time.monotonic() + RECORD_SECONDS)
        receiver.intake.submit(checked.push, checked.logged, self._from_writer, waiting)
        self.recording[conn] = waiting  # the writer's answer reaches the loop only after this
        return True

    def _from_writer(self, items: list[Item]) -> None:
        """On the intake's writer thread, once per batch: the answers go out from the event loop."""
        self.method_queue.defer(self._recorded, items)

    def _recorded(self, items: list[Item]) -> None:
        for item in items:
            waiting: _Recording = item.tag
            # Answered 503 already (it waited too long), and the connection may wait for a newer one.
            if self.recording.get(waiting.conn) is not waiting or self.receiver is None:
                continue
            del self.recording[waiting.conn]
            try:
                answer = self.receiver.conclude(waiting.checked, None if item.failed else item.outcome)
            except Exception:
                self.log.exception("could not answer a recorded notification")
                self._drop(waiting.conn)
                continue
            self._answer(waiting.conn, answer)

    def _answer(self, conn: ReadingConn, answer: Answer) -> None:
        """Send the answer to a notification taken by the loop, then read the connection's next request
        (kept alive, as gunicorn would keep it)."""
        status, body = answer
        keep_alive = conn.keep_alive and self.alive  # a stopping process reads no further requests
        head = f"{conn.protocol} {status}\r\nServer: gunicorn\r\nDate: {http_date()}\r\n"
        data = (
            head + f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            sent = conn.sock.send(data)  # a few bytes into an idle socket's send buffer
        except OSError:
            sent = -1
        if sent != len(data):  # a client that reads nothing
            self._drop(conn)
            return
        if not keep_alive:
            self._watch(conn)
            self._linger(conn)
            return
        del conn.pending[: conn.request_size]
        if conn.pending:  # the client sent (some of) its next request already
            conn.deadline = time.monotonic() + REQUEST_SECONDS
            self._watch(conn)
            # From the loop's queue, not from here: answered at once in turn, a long run of pipelined
            # requests would recurse here once each.
            self.method_queue.defer(self._advance_if_reading, conn)
            return
        conn.set_timeout()
        self.keepalived_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def _refuse(self, conn: ReadingConn, status: str) -> None:
        """Answer and close without a thread. The connection lingers a little, its input discarded:
        closed with unread bytes, it would be reset, and the client might lose the answer."""
        body = f"{status.partition(' ')[2].lower()}\n".encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        with contextlib.suppress(OSError):  # a few bytes into an idle socket's send buffer
            conn.sock.send(head.encode() + b"Connection: close\r\n\r\n" + body)
        self._linger(conn)

    def _linger(self, conn: ReadingConn) -> None:
        """Close a connection being read from once the client has, or after `LINGER_SECONDS`, discarding
        what it still sends (see `_refuse`)."""
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.refused = True
        conn.pending = bytearray()
        conn.deadline = time.monotonic() + LINGER_SECONDS

    def _drop(self, conn: ReadingConn) -> None:
        if conn.dropped:  # counted out once only: gunicorn stops accepting at worker_connections
            return
        conn.dropped = True
        self.reading.pop(conn, None)
        with contextlib.suppress(OSError, KeyError, ValueError):  # not registered any more
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()


@dataclass(frozen=True, slots=True, eq=False)
class _Recording:
    """A notification the event loop handed to the intake, and the latest moment to answer it."""

    conn: ReadingConn
    checked: Checked
    deadline: float


class _Refused(Exception):
    """A request the event loop answers itself, with this status, instead of reading it whole."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _complete(pending: bytearray, body_limit: int) -> int | None:
    """The size in bytes of the request at the start of `pending` once all of it is here, so that a
    thread can take it without reading the socket (None until then).

    A chunked body is refused (411), not parsed here: Google's notifications carry no body and
    calsync's API clients send JSON with a Content-Length, so nobody needs one, and a chunk parser
    would be more code to get wrong. A head the thread's parser refuses (a Content-Length twice, or
    not digits) is complete, its size `UNKNOWN_SIZE`: it is answered 400 before any body is read.
    """
    end = pending.find(_HEADER_END)
    if end < 0:
        if len(pending) > HEADER_LIMIT:
            raise _Refused("431 Request Header Fields Too Large")
        return None
    head = bytes(pending[: end + 2])  # each header line then ends in CRLF
    if _TRANSFER_ENCODING.search(head):
        raise _Refused("411 Length Required")
    lengths = _CONTENT_LENGTH.findall(head)
    if not lengths:
        return end + 4
    if len(lengths) != 1 or not lengths[0].isdigit():
        return UNKNOWN_SIZE
    digits = lengths[0].lstrip(b"0") or b"0"
    if len(digits) > len(str(body_limit)) or int(digits) > body_limit:  # int() of 5,000 digits would raise
        raise _Refused("413 Content Too Large")
    size = end + 4 + int(digits)
    return size if len(pending) >= size else None


def _expects_continue(pending: bytearray) -> bool:
    """Whether the request's head is all here and asks for "100 Continue" (HTTP/1.1 only)."""
    end = pending.find(_HEADER_END)
    if end < 0:
        return False
    line_end = pending.find(b"\r\n")
    return pending[:line_end].endswith(b" HTTP/1.1") and bool(_EXPECT_CONTINUE.search(pending, 0, end + 2))


def _notification_environ(pending: bytearray, size: int) -> tuple[dict[str, str], bool] | None:
    """The WSGI environ gunicorn would make of a plain notification's head (its headers decoded as
    latin-1, a repeated one joined with commas) and whether the connection stays open after the
    answer (gunicorn's rule), or None for any other request."""
    match = _NOTIFICATION_HEAD.match(pending, 0, min(size, _DIRECT_HEAD_LIMIT))
    if match is None:
        return None
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/notifications",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": f"HTTP/1.{match[2].decode()}",
    }
    for name, raw in _HEADER.findall(pending, match.end(1), match.end()):
        key = name.decode().upper().replace("-", "_")
        if key not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            key = "HTTP_" + key
        value = raw.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if _NOT_DIRECT.intersection(environ):
        return None
    connection = environ.get("HTTP_CONNECTION", "").strip(" \t").lower()
    if connection not in ("", "close", "keep-alive"):  # a list, or "upgrade": gunicorn's to judge
        return None
    return environ, connection == "keep-alive" or (connection == "" and match[2] == b"1")
