"""Writes through calsync to Google: create, patch and delete an event for an app.

Each write is sent to Google with the account's own grant; Google's answer (the new version) then
goes into the mirror and the feed in one commit, as a row of origin `api`. When the write returns,
reads of the mirror already show it, and the sync that Google's notification of the same write
causes finds the etag the mirror holds and adds no second row (`PageMirror._holds`).

A write and the syncs of its calendar take turns (`calsync.sync.turns`): the sync woken by the
write's own notification cannot commit the write's version before the write does.

Conflicts are Google's to judge: `If-Match` goes to Google as given, since the mirror may be a
notification behind. On 412 the event's current version is fetched, mirrored (a change calsync
had not seen yet, so of origin `google`) and handed back to the app.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from google.oauth2.credentials import Credentials
from sqlalchemy import Executable, Select, bindparam, func, select, true
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased

from calsync.accounts.connected import credentials_from_stored, mark_reauth_required, save_if_refreshed
from calsync.errors import (
    AuthRevoked,
    CalendarHeld,
    Duplicate,
    Forbidden,
    GoogleApiError,
    GoogleNotFound,
    InsufficientScope,
    InvalidWrite,
    NotFoundError,
    PreconditionFailed,
    QuotaWait,
    TransientGoogleError,
    WriteConflict,
)
from calsync.feed.append import append_changes
from calsync.feed.cursor import newest_seq
from calsync.feed.reads import reconnect_hint
from calsync.google.calendar import Connections, GoogleCalendar
from calsync.readmodels.reads import AmbiguousCalendar
from calsync.runtime import Runtime
from calsync.store.db import compiled_for_postgres, transaction
from calsync.store.models import Account, Calendar, Change, Event
from calsync.store.quota import LockedRows, locking_rows
from calsync.store.states import AccountStatus, Origin, Priority
from calsync.sync import idempotency, turns
from calsync.sync.diff import CANCELLED
from calsync.sync.mirror import PageMirror

# Scopes that let calsync write events (`calendar.events` beside the read scope, or `calendar`).
WRITE_SCOPES = frozenset(
    {"https://www.googleapis.com/auth/calendar", "https://www.googleapis.com/auth/calendar.events"}
)
SEND_UPDATES = ("all", "externalOnly", "none")
ETAG_MAX = 200
_ETAG = re.compile(r'\*|(W/)?"[!#-\[\]-~]*"')

_T = TypeVar("_T")


@dataclass(frozen=True)
class WriteResult:
    """The event as mirrored after the write (None once deleted) and the feed seq that holds it.

    `replayed` is True when an Idempotency-Key named a creation already committed: nothing was sent.
    """

    event: dict[str, Any] | None
    seq: int
    replayed: bool = False


def create_event(
    runtime: Runtime,
    calendar: int | CalendarName,
    body: Any,
    *,
    idempotency_key: str | None = None,
    send_updates: str | None = None,
) -> WriteResult:
    """events.insert; with a key, the same key and body make one event however often they are sent."""
    body = _check_body(body)
    _check_send_updates(send_updates)
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    if key is not None and "id" in body:
        raise InvalidWrite("id", "id: the event id is derived from the Idempotency-Key; give one or the other")
    with _Target.ready(runtime, calendar, key=key, body=body) as target:
        claim = target.claim
        if claim is not None:
            if claim.seq is None and claim.found:
                claim = _settled(target, claim)
            if claim.seq is not None:
                return _replay(target, claim)
            body = {**body, "id": claim.event_id}
        api = target.api
        try:
            event = target.google(runtime, lambda: api.insert_event(target.google_id, body, send_updates=send_updates))
        except Duplicate:
            if claim is None:
                raise
            # An earlier attempt with this key was made in Google, and its answer was lost: fetch it.
            event = _made_earlier(runtime, target, claim.event_id)
        except (GoogleApiError, InsufficientScope, QuotaWait) as err:
            # Refused outright, for the scope, or put off by the quota: nothing was made, the key is free again.
            if claim is not None and not isinstance(err, TransientGoogleError):
                idempotency.release(runtime, target.calendar_id, claim.key, claim.body_hash)
            raise
        return _commit(runtime, target, event, key=claim.key if claim else None)


def _settled(target: _Target, claim: idempotency.Claim) -> idempotency.Claim:
    """The key as it stands now that the calendar's turn is this write's: a twin that held it, in
    flight when it was read, has committed since (on SQLite the turn is taken after the claim). Its
    creation is then replayed, not sent again to meet Google's 409."""
    with target.session.begin():
        seq = idempotency.recorded_seq(target.session, target.calendar_id, claim.key)
    return replace(claim, seq=seq)


