"""Helpers shared by the sync tests: connect an emulator user, read the mirror and the diff log."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from google.oauth2.credentials import Credentials
from sqlalchemy import select

from calsync.accounts import connect_sessions, connections
from calsync.accounts.connected import upsert_account
from calsync.accounts.consent import finish_consent, start_consent
from calsync.google.oauth import client_config
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change, Event
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar

READONLY = "https://www.googleapis.com/auth/calendar.readonly"
EVENTS = "https://www.googleapis.com/auth/calendar.events"
WRITER = (READONLY, EVENTS)  # what an operator who turned writing on asks for


def stored_calendar(runtime: Runtime, *, ref: str | None = None, email: str = "a@example.com") -> tuple[int, int]:
    """An account and its calendar as rows only (no grant, no Google): their ids."""
    with transaction(runtime.sessions) as session:
        account = Account(email=email, credentials=b"x", scopes=[], ref=ref)
        session.add(account)
        session.flush()
        cal = Calendar(account_id=account.id, google_id=email)
        session.add(cal)
        session.flush()
        return account.id, cal.id


def connect_account(runtime: Runtime, emu: Any, email: str, scopes: tuple[str, ...] = (READONLY,)) -> int:
    """Create the user in the emulator and store its tokens as the consent flow would."""
    emu.create_user(email)
    tokens = emu.issue_tokens(email, scopes=scopes)
    cfg = client_config(runtime.settings)
    creds = Credentials(
        token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        token_uri=emu.url + "/token",
        client_id=cfg.client_id,
        client_secret=cfg.client_secret,
        scopes=list(scopes),
    )
    with transaction(runtime.sessions) as session:
        return upsert_account(session, runtime.cipher, email, creds, list(scopes), runtime.clock.now()).id


def writable_calendar(runtime: Runtime, emu: Any, email: str) -> int:
    """The user connected with the write scope, its calendar list read and its primary calendar
    synced once: that calendar's row id."""
    account = connect_account(runtime, emu, email, scopes=WRITER)
    refresh_calendar_list(runtime, account)
    calendar_id = calendar_row_id(runtime, email)
    sync_calendar(runtime, calendar_id)
    return calendar_id


def consent_through_link(runtime: Runtime, emu: Any, email: str, ref: str) -> str:
    """An app's connect session for `ref`, claimed, and `email`'s consent after it (as
    /connect/<token> runs them): the one-time connection code the app must confirm."""
    emu.create_user(email)
    wanted = connect_sessions.ConnectRequest(ref=ref, return_to="https://app.example.test/after", login_hint=email)
    with transaction(runtime.sessions) as session:
        url, _ = connect_sessions.create(session, wanted, runtime.settings.public_url, runtime.clock.now())
    with transaction(runtime.sessions) as session:
        link = connect_sessions.claim(session, url.rsplit("/", 1)[1], runtime.clock.now())
    pending = start_consent(runtime, login_hint=email)
    emu.auto_approve = email
    answer = requests.get(pending.url, allow_redirects=False, timeout=10)
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    done = finish_consent(runtime, pending.state, pending.verifier, code, link=link.token_hash)
    assert done.email == email and done.connection
    return done.connection


def connect_with_ref(runtime: Runtime, emu: Any, email: str, ref: str) -> int:
    """A consent through an app's connect link, and the app's confirmation for the same ref."""
    connection = consent_through_link(runtime, emu, email, ref)
    assert connections.confirm(runtime, connection, ref) == connections.Confirmation(account=email, ref=ref)
    with runtime.sessions() as session:
        return session.scalars(select(Account.id).where(Account.email == email)).one()


def calendar_row_id(runtime: Runtime, google_id: str) -> int:
    with runtime.sessions() as session:
        return session.scalars(select(Calendar.id).where(Calendar.google_id == google_id)).one()


def mirror(runtime: Runtime, calendar_id: int) -> dict[str, dict[str, Any]]:
    """The mirrored JSON by event id."""
    with runtime.sessions() as session:
        rows = session.scalars(select(Event).where(Event.calendar_id == calendar_id)).all()
        return {row.google_id: row.data for row in rows}


def google_view(emu: Any, google_calendar_id: str) -> dict[str, dict[str, Any]]:
    """What Google holds and the mirror must equal: live events plus cancelled exceptions of live series."""
    everything = emu.events(google_calendar_id, include_cancelled=True)
    live = {e["id"] for e in everything if e.get("status") != "cancelled"}
    return {e["id"]: e for e in everything if e.get("status") != "cancelled" or e.get("recurringEventId") in live}


def changes(
    runtime: Runtime, calendar_id: int | None = None, after: int = 0, *, lifecycle: bool = False
) -> list[Change]:
    """The event rows of the feed, or with `lifecycle` every row (accounts' and calendars' steps too)."""
    with runtime.sessions() as session:
        query = select(Change).where(Change.seq > after).order_by(Change.seq)
        if not lifecycle:
            query = query.where(Change.event_id.is_not(None))
        if calendar_id is not None:
            query = query.where(Change.calendar_id == calendar_id)
        return list(session.scalars(query).all())


def last_seq(runtime: Runtime) -> int:
    found = changes(runtime)
    return found[-1].seq if found else 0


def fold(runtime: Runtime, calendar_id: int) -> dict[str, dict[str, Any]]:
    """The calendar's events as its change feed alone says: snapshot/created/updated set, deleted removes."""
    state: dict[str, dict[str, Any]] = {}
    for change in changes(runtime, calendar_id):
        if change.event_id is None:
            continue  # a lifecycle row
        if change.kind == "deleted":
            assert change.event_id in state, f"seq {change.seq} deletes {change.event_id}, which the feed never set"
            del state[change.event_id]
        else:
            assert change.after is not None
            state[change.event_id] = change.after
    return state


def assert_feed_rebuilds_mirror(runtime: Runtime, calendar_id: int) -> None:
    """The fold of the feed is the mirror, event for event; and no event has two snapshot rows."""
    assert fold(runtime, calendar_id) == mirror(runtime, calendar_id)
    snapshots = [c.event_id for c in changes(runtime, calendar_id) if c.kind == "snapshot"]
    assert len(snapshots) == len(set(snapshots)), "an event has a second snapshot row"


def assert_names_the_whole_connect_flow(hint: str) -> None:
    """A reconnect hint leads through the connect session and then its confirm step, in that order:
    without the confirmation the account is never attached to the ref."""
    create = hint.index("POST /api/connect-sessions ")
    confirm = hint.index("POST /api/connect-sessions/confirm")
    assert create < confirm
    assert '"connection"' in hint[confirm:] and '"ref"' in hint[confirm:]
