"""PostgreSQL LISTEN in a thread: a NOTIFY from any process wakes this process's workers at once.

The receiver (in whichever web process got the notification) NOTIFYs in the same transaction that
marks the work, so the wake-up arrives only after the work is visible.

A LISTEN connection only reads, so a dead one looks like a quiet one: after a partition that sends
no RST, or behind a proxy that stops forwarding, it would wait forever while wake-ups silently fall
back to polling. The connection has TCP keepalives, and once it has been quiet for `probe_every`
it is asked `SELECT 1`; no answer within `probe_timeout` and it is dropped and made again.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import pq
from sqlalchemy.engine import URL

from calsync.store.db import KEEPALIVE_ARGS
from calsync.wakeup import CHANNEL, Wakeup

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0
PROBE_EVERY_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 10.0


class ProbeFailed(psycopg.OperationalError):
    """The LISTEN connection did not answer `SELECT 1` in time: it is dead without having said so."""


class Listener(threading.Thread):
    """Holds one autocommit connection in LISTEN and turns each notification into a local wake-up."""

    def __init__(
        self,
        url: URL,
        wakeup: Wakeup,
        stop: threading.Event,
        *,
        poll: float = 0.5,
        ignore: Callable[[int], bool] | None = None,
        probe_every: float = PROBE_EVERY_SECONDS,
        probe_timeout: float = PROBE_TIMEOUT_SECONDS,
        reconnect: float = RECONNECT_SECONDS,
    ) -> None:
        super().__init__(name="calsync-listen", daemon=True)
        self.conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.wakeup = wakeup
        self.stop = stop
        self.poll = poll
        self.ready = threading.Event()
        self.ignore = ignore  # by the sender's server process id
        self.probe_every = probe_every
        self.probe_timeout = probe_timeout
        self.reconnect = reconnect
        self.connections = 0  # LISTEN connections made so far (each after the first is a reconnect)
        self.backend_pid: int | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, **KEEPALIVE_ARGS) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connections += 1
                    self.backend_pid = conn.info.backend_pid
                    self.ready.set()
                    # Anything sent while we were not listening: let the workers look once.
                    self.wakeup.notify_local()
                    self._listen(conn)
            except psycopg.Error as err:
                self.ready.clear()
                log.warning("LISTEN connection lost (%s); polling until it is back", err)
                self.stop.wait(self.reconnect)

    def _listen(self, conn: psycopg.Connection) -> None:
        heard = time.monotonic()
        while not self.stop.is_set():
            for note in conn.notifies(timeout=self.poll, stop_after=1):
                heard = time.monotonic()
                if self.ignore is None or not self.ignore(note.pid):
                    self.wakeup.notify_local()
            if time.monotonic() - heard >= self.probe_every:
                probe(conn, self.probe_timeout)
                heard = time.monotonic()
                # A notification that came with the probe's answer is not handed to `notifies`:
                # the workers look once instead.
                self.wakeup.notify_local()


def probe(conn: psycopg.Connection, timeout: float) -> None:
    """`SELECT 1` on `conn`, answered within `timeout` seconds, or ProbeFailed.

    Sent through libpq's asynchronous calls so that a connection that never answers costs
    `timeout`, not the minutes the kernel takes to give up on it.
    """
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    pgconn.send_query(b"SELECT 1")
    while pgconn.flush() != 0:  # the socket's buffer is full: wait until it drains, as long as we may
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [pgconn.socket], [], left)[1]:
            raise ProbeFailed(f"could not send SELECT 1 within {timeout:g}s")
    ok = False
    while True:
        while pgconn.is_busy():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProbeFailed(f"no answer to SELECT 1 within {timeout:g}s")
            readable, _, _ = select.select([pgconn.socket], [], [], left)
            if readable:
                pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        ok = ok or result.status == pq.ExecStatus.TUPLES_OK
    if not ok:
        raise ProbeFailed(f"the probe failed: {pgconn.get_error_message()}")