def _made_earlier(runtime: Runtime, target: _Target, event_id: str) -> dict[str, Any]:
    """The event an earlier attempt of this creation made; a tombstone when it is gone from Google
    since (deleted and purged): the key's creation is then answered as made and deleted, not as a
    404 that every retry would meet again."""
    api = target.api
    try:
        return target.google(runtime, lambda: api.get_event(target.google_id, event_id))
    except GoogleNotFound:
        return {"id": event_id, "status": CANCELLED}


def patch_event(
    runtime: Runtime,
    calendar: int | CalendarName,
    event_id: str,
    changes: Any,
    *,
    if_match: str | None = None,
    send_updates: str | None = None,
) -> WriteResult:
    """events.patch (an instance of a series by its instance id); `if_match` is checked by Google."""
    changes = _check_body(changes)
    _check_send_updates(send_updates)
    _check_event_id(event_id)
    _check_if_match(if_match)
    with _Target.ready(runtime, calendar) as target:
        api = target.api
        try:
            event = target.google(
                runtime,
                lambda: api.patch_event(
                    target.google_id, event_id, changes, if_match=if_match, send_updates=send_updates
                ),
            )
        except PreconditionFailed as err:
            raise _conflict(runtime, target, event_id) from err
        return _commit(runtime, target, event)


def delete_event(
    runtime: Runtime,
    calendar: int | CalendarName,
    event_id: str,
    *,
    if_match: str | None = None,
    send_updates: str | None = None,
) -> WriteResult:
    """events.delete; an occurrence of a series stays mirrored as Google keeps it (a cancelled exception)."""
    _check_send_updates(send_updates)
    _check_event_id(event_id)
    _check_if_match(if_match)
    with _Target.ready(runtime, calendar) as target:
        return _delete(runtime, target, event_id, if_match=if_match, send_updates=send_updates)


def _delete(
    runtime: Runtime,
    target: _Target,
    event_id: str,
    *,
    if_match: str | None,
    send_updates: str | None,
) -> WriteResult:
    """`delete_event` within the calendar's turn."""
    api = target.api
    try:
        target.google(
            runtime,
            lambda: api.delete_event(target.google_id, event_id, if_match=if_match, send_updates=send_updates),
        )
    except PreconditionFailed as err:
        raise _conflict(runtime, target, event_id) from err
    with target.session.begin():
        row = _mirrored(target.session, target.calendar_id, event_id)
        single = row is not None and row.recurring_event_id is None
    tombstone: dict[str, Any] = {"id": event_id, "status": CANCELLED}
    if not single:  # an occurrence stays, cancelled: mirror Google's own version of it
        with contextlib.suppress(GoogleNotFound):  # gone for good: the minimal tombstone will do
            tombstone = target.google(runtime, lambda: api.get_event(target.google_id, event_id))
    return _commit(runtime, target, tombstone)


# The account and calendar a write acts for ---------------------------------------------------------
@dataclass(frozen=True)
class CalendarName:
    """A calendar as an app names it: its Google id, and its account's email where accounts share it."""

    google_id: str
    account_email: str | None = None


