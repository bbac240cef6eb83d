"""PostgreSQL LISTEN in a thread: a NOTIFY from any process wakes this process's workers at once.

The receiver (in whichever web process got the notification) NOTIFYs in the same transaction that
marks the work, so the wake-up arrives only after the work is visible.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import URL

from calsync.wakeup import CHANNEL, Wakeup

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0


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
    ) -> None:
        super().__init__(name="calsync-listen", daemon=True)
        self.conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.wakeup = wakeup
        self.stop = stop
        self.poll = poll
        self.ready = threading.Event()
        self.ignore = ignore  # by the sender's server process id

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    # Anything sent while we were not listening: let the workers look once.
                    self.wakeup.notify_local()
                    while not self.stop.is_set():
                        for note in conn.notifies(timeout=self.poll, stop_after=1):
                            if self.ignore is None or not self.ignore(note.pid):
                                self.wakeup.notify_local()
            except psycopg.Error as err:
                self.ready.clear()
                log.warning("LISTEN connection lost (%s); polling until it is back", err)
                self.stop.wait(RECONNECT_SECONDS)
