"""Wake workers the moment there is work: an in-process condition, and across processes LISTEN/NOTIFY
on PostgreSQL or a datagram per worker process on a SQLite file's host (`HostPeers`).

Polling the tables stays as the fallback; this only shortens the wait.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import socket
import threading
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

CHANNEL = "calsync_work"
PEER_POLL = 0.5  # seconds between two looks at `stop` while a peer listener waits for datagrams
# Seconds before a pass looks again at work it found but could not take: a row another transaction
# held (PostgreSQL's SKIP LOCKED), or a subscription still behind the feed after a fill.
RELOOK_SECONDS = 0.05
ALARM_HORIZON = 60.0  # seconds: work due later than this is left to polling (no alarm is kept for it)

log = logging.getLogger(__name__)


class Wakeup:
    """A generation counter under a condition: waiters return as soon as it moves.

    A wake-up rouses one idle waiter, not all of them: every thread woken for one owed sync would
    run an empty claim. A thread that claims work while more is due wakes the next one
    (`worker.Worker`), so a batch of owed syncs still spreads over the idle threads. A thread
    that was busy when the counter moved sees that when it comes to wait, and looks again.

    Work this process puts off to a known time (a burst's follow-up sync, a retry after a failure,
    a job the quota budget put off) sets an alarm (`wake_in`): an idle waiter looks at that time
    rather than at its next poll, which came up to a whole poll interval later.
    """

    def __init__(self, peers: HostPeers | None = None) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._alarms: list[float] = []  # monotonic times, a heap
        self.peers = peers  # worker processes on this host, for a SQLite file (PostgreSQL has NOTIFY)

    def notify_local(self) -> None:
        """There may be work: one idle waiter looks."""
        with self._cond:
            self._generation += 1
            self._cond.notify()

    def notify_committed(self) -> None:
        """Work was committed: one idle waiter here looks, and so does every worker process on this host
        that shares the SQLite file (on PostgreSQL the commit's own NOTIFY reaches the others)."""
        self.notify_local()
        if self.peers is not None:
            self.peers.notify()

    def notify_all(self) -> None:
        """Every waiter looks (shutting down)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def wake_in(self, seconds: float) -> None:
        """Work comes due in `seconds`: one idle waiter looks then."""
        if seconds > ALARM_HORIZON:
            return
        at = time.monotonic() + max(0.0, seconds)
        with self._cond:
            heapq.heappush(self._alarms, at)
            if self._alarms[0] == at:
                self._cond.notify()  # a waiter asleep past this time sets its timeout again

    def wait(self, since: int, timeout: float) -> bool:
        """Block until the generation passes `since`, an alarm comes due or the timeout ends; True if woken.

        Every alarm due by then is taken at once: the one pass it starts passes the wake-up on while
        more is due.
        """
        end = time.monotonic() + timeout
        with self._cond:
            while self._generation == since:
                now = time.monotonic()
                alarms = self._alarms
                if alarms and alarms[0] <= now:
                    while alarms and alarms[0] <= now:
                        heapq.heappop(alarms)
                    return True
                until = min(end, alarms[0]) if alarms else end
                if until <= now:
                    return False
                self._cond.wait(until - now)
            return True

    def notify_after_commit(self, session: Session) -> None:
        """Wake local waiters when `session` commits, and remote ones through NOTIFY on PostgreSQL."""
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text(f"NOTIFY {CHANNEL}"))
        if not session.info.get("_calsync_wakeup_hooked"):
            session.info["_calsync_wakeup_hooked"] = True
            from sqlalchemy import event

            def _after_commit(_s: Session) -> None:
                session.info.pop("_calsync_wakeup_hooked", None)
                self.notify_committed()

            event.listen(session, "after_commit", _after_commit, once=True)


class HostPeers:
    """The worker processes of one host that share a SQLite file, woken by a datagram each.

    SQLite has no LISTEN/NOTIFY, so a worker process in another process than the receiver (the
    worker of `calsync serve`, or `calsync worker` beside `calsync web`) would otherwise see a
    notification's sync only when it next polls. Each listening process registers itself as a file
    named by its pid in a folder beside the database, and listens on a Linux abstract socket named
    after the database and that pid (no path-length limit, nothing left on disk when it dies); a
    commit that owes work sends one byte to each. A file whose socket refuses is a dead process's
    and is removed. A lost datagram costs only the wait until the next poll.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._prefix = b"\0calsync-" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24].encode() + b"-"
        self._sender: socket.socket | None = None
        self._listing: tuple[int, list[str]] = (-1, [])
        self._lock = threading.Lock()

    @classmethod
    def beside(cls, database: str) -> HostPeers:
        return cls(Path(database + ".wakeup"))

    def _address(self, pid: str) -> bytes:
        return self._prefix + pid.encode()

    def notify(self) -> None:
        """Wake every other listening process on this host (this one's threads `notify_committed` woke)."""
        own = str(os.getpid())
        with self._lock:
            try:
                stamp = os.stat(self.folder).st_mtime_ns
                if stamp != self._listing[0]:
                    self._listing = (stamp, [name for name in os.listdir(self.folder) if name.isdigit()])
            except OSError:
                return  # no process has ever listened (or the folder cannot be read): they poll
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            for pid in self._listing[1]:
                if pid == own:
                    continue
                try:
                    self._sender.sendto(b"!", self._address(pid))
                except BlockingIOError:
                    pass  # its queue is full: it has wake-ups enough
                except (ConnectionRefusedError, FileNotFoundError):
                    (self.folder / pid).unlink(missing_ok=True)  # nobody listens there any more

    def listen(self, wakeup: Wakeup, stop: threading.Event) -> threading.Thread | None:
        """Register this process and pass each datagram on to `wakeup` until `stop` is set (None: the
        process could not register, and its threads poll)."""
        pid = str(os.getpid())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._address(pid))
            self.folder.mkdir(mode=0o700, exist_ok=True)
            (self.folder / pid).touch(mode=0o600)
        except OSError as err:
            sock.close()
            log.warning("cannot listen for wake-ups beside the database (%s); polling instead", err)
            return None
        sock.settimeout(PEER_POLL)

        def run() -> None:
            try:
                while not stop.is_set():
                    try:
                        sock.recv(64)
                    except TimeoutError:
                        continue
                    except OSError:
                        log.exception("wake-up socket failed; the worker falls back to polling")
                        return
                    wakeup.notify_local()
            finally:
                (self.folder / pid).unlink(missing_ok=True)
                sock.close()

        thread = threading.Thread(target=run, name="calsync-wakeup-peers", daemon=True)
        thread.start()
        return thread