@dataclass
class _Target:
    """A write's calendar, its account's grant, its key's claim, its Google client, and the session
    (on one connection for the whole write) of its two transactions."""

    calendar_id: int
    google_id: str
    account_id: int
    email: str
    ref: str | None
    stored_credentials: bytes
    session: Session
    claim: idempotency.Claim | None = None
    credentials: Credentials | None = None
    token_before: str | None = None
    turns_held: list[int] | None = None  # PostgreSQL: the turns this connection holds, till `release`
    quota_rows: LockedRows | None = None  # PostgreSQL: the budget's rows, locked by the first statement
    _api: GoogleCalendar | None = None

    @classmethod
    @contextlib.contextmanager
    def ready(
        cls,
        runtime: Runtime,
        calendar: int | CalendarName,
        *,
        key: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> Iterator[_Target]:
        """The calendar's turn for the block; the calendar, its account and the key's claim, read and
        committed in one transaction with the write's first Google call taken from the budget
        (prepaid, at the priority of writes); then a client over a kept-alive connection.
        InsufficientScope unless the grant lets calsync write; IdempotencyKeyReused for a key held
        by another body.

        One database connection serves the whole write: both transactions, and on PostgreSQL the
        turn, which is taken by the transaction's first statement (the read of the calendar), so it
        costs no round trip and no connection of its own. One transaction, not three (the read, the
        claim, the budget's take): each commit and round trip is latency added to Google's own. A
        call the block does not make is not left credited to the thread.
        """
        digest = idempotency.body_hash(body or {}) if key is not None else None
        postgres = runtime.engine.dialect.name == "postgresql"
        locked: list[int] = []
        prepared = False
        with runtime.engine.connect() as connection:
            try:
                with runtime.sessions(bind=connection) as session, contextlib.ExitStack() as stack:
                    held = locked if postgres else None
                    try:
                        target = cls._prepare(runtime, session, calendar, key, digest, held)
                    except OperationalError as err:
                        if turns.is_lock_timeout(err):
                            raise turns.busy() from err
                        raise
                    prepared = True
                    target.turns_held = held
                    if not postgres:  # SQLite: the turn after the key's claim, which a refusal frees
                        try:
                            stack.enter_context(turns.turn(runtime, target.calendar_id, turns.TURN_WAIT))
                        except CalendarHeld:
                            claim = target.claim
                            if claim is not None and not claim.found:  # ours, not a twin's in flight
                                idempotency.release(runtime, target.calendar_id, claim.key, claim.body_hash)
                            raise
                    http = stack.enter_context(_CONNECTIONS.lend())
                    target.credentials = credentials_from_stored(runtime, target.stored_credentials)
                    target.token_before = target.credentials.token
                    budget = runtime.budget.spender(target.account_id, Priority.WRITE)  # first in line for the quota
                    target._api = GoogleCalendar(
                        target.credentials, runtime.settings.calendar_api_endpoint, budget=budget, http=http
                    )
                    yield target
            finally:
                runtime.budget.forget_prepaid()
                if postgres and not prepared:  # the first statement may have taken a turn it never reported
                    turns.release_all(connection)
                else:
                    turns.release(connection, locked)

    @classmethod
    def _prepare(
        cls,
        runtime: Runtime,
        session: Session,
        calendar: int | CalendarName,
        key: str | None,
        digest: str | None,
        locked: list[int] | None,
    ) -> _Target:
        with session.begin():
            target = cls._read(runtime, session, calendar, locked)
            if key is not None and digest is not None:
                event_id = idempotency.derived_event_id(target.calendar_id, target.google_id, key, digest)
                target.claim = idempotency.claim(
                    session, target.calendar_id, key, digest, event_id, runtime.clock.now()
                )
                if target.claim.seq is not None:
                    return target  # a replay: nothing will be sent
            runtime.budget.prepay(session, Priority.WRITE, target.account_id, locked=target.quota_rows)
            return target

    @classmethod
    def _read(
        cls,
        runtime: Runtime,
        session: Session,
        calendar: int | CalendarName,
        locked: list[int] | None,
    ) -> _Target:
        """The calendar and its account in one statement. On PostgreSQL (`locked` given) the same
        statement takes the calendar's turn, locks and reads the quota budget's rows that the
        write's call takes from, and lets the transaction's commit not wait for the disk. Every
        calendar it returns is locked (no LIMIT: a row left out might be locked).

        Nothing this transaction writes needs the disk: a crash of the database may lose the
        budget's take (one call uncounted) or the key's claim. A retry then claims the key again,
        and the event id derived from it makes Google answer 409 if the first attempt made the
        event: one event still, which the retry fetches."""
        by_name = isinstance(calendar, CalendarName)
        params: dict[str, Any] = {"calendar": calendar}
        if isinstance(calendar, CalendarName):
            params = {"google_id": calendar.google_id, "email": calendar.account_email}
        lock = locked is not None
        if lock:
            params.update(turns.lock_timeout_param())
        statement = _target_query(by_name, by_name and params["email"] is not None, lock)
        rows = session.execute(statement, params).all()
        if locked is not None:
            locked.extend(row[0] for row in rows)
        if not rows:
            if isinstance(calendar, CalendarName):
                owner = f" of account {calendar.account_email}" if calendar.account_email else ""
                raise NotFoundError(f"no calendar {calendar.google_id!r}{owner}")
            raise NotFoundError(f"no calendar with id {calendar}")
        if len(rows) > 1:
            assert isinstance(calendar, CalendarName)
            raise AmbiguousCalendar(
                f"calendar {calendar.google_id!r} belongs to {len(rows)} accounts: add account=EMAIL"
            )
        cal_id, google_id, account_id, email, ref, credentials, status, scopes = rows[0][:8]
        target = cls(cal_id, google_id, account_id, email, ref, credentials, session)
        if lock:
            target.quota_rows = rows[0].quota_rows
        if status != AccountStatus.ACTIVE:
            raise InsufficientScope(
                f"Google no longer lets calsync act for {target.email} ({status}): the user must connect again",
                reconnect=reconnect_hint(target.ref),
            )
        if not set(scopes or []) & WRITE_SCOPES:
            raise target.insufficient_scope(runtime)
        return target

    @property
    def api(self) -> GoogleCalendar:
        assert self._api is not None, "a client exists only within `_Target.ready`"
        return self._api

    def insufficient_scope(self, runtime: Runtime) -> InsufficientScope:
        if not set(runtime.settings.google_scopes) & WRITE_SCOPES:
            message = (
                "writing is off in this calsync: its operator must add "
                "https://www.googleapis.com/auth/calendar.events to CALSYNC_GOOGLE_SCOPES, "
                f"then {self.email} must connect again"
            )
        else:
            message = f"{self.email} connected before writing was turned on: the user must consent again"
        return InsufficientScope(message, reconnect=reconnect_hint(self.ref))

    def google(self, runtime: Runtime, call: Callable[[], _T]) -> _T:
        """Every Google call of a write goes through here (one place for the quota budget, where
        writes go first). A dead grant is recorded; a grant without the scope is the app's 403."""
        try:
            return call()
        except AuthRevoked as err:
            with transaction(runtime.sessions) as session:
                mark_reauth_required(session, self.account_id, str(err), runtime.clock.now())
            raise InsufficientScope(
                f"Google no longer lets calsync act for {self.email}: the user must connect again",
                reconnect=reconnect_hint(self.ref),
            ) from err
        except Forbidden as err:
            if err.reason in ("insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"):
                raise self.insufficient_scope(runtime) from err
            raise

    def keep_token(self, session: Session, runtime: Runtime) -> None:
        if self.credentials is not None:
            save_if_refreshed(session, runtime, self.account_id, self.credentials, self.token_before)


_CAL, _ACC = Calendar.__table__, Account.__table__
_CALENDAR_ACCOUNT = _CAL.join(_ACC, _CAL.c.account_id == _ACC.c.id)


@functools.cache
def _target_query(by_name: bool, by_email: bool, lock: bool) -> Executable:
    """`_Target._read`'s statement, built once per form (building one costs more than running it).

    On the tables, not the ORM classes: the session runs such a statement as plain Core, where one
    naming ORM classes goes through the ORM's execution layer at several times the CPU per statement
    (the same goes for the write's other statements here, in `idempotency` and in `append_changes`).
    """
    columns: list[Any] = [
        _CAL.c.id,
        _CAL.c.google_id,
        _ACC.c.id,
        _ACC.c.email,
        _ACC.c.ref,
        _ACC.c.credentials,
        _ACC.c.status,
        _ACC.c.scopes,
    ]
    if lock:
        columns.append(turns.lock_timeout())  # first: for the turn and the budget's rows after it
        columns.append(turns.take_turn(_CAL.c.id))
        columns.append(locking_rows(_ACC.c.id).label("quota_rows"))
        columns.append(func.set_config("synchronous_commit", "off", True))
    if by_name:
        found = [_CAL.c.google_id == bindparam("google_id")]
        if by_email:
            found.append(_ACC.c.email == bindparam("email"))
    else:
        found = [_CAL.c.id == bindparam("calendar")]
    return (
        select(*columns).select_from(_CALENDAR_ACCOUNT).where(_CAL.c.removed_at.is_(None), *found).order_by(_CAL.c.id)
    )


# The write's own commit reads the calendar's generation, whether a sync of it may be listing now (a
# worker holds its lease), and its account's `ref`.
_LISTING = _CAL.c.lease_owner.is_not(None)
_GENERATION = (
    select(_CAL.c.full_sync_gen, _LISTING, _ACC.c.ref)
    .select_from(_CALENDAR_ACCOUNT)
    .where(_CAL.c.id == bindparam("calendar"))
)


def _generation_handing_over() -> Select[Any]:
    """PostgreSQL: `_GENERATION`, the event's mirrored row (or none), and the hand-over of the
    calendar's turn to the commit's transaction, in one statement (each is a round trip otherwise).

    The row is probed as the mirror's lookup does (`mirror._by_ids_pg`): a LATERAL with LIMIT 1,
    answered from the unique index whatever the table's statistics say.
    """
    calendar = bindparam("calendar", type_=_CAL.c.id.type)
    probe = (
        select(Event)
        .where(Event.calendar_id == calendar, Event.google_id == bindparam("event_id", type_=Event.google_id.type))
        .limit(1)
        .lateral("probe")
    )
    row = aliased(Event, probe)
    return compiled_for_postgres(
        select(_CAL.c.full_sync_gen, _LISTING, _ACC.c.ref, turns.hand_over_turn(calendar), row)
        .select_from(_CALENDAR_ACCOUNT)
        .outerjoin(probe, true())
        .where(_CAL.c.id == calendar)
    )


_GENERATION_HANDING_OVER = _generation_handing_over()


# Kept-alive connections to Google, shared by the process's writes.
_CONNECTIONS = Connections()


# One commit: the mirror, the feed, the key ------------------------------------------------------------
def _commit(
    runtime: Runtime, target: _Target, event: dict[str, Any], *, key: str | None = None, origin: Origin = Origin.API
) -> WriteResult:
    """Google's version into the mirror and the feed (rows of `origin`), in one transaction.

    Runs within the calendar's turn, which every sync page's transaction takes too: a sync and a
    write of the same calendar never interleave their reads and writes, and the full-sync
    generation read here cannot move meanwhile (only a page starts a full sync). So the calendar
    row is not locked: the write does not wait on the worker's own commits of that row (its claim
    of the job, its outcome).

    While a worker holds the calendar's lease, the written row is stamped with the next generation:
    a full sync that listed before the write (and so does not show it) cannot sweep it away. Otherwise
    with the current one, so the next full sync sweeps it like any row if Google no longer has it.
    """
    session = target.session
    session.expunge_all()  # rows read by an earlier transaction of this write are read again
    held = target.turns_held if target.turns_held and target.calendar_id in target.turns_held else None
    with session.begin():
        now = runtime.clock.now()
        if held is not None:
            params = {"calendar": target.calendar_id, "event_id": event["id"]}
            gen, listing, ref, handed, row = session.execute(_GENERATION_HANDING_OVER, params).one()
            if handed:
                held.remove(target.calendar_id)  # this transaction's end gives the turn back
        else:
            gen, listing, ref = session.execute(_GENERATION, {"calendar": target.calendar_id}).one()
        mirror = PageMirror(session, target.calendar_id, gen=int(gen or 0) + (1 if listing else 0))
        if held is not None:
            mirror.known(event["id"], row)
        mirror.apply([event], [])
        for change in mirror.changes:
            change.account_id = target.account_id
            change.origin = origin
            change.idempotency_key = key if origin == Origin.API else None
        target.keep_token(session, runtime)
        append_changes(session, mirror.changes, now, refs={target.account_id: ref})
        session.flush()
        seq = max((c.seq for c in mirror.changes), default=0) or _latest_seq(session, target, event["id"], key)
        if key is not None and not mirror.changes:  # a row of the feed with the key marks it itself
            idempotency.record(session, target.calendar_id, key, seq)
        return WriteResult(_as_mirrored(session, target, mirror, event), seq)


def _as_mirrored(session: Session, target: _Target, mirror: PageMirror, event: dict[str, Any]) -> dict[str, Any] | None:
    """The event's row after the commit: the version its last feed row wrote (no read), or, when
    the mirror held it already (or kept it out), the row as it stands."""
    written = [c for c in mirror.changes if c.event_id == event["id"]]
    if written:
        after = written[-1].after
        return dict(after) if after is not None else None
    row = _mirrored(session, target.calendar_id, event["id"])
    return dict(row.data) if row is not None else _unless_cancelled(event)


def _conflict(runtime: Runtime, target: _Target, event_id: str) -> WriteConflict:
    """Google's 412: fetch the event as it is now, mirror it, and give it to the app."""
    api = target.api
    try:
        current: dict[str, Any] | None = target.google(runtime, lambda: api.get_event(target.google_id, event_id))
    except GoogleNotFound:
        current = None
    if current is not None:
        current = _commit(runtime, target, current, origin=Origin.GOOGLE).event
    return WriteConflict(
        "the event changed since the version named by If-Match: Google left it as it is (see `current`)",
        current=current,
    )


def _replay(target: _Target, claim: idempotency.Claim) -> WriteResult:
    """A key whose creation is committed: the same event (its version at that seq), nothing sent.

    The row at that seq is the creation's only when it is this calendar's row of this event: a
    creation that wrote no row of its own (the mirror held it already, or it was gone when fetched)
    is marked with the feed's position at its commit, and the row there may be anyone's."""
    assert claim.seq is not None
    session = target.session
    with session.begin():
        change = session.get(Change, claim.seq)
        if (
            change is not None
            and change.after is not None
            and change.calendar_id == target.calendar_id
            and change.event_id == claim.event_id
        ):
            return WriteResult(dict(change.after), claim.seq, replayed=True)
        row = _mirrored(session, target.calendar_id, claim.event_id)
        return WriteResult(dict(row.data) if row is not None else None, claim.seq, replayed=True)


def _latest_seq(session: Session, target: _Target, event_id: str, key: str | None) -> int:
    """The write changed nothing the mirror did not hold (a twin of this write committed it): its seq."""
    if key is not None:
        recorded = idempotency.recorded_seq(session, target.calendar_id, key)
        if recorded is not None:
            return recorded
    found = session.scalar(
        select(func.max(Change.seq)).where(Change.calendar_id == target.calendar_id, Change.event_id == event_id)
    )
    return int(found) if found is not None else newest_seq(session)


def _mirrored(session: Session, calendar_id: int, event_id: str) -> Event | None:
    return session.scalar(select(Event).where(Event.calendar_id == calendar_id, Event.google_id == event_id))


def _unless_cancelled(event: dict[str, Any]) -> dict[str, Any] | None:
    return None if event.get("status") == CANCELLED else event


# Checks of the request -------------------------------------------------------------------------------
def _check_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidWrite("body", "the body must be a JSON object (a Google Calendar Event resource)")
    return body


def _check_send_updates(value: str | None) -> None:
    if value is not None and value not in SEND_UPDATES:
        raise InvalidWrite("sendUpdates", f"sendUpdates: use {', '.join(SEND_UPDATES)}")


def _check_event_id(event_id: str) -> None:
    if not event_id or len(event_id) > 1024:
        raise InvalidWrite("event_id", "event_id: 1 to 1024 characters")


def _check_if_match(etag: str | None) -> None:
    """An entity tag as Google gives them (`"3181161784712000"`, maybe `W/`), or `*`.

    A backslash, though RFC 9110 allows it inside the quotes, is refused: Google's etags never
    hold one, and the HTTP client under googleapiclient cannot send one in a header.
    """
    if etag is not None and (len(etag) > ETAG_MAX or not _ETAG.fullmatch(etag)):
        raise InvalidWrite(
            "If-Match", f'If-Match: an etag as Google gives it, e.g. "3181161784712000" (at most {ETAG_MAX} characters)'
        )
