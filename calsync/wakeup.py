"""Wake workers the moment there is work: an in-process condition, and LISTEN/NOTIFY across processes.

Polling the tables stays as the fallback; this only shortens the wait.
"""

from __future__ import annotations

import threading

from sqlalchemy import text
from sqlalchemy.orm import Session

CHANNEL = "calsync_work"


class Wakeup:
    """A generation counter under a condition: waiters return as soon as it moves.

    A wake-up rouses one idle waiter, not all of them: every thread woken for one owed sync would
    run an empty claim. A thread that claims work while more is due wakes the next one
    (`worker.Worker`), so a batch of owed syncs still spreads over the idle threads. A thread
    that was busy when the counter moved sees that when it comes to wait, and looks again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def notify_local(self) -> None:
        """There may be work: one idle waiter looks."""
        with self._cond:
            self._generation += 1
            self._cond.notify()

    def notify_all(self) -> None:
        """Every waiter looks (shutting down)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def wait(self, since: int, timeout: float) -> bool:
        """Block until the generation passes `since` or the timeout ends; True if woken."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != since, timeout=timeout)

    def notify_after_commit(self, session: Session) -> None:
        """Wake local waiters when `session` commits, and remote ones through NOTIFY on PostgreSQL."""
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text(f"NOTIFY {CHANNEL}"))
        if not session.info.get("_calsync_wakeup_hooked"):
            session.info["_calsync_wakeup_hooked"] = True
            from sqlalchemy import event

            def _after_commit(_s: Session) -> None:
                session.info.pop("_calsync_wakeup_hooked", None)
                self.notify_local()

            event.listen(session, "after_commit", _after_commit, once=True)
