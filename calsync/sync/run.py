"""Full and incremental sync of one calendar: each page of events is one transaction.

A page's Event rows, its Change rows and (on the last page) the new sync token commit together, so
a process killed at any instant re-lists from the token it still holds and finds, by comparing with
the mirror, that what it already wrote needs writing no more.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from google.oauth2.credentials import Credentials
from sqlalchemy import Update, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from calsync.accounts.connected import (
    credentials_from_stored,
    mark_reauth_required,
    save_if_refreshed,
)
from calsync.clock import utc
from calsync.errors import (
    AuthRevoked,
    GoogleApiError,
    LeaseLost,
    NotFoundError,
    SyncTokenExpired,
)
from calsync.feed.append import append_changes
from calsync.feed.cursor import newest_seq
from calsync.feed.lifecycle import record_first_sync
from calsync.feed.reads import written_through_api_since
from calsync.google.calendar import EVENTS_PAGE_SIZE, GoogleCalendar, decode_page
from calsync.metrics import EVENTS_SKIPPED, SYNC_SECONDS, SYNCS
from calsync.runtime import Runtime
from calsync.store.activity import RECENT, after_change, from_first_sync
from calsync.store.db import rows_affected, transaction
from calsync.store.models import Calendar, Event
from calsync.store.states import ChangeKind, Priority, SyncState
from calsync.sync.mirror import PageMirror
from calsync.sync.state import Activity, CalendarState
from calsync.sync.turns import page_transaction

log = logging.getLogger(__name__)

# What makes a calendar active (a first sync's snapshots do not).
_REAL_CHANGES = (ChangeKind.CREATED, ChangeKind.UPDATED, ChangeKind.DELETED)
# The calendar row's per-page updates go through Core: the ORM's bulk-update path costs more than the statement.
_CALENDARS = Calendar.__table__

Progress = Callable[[int, int | None], None]
# The caller's bookkeeping for a sync that succeeds (lease released, owed work settled): columns
# written with the last page, in its transaction, so no crash can fall between the two. The columns
# (SQL expressions of bound parameters, one object built once) and those parameters' values.
Finish = Callable[[datetime, Activity], tuple[dict[str, Any], dict[str, Any]]]


class SyncKind(StrEnum):
    """How a sync lists the calendar (also the `kind` label of `calsync_syncs_total`)."""

    FULL = "full"  # the first: everything, each event stored as a snapshot
    INCREMENTAL = "incremental"  # from the sync token: only what changed
    RESYNC = "resync"  # everything again (the token expired, or asked for), compared with the mirror


@dataclass(frozen=True)
class SyncResult:
    """What one sync did."""

    kind: SyncKind
    pages: int
    events_seen: int
    created: int
    updated: int
    deleted: int
    snapshots: int = 0


def sync_calendar(
    runtime: Runtime,
    calendar_id: int,
    *,
    full: bool = False,
    lease_owner: str | None = None,
    progress: Progress | None = None,
    page_size: int = EVENTS_PAGE_SIZE,
    start: CalendarState | None = None,
    finish: Finish | None = None,
    priority: Priority = Priority.NOTIFICATION,
) -> SyncResult:
    """Bring one calendar's mirror and diff log up to date with Google.

    Without a sync token (or with `full`) this lists everything; a 410 on the token clears it and
    does the same. Errors other than a 410 propagate for the worker to schedule around. `start` is
    the calendar as the claim read it (else it is read here); `finish` needs `lease_owner`. Every
    call is taken from the quota budget as `priority` (a sync nobody waits for passes that in).
    """
    started = time.monotonic()
    job = _SyncRun.load(
        runtime,
        calendar_id,
        lease_owner=lease_owner,
        progress=progress,
        page_size=page_size,
        start=start,
        priority=priority,
    )
    job.finish = finish
    if job.sync_token and not full:
        kind = SyncKind.INCREMENTAL
    else:
        kind = SyncKind.RESYNC if job.baseline_done else SyncKind.FULL
    try:
        try:
            result = job.run(kind)
        except SyncTokenExpired:
            if kind != SyncKind.INCREMENTAL:
                raise
            kind = SyncKind.RESYNC
            result = job.run(kind)
    except AuthRevoked as err:
        job.mark_revoked(err)
        SYNCS.labels(kind, "auth_revoked").inc()
        raise
    except Exception as err:
        if isinstance(err, GoogleApiError):
            try:
                job.keep_refreshed_token()
            except SQLAlchemyError:  # secondary: the Google error is the one the caller must see
                log.warning("calendar %s: could not store a refreshed token", calendar_id, exc_info=True)
        SYNCS.labels(kind, type(err).__name__).inc()
        raise
    SYNCS.labels(kind, "ok").inc()
    SYNC_SECONDS.labels(kind).observe(time.monotonic() - started)
    return result


@dataclass
class _SyncRun:
    """One sync of one calendar: the Google client, the lease, and the state kept between pages."""

    runtime: Runtime
    calendar_id: int
    account_id: int
    google_id: str
    sync_token: str | None
    baseline_done: bool
    credentials: Credentials
    lease_owner: str | None
    progress: Progress | None
    page_size: int
    token_before: str | None = None
    finish: Finish | None = None
    activity: Activity = field(default_factory=lambda: Activity(None, None))
    created_at: datetime | None = None
    feed_seq: int | None = None  # the feed's newest seq as the claim read it (see `run`)
    api: GoogleCalendar = field(init=False)
    # Totals over the whole job: an incremental cut short by a 410 still counts what it committed.
    pages: int = 0
    events_seen: int = 0
    counts: Counter[ChangeKind | None] = field(default_factory=Counter)
    # Events of this listing that could not be applied (id → why): see `_finish`.
    skipped: dict[str, str] = field(default_factory=dict)
    # A first listing's events updated within RECENT, and the newest `updated`: its starting rate.
    recent: int = 0
    newest: datetime | None = None

    @classmethod
    def load(
        cls,
        runtime: Runtime,
        calendar_id: int,
        *,
        lease_owner: str | None,
        progress: Progress | None,
        page_size: int,
        start: CalendarState | None = None,
        priority: Priority = Priority.NOTIFICATION,
    ) -> _SyncRun:
        if start is None:  # not claimed by a worker (the CLI, the first sync after consent): read the row
            with runtime.sessions() as session:
                cal = session.get(Calendar, calendar_id)
                if cal is None:
                    raise NotFoundError(f"no calendar with id {calendar_id}")
                start = CalendarState(
                    account_id=cal.account_id,
                    google_id=cal.google_id,
                    sync_token=cal.sync_token,
                    baseline_done=bool(cal.baseline_done),
                    credentials=cal.account.credentials,
                    created_at=utc(cal.created_at),
                    last_changed_at=utc(cal.last_changed_at),
                    activity=cal.activity,
                )
        creds = credentials_from_stored(runtime, start.credentials)
        job = cls(
            runtime=runtime,
            calendar_id=calendar_id,
            account_id=start.account_id,
            google_id=start.google_id,
            sync_token=start.sync_token,
            baseline_done=start.baseline_done,
            credentials=creds,
            lease_owner=lease_owner,
            progress=progress,
            page_size=page_size,
            token_before=creds.token,
            activity=Activity(start.last_changed_at, start.activity),
            created_at=start.created_at,
            feed_seq=start.feed_seq,
        )
        budget = runtime.budget.spender(start.account_id, priority)
        job.api = GoogleCalendar(creds, runtime.settings.calendar_api_endpoint, budget=budget)
        return job

    def run(self, kind: SyncKind) -> SyncResult:
        """List every page (from the token when incremental) and commit each one with its changes."""
        token = self.sync_token if kind == SyncKind.INCREMENTAL else None
        gen: int | None = None
        fresh = False  # a full listing into a mirror that held no row of this calendar as it began
        deferred: list[dict[str, Any]] = []
        # An incremental listing may begin before a write through calsync reaches Google and be applied
        # after the write's commit: the feed's position before it (read by the worker's claim, or here
        # for a sync nobody claimed) tells the writes it may not show.
        began_at = None
        if token is not None:
            began_at = self.feed_seq if self.feed_seq is not None else self._feed_position()
        with closing(self._pages(token)) as pages:
            for page, credentials, committing in pages:
                next_sync_token = page.get("nextSyncToken")
                items: list[dict[str, Any]] = list(page.get("items") or [])
                # A write through calsync to this calendar commits before or after this page, never amid it.
                with page_transaction(self.runtime, self.calendar_id) as session:
                    now = self.runtime.clock.now()
                    self._extend_lease(session, now)
                    if token is None and gen is None:
                        gen, fresh = self._start_full_sync(session)
                    skipped_before = len(self.skipped)
                    written = (
                        written_through_api_since(session, self.calendar_id, began_at) if began_at is not None else None
                    )
                    mirror = PageMirror(
                        session,
                        self.calendar_id,
                        gen=gen,
                        first=not self.baseline_done,
                        fresh=fresh,
                        skipped=self.skipped,
                        written=written,
                    )
                    mirror.apply(items, deferred)
                    if not self.baseline_done:
                        self._count_recent(items, now)
                    if next_sync_token:
                        mirror.finish(deferred)
                        if gen is not None and not fresh:
                            mirror.sweep()
                        changed = self._changed() or any(c.kind in _REAL_CHANGES for c in mirror.changes)
                        self._finish(session, next_sync_token if not self.skipped else token, now, changed)
                    save_if_refreshed(session, self.runtime, self.account_id, credentials, self.token_before)
                    append_changes(session, mirror.changes, now)
                    if next_sync_token and not self.baseline_done:
                        record_first_sync(session, self.calendar_id, now)
                    committing()
                self.token_before = credentials.token
                EVENTS_SKIPPED.inc(len(self.skipped) - skipped_before)
                self.counts.update(change.kind for change in mirror.changes)
                self.pages += 1
                self.events_seen += len(items)
                if self.progress is not None:
                    self.progress(self.events_seen, None)
                if next_sync_token:
                    self.sync_token = next_sync_token if not self.skipped else token
                    self.baseline_done = True
        return SyncResult(
            kind=kind,
            pages=self.pages,
            events_seen=self.events_seen,
            created=self.counts[ChangeKind.CREATED],
            updated=self.counts[ChangeKind.UPDATED],
            deleted=self.counts[ChangeKind.DELETED],
            snapshots=self.counts[ChangeKind.SNAPSHOT],
        )

    def _pages(self, sync_token: str | None) -> Generator[tuple[dict[str, Any], Credentials, Callable[[], None]]]:
        """The pages of one listing, each with a copy of the credentials and a `committing` signal.

        Page N names page N+1, so its request goes out on a background thread as soon as page N is
        here and travels while page N is written. Decoding it holds the GIL for milliseconds on end,
        which would stall the writer's own Python work, so the thread waits for `committing()` (the
        writer calls it just before its commit, which lets go of the GIL while the database works)
        and decodes then. One page ahead at most: memory stays that of two pages however long the
        calendar. The credentials are copied while no request is in flight, so a token refreshed by
        the request ahead is stored with the page after it, never half-read. The last page carries
        the sync token; a listing that ends without one is an error before any write.
        """

        def body(page_token: str | None) -> bytes:
            return self.api.events_page_body(
                self.google_id, sync_token=sync_token, page_token=page_token, max_results=self.page_size
            )

        def fetch(page_token: str, decode: threading.Event) -> dict[str, Any]:
            fetched = body(page_token)
            decode.wait()
            return decode_page(fetched)

        page = decode_page(body(None))
        committing = threading.Event()
        # Leaving the block (the caller failed or stopped) waits for a request still in flight, so the
        # client is never used by two threads at once (the resync after a 410 reuses it).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calsync-page") as pool:
            try:
                while True:
                    page_token = page.get("nextPageToken")
                    if not page_token and not page.get("nextSyncToken"):
                        raise GoogleApiError("events.list ended without nextSyncToken", reason="noSyncToken")
                    credentials = copy.copy(self.credentials)
                    committing = threading.Event()
                    ahead = pool.submit(fetch, page_token, committing) if page_token else None
                    yield page, credentials, committing.set
                    if ahead is None:
                        return
                    committing.set()
                    page = ahead.result()
            finally:
                committing.set()  # a page that failed or was abandoned must not leave the thread waiting

    def _feed_position(self) -> int:
        with self.runtime.sessions() as session:
            return newest_seq(session)

    def mark_revoked(self, err: AuthRevoked) -> None:
        """A dead grant must be visible; recorded in its own transaction before the error goes on."""
        with transaction(self.runtime.sessions) as session:
            mark_reauth_required(session, self.account_id, str(err), self.runtime.clock.now())

    def keep_refreshed_token(self) -> None:
        """A token refreshed before a failed call is still good: keep it so the retry does not refresh."""
        if self.credentials.token == self.token_before:
            return
        with transaction(self.runtime.sessions) as session:
            save_if_refreshed(session, self.runtime, self.account_id, self.credentials, self.token_before)
        self.token_before = self.credentials.token

    # Inside a page's transaction --------------------------------------------------------------
    def _extend_lease(self, session: Session, now: datetime) -> None:
        """Extend our lease, or stop writing if another worker owns the calendar now."""
        if self.lease_owner is None:
            return
        until = now + self.runtime.settings.lease
        result = session.execute(
            _EXTEND_LEASE, {"leased_id": self.calendar_id, "leased_by": self.lease_owner, "until": until}
        )
        if rows_affected(result) == 0:
            raise self._lease_lost()

    def _start_full_sync(self, session: Session) -> tuple[int, bool]:
        """A new generation: events the listing stamps with it are present; older ones are gone.

        Also whether the mirror is empty (fresh): then every row at the end of this listing was
        written by it, so the closing sweep (a scan of the calendar's rows) would find nothing, and
        ids need no lookup before their insert (see `PageMirror.apply`).
        """
        session.execute(
            update(Calendar)
            .where(Calendar.id == self.calendar_id)
            .values(full_sync_gen=Calendar.full_sync_gen + 1, sync_token=None)
            .execution_options(synchronize_session=False)
        )
        gen = int(session.scalar(select(Calendar.full_sync_gen).where(Calendar.id == self.calendar_id)) or 0)
        mirrored = session.scalar(select(Event.id).where(Event.calendar_id == self.calendar_id).limit(1))
        return gen, mirrored is None

    def _count_recent(self, items: list[dict[str, Any]], now: datetime) -> None:
        """Count a first listing's recently updated events (its starting rate, calsync.store.activity)."""
        since = now - timedelta(seconds=RECENT)
        for item in items:
            updated = _instant(item.get("updated"))
            if updated is None:
                continue
            updated = min(updated, now)
            if updated >= since:
                self.recent += 1
            if self.newest is None or updated > self.newest:
                self.newest = updated

    def _changed(self) -> bool:
        return any(self.counts[kind] for kind in _REAL_CHANGES)

    def _finish(self, session: Session, next_sync_token: str | None, now: datetime, changed: bool) -> None:
        """The listing's end: the new sync token, and the calendar's state.

        When some event could not be applied, the token the listing began from is kept instead
        (none after a full listing): the next sync lists that event again, and everything applied
        meanwhile compares equal to the mirror and writes nothing twice. The calendar says which
        events wait, as its error, until a sync applies every one.
        """
        values: dict[str, Any] = {
            "sync_token": next_sync_token,
            "baseline_done": True,
            "last_synced_at": now,
            "sync_state": SyncState.SYNCED,
            "last_error": None,
            "next_reconcile_at": now + self.runtime.settings.reconcile_every,
        }
        activity = self.activity
        if changed and self.baseline_done:  # (the first listing is no change)
            values["last_changed_at"] = now
            rate = activity.activity
            if self.created_at is not None:
                last = activity.last_changed_at
                rate = values["activity"] = after_change(
                    rate,
                    last_change=None if last is None else last.timestamp(),
                    created=self.created_at.timestamp(),
                    now=now.timestamp(),
                )
            activity = Activity(now, rate)
        elif not self.baseline_done and activity.activity is None:
            # The first listing: its events' `updated` give the calendar a rate from the start. Its
            # first reconciliation still goes to its phase slot (no last change passed on), so
            # calendars connected together stay spread.
            values["last_changed_at"] = self.newest
            rate = values["activity"] = from_first_sync(self.recent, now=now.timestamp())
            activity = Activity(None, rate)
        finished, params = self.finish(now, activity) if self.finish is not None else (_UNFINISHED, {})
        if self.skipped:
            values.update(sync_state=SyncState.ERROR, last_error=skipped_error(self.skipped))
        stmt = _finish_statement(tuple(values), finished, bool(self.skipped))
        params.update({f"set_{name}": value for name, value in values.items()})
        result = session.execute(stmt, {**params, "finished_id": self.calendar_id, "finished_by": self.lease_owner})
        if self.finish is None:
            return
        row = result.first()  # the calendar's new due time (RETURNING); no row: the lease was not ours
        if row is None:
            raise self._lease_lost()
        # One more sync owed to a notification that came during this one waits for the minimum
        # interval: this process looks at that time, not at its next poll.
        if row.due_at is not None:
            self.runtime.wakeup.wake_in((row.due_at - now).total_seconds())

    def _lease_lost(self) -> LeaseLost:
        return LeaseLost(f"calendar {self.calendar_id}: lease no longer held by {self.lease_owner}")


_EXTEND_LEASE = (
    update(_CALENDARS)
    .where(_CALENDARS.c.id == bindparam("leased_id"), _CALENDARS.c.lease_owner == bindparam("leased_by"))
    .values(lease_until=bindparam("until", type_=_CALENDARS.c.lease_until.type))
)
# A sync's closing UPDATE by the columns it sets: a page's statements are built once, not per page
# (building one cost several times running it, inside the transaction that holds SQLite's write lock).
_FINISH_STATEMENTS: dict[tuple[tuple[str, ...], int, bool], tuple[dict[str, Any], Update]] = {}
_UNFINISHED: dict[str, Any] = {}  # no caller's columns (one object, so it is cached like the caller's)


def _finish_statement(names: tuple[str, ...], finished: dict[str, Any], skipped: bool) -> Update:
    """UPDATE of one calendar setting `names` from `set_<name>` parameters, then `finished`'s columns
    (guarded by the lease when there are any); a sync that skipped events keeps its own state and error."""
    key = (names, id(finished), skipped)
    cached = _FINISH_STATEMENTS.get(key)
    if cached is not None and cached[0] is finished:
        return cached[1]
    columns: dict[str, Any] = {name: bindparam(f"set_{name}", type_=_CALENDARS.c[name].type) for name in names}
    kept = ("sync_state", "last_error") if skipped else ()
    columns.update({name: column for name, column in finished.items() if name not in kept})
    stmt = update(_CALENDARS).where(_CALENDARS.c.id == bindparam("finished_id"))
    if finished:
        stmt = stmt.where(_CALENDARS.c.lease_owner == bindparam("finished_by")).returning(_CALENDARS.c.due_at)
    built = stmt.values(**columns)
    _FINISH_STATEMENTS[key] = (finished, built)
    return built


def _instant(value: Any) -> datetime | None:
    """An RFC 3339 time from Google's JSON (None when missing or malformed)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def skipped_error(skipped: dict[str, str]) -> str:
    """The calendar's `last_error` while some listed events wait: how many, and the first few with why."""
    shown = "; ".join(f"{event_id}: {why}" for event_id, why in list(skipped.items())[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return f"{len(skipped)} event(s) could not be applied and wait for the next sync: {shown}{more}"[:2000]
