"""The worker: threads that claim due work under leases and do it.

Work is rows in the database (calendars owing a sync, calendar lists owing a refresh, webhook
deliveries), so any worker process can pick up what another left. A notification wakes a thread
at once (in-process condition, LISTEN/NOTIFY on PostgreSQL); polling is only the fallback.
`run_burst()` does everything due now and returns, which makes tests deterministic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from calsync.accounts.connections import drop_unconfirmed
from calsync.clock import at_least
from calsync.metrics import QUOTA_WAITS
from calsync.runtime import Runtime
from calsync.store.db import is_own_backend, is_postgres, statements_alone, transaction
from calsync.store.liveness import lease_is_free, stale_before
from calsync.store.models import Delivery
from calsync.store.states import DeliveryState, Priority
from calsync.wakeup import RELOOK_SECONDS
from calsync.webhooks.delivery import release_held as release_held_deliveries
from calsync.webhooks.outbox import behind_the_feed
from calsync.work.jobs import run_calendar_job, run_list_job
from calsync.work.leases import (
    Claim,
    claim_account_list,
    claim_calendar,
    defer_account_list,
    defer_calendar,
    may_be_due,
    passed_by,
    put_off_in_turn,
    release_account_list,
    release_calendar,
    release_held,
)
from calsync.work.liveness import Heartbeat
from calsync.work.quota import replan
from calsync.work.scheduler import (
    expire_lapsed_channels,
    prune,
    schedule_missing_channels,
    schedule_renewals,
)

if TYPE_CHECKING:
    from calsync.work.listen import Listener

log = logging.getLogger(__name__)

POLL_SECONDS = 1.5  # the fallback when no wake-up arrives; also bounds how soon a dead worker's work is seen
START_PAUSE_SECONDS = 1.0  # between two tries to start while the database is away
ERROR_PAUSE_SECONDS = 0.5  # after a failed pass (the database away, say): back soon, without hammering it
SCHEDULER_SECONDS = 2.0
DELIVERY_BATCH = 50

JobFn = Callable[[Runtime, Claim], None]
ReleaseFn = Callable[[Session, Claim], None]
DeferFn = Callable[[Session, Claim, datetime], None]

_DELIVERIES = Delivery.__table__
_DELIVERY_NOW = bindparam("now", type_=_DELIVERIES.c.next_attempt_at.type)
_DELIVERY_DUE = select(
    select(_DELIVERIES.c.id)
    .where(
        _DELIVERIES.c.state == DeliveryState.PENDING,
        _DELIVERIES.c.next_attempt_at <= _DELIVERY_NOW,
        lease_is_free(_DELIVERIES.c.lease_owner, _DELIVERIES.c.lease_until, _DELIVERY_NOW),
    )
    .exists()
    | behind_the_feed()
)


class Worker:
    """One worker process's threads (or a part of `calsync serve`)."""

    def __init__(self, runtime: Runtime, name: str | None = None, threads: int | None = None) -> None:
        self.runtime = runtime
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.threads = max(1, threads or runtime.settings.worker_threads)
        # The scheduler must look several times within the renewal window, however short it is.
        self.tick_seconds = max(0.05, min(SCHEDULER_SECONDS, runtime.settings.renew_before.total_seconds() / 4))
        self.heartbeat = Heartbeat(runtime, self.name)
        self.listener: Listener | threading.Thread | None = None  # while `run` runs
        self._started = False

    # Entry points ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set; then finish the job in hand, release nothing half-done, return.

        The heartbeat beats on its own thread until the last job has ended: the leases hang on it.
        """
        listener = None
        threads: list[threading.Thread] = []
        try:
            if not self._start_when_reachable(stop):
                return
            self.heartbeat.start()
            listener = self.listener = self._start_listener(stop)
            threads = [
                threading.Thread(
                    target=self._loop, args=(f"{self.name}/{i}", stop), name=f"calsync-worker-{i}", daemon=True
                )
                for i in range(self.threads)
            ]
            for t in threads:
                t.start()
            while not stop.wait(self.tick_seconds):
                self._schedule()
        finally:
            stop.set()
            self.runtime.wakeup.notify_all()
            for t in threads:
                t.join()
            if listener is not None:
                listener.join(timeout=5)
            self.heartbeat.stop(forget=True)

    def run_burst(self) -> int:
        """Do everything due now (including follow-up work it creates), then return the job count.

        A beat before each job, and the heartbeat's thread during it, so a long job keeps its lease.
        """
        self.heartbeat.beat()
        self.heartbeat.start()
        try:
            self.start_up()
            owner = f"{self.name}/burst"
            done = 0
            while True:
                self.tick()
                did = self.work_once(owner)
                if not did:
                    return done
                done += did
        finally:
            self.heartbeat.stop()

    def start_up(self) -> None:
        """Recreate channels that lapsed while no worker ran (the callers beat first: leases need it)."""
        if self._started:
            return
        now = self.runtime.clock.now()
        with transaction(self.runtime.sessions) as session:
            schedule_missing_channels(session, now, self.runtime.settings.renew_before)
        self._started = True
        self._schedule()

    def _start_when_reachable(self, stop: threading.Event) -> bool:
        """The first beat and `start_up`, tried again while the database is away; False if stopped
        first. A worker started while its database restarted exited with the error, and nothing
        started it again unless a supervisor did."""
        while not stop.is_set():
            try:
                self.heartbeat.beat()
                self.start_up()
                return True
            except (OperationalError, InterfaceError) as err:
                log.warning("worker %s: the database is away at start (%s); trying again shortly", self.name, err.orig)
                stop.wait(START_PAUSE_SECONDS)
        return False

    def tick(self) -> None:
        """A heartbeat and one scheduler pass, each its own transaction. Cheap and idempotent."""
        self.heartbeat.beat()
        self._schedule()

    def _schedule(self) -> None:
        """Due renewals, lapsed channels, bounded logs, the day's quota plan; then connections nobody
        confirmed in time."""
        replan(self.runtime)
        now = self.runtime.clock.now()
        try:
            with transaction(self.runtime.sessions) as session:
                marked = schedule_renewals(session, now, self.runtime.settings.renew_before)
                expire_lapsed_channels(session, now)
                prune(session, self.runtime, now)
                if marked:
                    self.runtime.wakeup.notify_after_commit(session)
            # Its own transactions: a dropped connection's grant is revoked at Google in between.
            drop_unconfirmed(self.runtime)
        except SQLAlchemyError:
            log.exception("scheduler pass failed; will retry")

    def work_once(self, owner: str, stop: threading.Event | None = None) -> int:
        """Claim and do one calendar-list refresh or else one calendar sync, then due deliveries.

        One transaction claims and asks whether any delivery may be due, so a thread that finds
        nothing has spent one short transaction. Lists go first: they are rare and quick, and a
        backlog of calendars must not starve them.
        """
        rt = self.runtime
        claim, run, release, deliveries_due = self._claim(owner)
        done = 0
        if claim is not None:
            if claim.more_due or run is run_list_job:
                rt.wakeup.notify_local()  # more may be waiting: pass the wake-up on to an idle thread
            if stop is not None and stop.is_set():
                self._release(release, claim)
                return done
            try:
                run(rt, claim)
            finally:
                rt.budget.forget_prepaid()
            done += 1
        if deliveries_due and not (stop is not None and stop.is_set()):
            done += self._deliveries(owner)
        return done

    # Helpers ---------------------------------------------------------------------------------
    def _loop(self, owner: str, stop: threading.Event) -> None:
        """Passes until `stop`. A pass that failed is tried again after a short pause, not at the next
        wake-up: the wake-up that started it was spent, and its work would otherwise wait for a poll."""
        wakeup = self.runtime.wakeup
        may_hold = False  # a failed pass may have left this thread holding leases it does not know of
        while not stop.is_set():
            generation = wakeup.generation()
            try:
                if may_hold:
                    self._let_go(owner)
                    may_hold = False
                did = self.work_once(owner, stop)
            except (OperationalError, InterfaceError) as err:
                log.warning("worker thread %s: the database is away (%s); trying again shortly", owner, err.orig)
                may_hold = True
                stop.wait(ERROR_PAUSE_SECONDS)
                continue
            except Exception:
                log.exception("worker thread %s: unexpected failure", owner)
                may_hold = True
                stop.wait(ERROR_PAUSE_SECONDS)
                continue
            if not did:
                wakeup.wait(generation, POLL_SECONDS)
        if may_hold:  # stopping: the heartbeat's row goes, and a lease its owner keeps would last its term
            with contextlib.suppress(SQLAlchemyError):
                self._let_go(owner)

    def _let_go(self, owner: str) -> None:
        """Give back whatever `owner` holds: between passes a thread holds nothing, but a claim whose
        COMMIT was made and its answer lost leased work to it all the same (`leases.release_held`)."""
        with transaction(self.runtime.sessions) as session:
            released = release_held(session, owner) + release_held_deliveries(session, owner)
        if released:
            log.info("worker thread %s: gave back %d lease(s) a failed pass left it holding", owner, released)
            self.runtime.wakeup.notify_local()

    def _claim(self, owner: str) -> tuple[Claim | None, JobFn, ReleaseFn, bool]:
        rt = self.runtime
        settings = rt.settings
        hints = None
        lists_due = True
        postgres = is_postgres(rt.engine)
        if not postgres:  # SQLite: read before the claim's transaction, on no write lock
            with rt.sessions() as alone:
                statements_alone(alone)
                now = rt.clock.now()
                hints = self._hints(alone, now)
                ceiling = hints[1][0]
                due = may_be_due(alone, now, ceiling) if ceiling is not None else None
                if not due:  # nothing to claim: no transaction
                    return None, run_calendar_job, release_calendar, hints[0]
                lists_due = due.lists
        with transaction(rt.sessions) as session:
            now = rt.clock.now()
            # Only the kinds of work the quota budget has room for now (None: Google said wait).
            deliveries_due, (ceiling, first_syncs) = hints or self._hints(session, now)
            if ceiling is None:
                return None, run_calendar_job, release_calendar, deliveries_due
            if lists_due:  # owed to a notification or a new connection: first, they are rare and quick
                listed = self._claim_list(session, owner, now, min(ceiling, Priority.RENEWAL), deliveries_due)
                if listed is not None:
                    return listed
            upto = ceiling if first_syncs else min(ceiling, Priority.RENEWAL)
            tried = [(upto, Priority.WRITE)]
            claim = claim_calendar(session, owner, now, settings.lease, settings.renew_before, upto)
            if claim is None and upto < ceiling and ceiling >= Priority.RECONCILE:
                # The first syncs' share is spent (an onboarding): reconciliations go meanwhile.
                tried.append((ceiling, Priority.RECONCILE))
                claim = claim_calendar(
                    session, owner, now, settings.lease, settings.renew_before, ceiling, floor=Priority.RECONCILE
                )
            if claim is None and lists_due and ceiling >= Priority.RECONCILE:
                # A periodic refresh is a reconciliation: after every calendar owed sooner, not before.
                listed = self._claim_list(session, owner, now, ceiling, deliveries_due)
                if listed is not None:
                    return listed
            if claim is None and postgres and passed_by(session, now, ceiling, tried):
                rt.wakeup.wake_in(RELOOK_SECONDS)  # a row another transaction held: it is let go within moments
            if (
                claim is not None
                and claim.calendar is not None
                and not self._prepay(session, claim, claim.calendar.account_id, defer_calendar, now, in_turn=True)
            ):
                claim = None
            return claim, run_calendar_job, release_calendar, deliveries_due

    def _claim_list(
        self, session: Session, owner: str, now: datetime, ceiling: Priority, deliveries_due: bool
    ) -> tuple[Claim | None, JobFn, ReleaseFn, bool] | None:
        """A calendar list due in the classes up to `ceiling`, prepaid; None when there is none."""
        claim = claim_account_list(session, owner, now, self.runtime.settings.lease, ceiling)
        if claim is None:
            return None
        if self._prepay(session, claim, claim.id, defer_account_list, now):
            return claim, run_list_job, release_account_list, deliveries_due
        return None, run_list_job, release_account_list, deliveries_due

    def _hints(self, session: Session, now: datetime) -> tuple[bool, tuple[Priority | None, bool]]:
        """Whether a delivery may be due, and what the quota budget admits: reads the claim only
        filters by (the budget's take checks again under lock). On SQLite `_claim` reads them before
        its transaction: a claim holds the file's only write lock, which the notification intake
        waits for, and these reads were a third of its time."""
        return _deliveries_may_be_due(session, now), self.runtime.budget.admits(session)

    def _prepay(
        self, session: Session, claim: Claim, account_id: int, defer: DeferFn, now: datetime, *, in_turn: bool = False
    ) -> bool:
        """Take the job's first call in the claim's own transaction; put the job off if its user has no room.

        `in_turn` (a calendar): when the user's own budget refused it, the user's other due calendars
        are put off one call apart after it (`put_off_in_turn`), not each claimed and refused in turn.
        """
        budget = self.runtime.budget
        wait = budget.prepay(session, claim.priority, account_id)
        if wait > 0.0:
            QUOTA_WAITS.labels(claim.priority.name.lower()).inc()
            until = now + at_least(wait)
            defer(session, claim, until)
            spacing = budget.user_spacing()
            if in_turn and spacing is not None:
                put_off_in_turn(session, claim, account_id, until, at_least(spacing), now)
            self.runtime.wakeup.wake_in(wait)
            return False
        return True

    def _release(self, release_fn: ReleaseFn, claim: Claim) -> None:
        with transaction(self.runtime.sessions) as session:
            release_fn(session, claim)

    def _deliveries(self, owner: str) -> int:
        from calsync.webhooks.delivery import run_due_deliveries

        try:
            return int(run_due_deliveries(self.runtime, owner, limit=DELIVERY_BATCH) or 0)
        except (OperationalError, InterfaceError):
            raise  # the database away: the pass failed, and the thread gives back what it may hold
        except Exception:
            log.exception("webhook deliveries failed")
            return 0

    def _start_listener(self, stop: threading.Event) -> Listener | threading.Thread | None:
        """What wakes this process's threads for work committed by other processes."""
        if self.runtime.engine.dialect.name != "postgresql":
            peers = self.runtime.wakeup.peers
            return peers.listen(self.runtime.wakeup, stop) if peers is not None else None
        from calsync.work.listen import Listener

        engine = self.runtime.engine
        # This process's own NOTIFYs woke its threads already (at commit); only others' need passing on.
        listener = Listener(engine.url, self.runtime.wakeup, stop, ignore=lambda pid: is_own_backend(engine, pid))
        listener.start()
        return listener


def _deliveries_may_be_due(session: Session, now: datetime) -> bool:
    """Whether a webhook delivery is pending, due and unleased, or a subscription has feed rows to
    look at: a cheap look before the real claim."""
    return bool(session.execute(_DELIVERY_DUE, {"now": now, "stale_before": stale_before(now)}).scalar())
