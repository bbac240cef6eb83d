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
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from calsync.web import MAX_BODY_BYTES
from calsync.web.handover import wait_for_replacements

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


class ReadingConn(TConn):  # type: ignore[misc]
    """A connection with the bytes of its next request read so far."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.pending = bytearray()
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

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.reading if c.deadline <= now]:
            self._drop(conn)

    # In the event loop ---------------------------------------------------------------------------
    def _read_from(self, conn: ReadingConn) -> None:
        conn.sock.setblocking(False)
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_bytes, conn))
        self._on_bytes(conn, conn.sock)

    def _on_bytes(self, conn: ReadingConn, _sock: Any) -> None:
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
        try:
            complete = _complete(conn.pending, MAX_BODY_BYTES)
        except _Refused as refusal:
            self._refuse(conn, refusal.status)
            return
        if complete:
            self.poller.unregister(conn.sock)
            del self.reading[conn]
            self.enqueue_req(conn)

    def _refuse(self, conn: ReadingConn, status: str) -> None:
        """Answer and close without a thread. The connection lingers a little, its input discarded:
        closed with unread bytes, it would be reset, and the client might lose the answer."""
        body = f"{status.partition(' ')[2].lower()}\n".encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        with contextlib.suppress(OSError):  # a few bytes into an idle socket's send buffer
            conn.sock.send(head.encode() + b"Connection: close\r\n\r\n" + body)
            conn.sock.shutdown(socket.SHUT_WR)
        conn.refused = True
        conn.pending = bytearray()
        conn.deadline = time.monotonic() + LINGER_SECONDS

    def _drop(self, conn: ReadingConn) -> None:
        self.reading.pop(conn, None)
        with contextlib.suppress(OSError, KeyError, ValueError):  # not registered any more
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()


class _Refused(Exception):
    """A request the event loop answers itself, with this status, instead of reading it whole."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _complete(pending: bytearray, body_limit: int) -> bool:
    """Whether all of the request is here, so that a thread can take it without reading the socket.

    A chunked body is refused (411), not parsed here: Google's notifications carry no body and
    calsync's API clients send JSON with a Content-Length, so nobody needs one, and a chunk parser
    would be more code to get wrong. A head the thread's parser refuses (a Content-Length twice, or
    not digits) is complete: it is answered 400 before any body is read.
    """
    end = pending.find(_HEADER_END)
    if end < 0:
        if len(pending) > HEADER_LIMIT:
            raise _Refused("431 Request Header Fields Too Large")
        return False
    head = bytes(pending[: end + 2])  # each header line then ends in CRLF
    if _TRANSFER_ENCODING.search(head):
        raise _Refused("411 Length Required")
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) != 1 or not lengths[0].isdigit():
        return True
    digits = lengths[0].lstrip(b"0") or b"0"
    if len(digits) > len(str(body_limit)) or int(digits) > body_limit:  # int() of 5,000 digits would raise
        raise _Refused("413 Content Too Large")
    return len(pending) - (end + 4) >= int(digits)
