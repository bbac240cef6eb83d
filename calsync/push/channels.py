"""Push channels: open, replace and stop Google watch channels.

The channel row (pending, with the token's hash) is committed *before* the watch call, because
Google's `sync` message can reach the receiver before the call returns. Channels are never
extended: a new one is opened first, then the old one is stopped.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from calsync.accounts.connected import load_credentials, save_if_refreshed
from calsync.errors import ChannelNotWanted, GoogleApiError, GoogleNotFound, QuotaWait, TransientGoogleError
from calsync.google.calendar import GoogleCalendar
from calsync.runtime import Runtime
from calsync.store.db import rows_affected, transaction
from calsync.store.models import Account, Calendar, Channel
from calsync.store.states import LIVE_CHANNEL, ChannelKind, ChannelStatus, Priority

log = logging.getLogger(__name__)


def hash_token(token: str) -> str:
    """The only form in which a channel token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def open_events_channel(runtime: Runtime, calendar_id: int, priority: Priority = Priority.RENEWAL) -> str:
    """Watch a calendar's events; returns the new channel id (the row is active once Google agreed)."""
    with transaction(runtime.sessions) as session:
        cal = session.get(Calendar, calendar_id)
        if cal is None:
            raise GoogleNotFound(f"calendar {calendar_id} does not exist", status=404, reason="notFound")
        if cal.removed_at is not None:
            raise ChannelNotWanted(f"calendar {calendar_id} left its account's calendar list")
        account_id, google_id = cal.account_id, cal.google_id

    def watch(api: GoogleCalendar, channel_id: str, token: str) -> dict[str, Any]:
        return api.watch_events(
            google_id,
            channel_id=channel_id,
            token=token,
            address=runtime.settings.notifications_url,
            ttl=runtime.settings.channel_ttl,
        )

    return _open(runtime, account_id, calendar_id, ChannelKind.EVENTS, watch, priority)


def open_calendar_list_channel(runtime: Runtime, account_id: int, priority: Priority = Priority.RENEWAL) -> str:
    """Watch an account's calendar list, so added and removed calendars are noticed at once."""

    def watch(api: GoogleCalendar, channel_id: str, token: str) -> dict[str, Any]:
        return api.watch_calendar_list(
            channel_id=channel_id,
            token=token,
            address=runtime.settings.notifications_url,
            ttl=runtime.settings.channel_ttl,
        )

    return _open(runtime, account_id, None, ChannelKind.CALENDAR_LIST, watch, priority)


def stop_channel(
    runtime: Runtime, channel_id: str, *, replaced_by: str | None = None, priority: Priority = Priority.RENEWAL
) -> bool:
    """Tell Google to stop a channel and mark it stopped; an already-gone channel is not an error.
    False when the stop was put off (`_stop_at_google`); a channel whose stop was put off may be
    stopped again."""
    with transaction(runtime.sessions) as session:
        channel = session.get(Channel, channel_id)
        if channel is None or channel.status not in (*LIVE_CHANNEL, ChannelStatus.STOPPING):
            return True
        # A row left pending by a crash has no resource id of its own; Google's resource id is the
        # same for every channel on one calendar (or calendar list), so a sibling's serves to stop it.
        account_id, resource_id = channel.account_id, channel.resource_id or _sibling_resource_id(session, channel)
        channel.status = ChannelStatus.STOPPING
        if replaced_by is not None:
            channel.replaced_by = replaced_by
    return _stop_at_google(runtime, account_id, channel_id, resource_id, priority)


def stop_leftover_channels(runtime: Runtime, account_id: int, priority: Priority = Priority.RECONCILE) -> int:
    """Tell Google to stop the account's channels that calsync no longer wants but Google may still
    hold: those whose stop was put off (no quota for it, Google unavailable), those a crash left
    `stopping`, and live ones of calendars gone from the list (a crash between the list's commit and
    their stop). Left alone, each went on notifying (every change twice) until Google let it expire,
    up to weeks later. Those past their expiry are over at Google already: marked expired. Returns
    how many are settled; at the first stop put off again, the rest wait for the next refresh."""
    now = runtime.clock.now()
    removed = select(Calendar.id).where(Calendar.account_id == account_id, Calendar.removed_at.is_not(None))
    with transaction(runtime.sessions) as session:
        leftovers = session.scalars(
            select(Channel)
            .where(
                Channel.account_id == account_id,
                (Channel.status == ChannelStatus.STOPPING)
                | (Channel.status.in_(LIVE_CHANNEL) & Channel.calendar_id.in_(removed)),
            )
            .order_by(Channel.created_at)
        ).all()
        lapsed = {c.id for c in leftovers if c.expires_at is not None and c.expires_at <= now}
        session.execute(update(Channel).where(Channel.id.in_(lapsed)).values(status=ChannelStatus.EXPIRED))
        due = [(c.id, c.resource_id or _sibling_resource_id(session, c)) for c in leftovers if c.id not in lapsed]
        session.execute(
            update(Channel)
            .where(Channel.id.in_([cid for cid, _ in due]), Channel.status.in_(LIVE_CHANNEL))
            .values(status=ChannelStatus.STOPPING)
        )
    settled = len(lapsed)
    for channel_id, resource_id in due:
        if not _stop_at_google(runtime, account_id, channel_id, resource_id, priority):
            break
        settled += 1
    return settled


def _stop_at_google(
    runtime: Runtime, account_id: int, channel_id: str, resource_id: str | None, priority: Priority
) -> bool:
    """channels.stop, then the row marked stopped; False when the stop is put off (no quota for the
    call, or Google unavailable): the row stays `stopping`, and the account's next list refresh
    tries again (`stop_leftover_channels`). Any other answer ends it: the receiver refuses the
    channel from now on, and Google's expiry ends what Google would not stop."""
    try:
        if resource_id:
            api, creds, token_before = _client(runtime, account_id, priority)
            try:
                api.stop_channel(channel_id, resource_id)
            finally:
                with transaction(runtime.sessions) as session:
                    save_if_refreshed(session, runtime, account_id, creds, token_before)
    except (QuotaWait, TransientGoogleError) as err:
        log.info("channels.stop of %s put off (%s): tried again at the account's next list refresh", channel_id, err)
        return False
    except GoogleNotFound:
        log.info("channel %s was already gone at Google", channel_id)
    except GoogleApiError as err:
        log.warning("channels.stop failed for %s: %s", channel_id, err)
    with transaction(runtime.sessions) as session:
        _mark_stopped(session, [channel_id], runtime.clock.now())
    return True


def stop_channels_locally(
    session: Session, *, now: datetime, account_id: int | None = None, calendar_ids: Iterable[int] | None = None
) -> int:
    """Mark live channels stopped without calling Google (a dead grant could not stop them anyway)."""
    stmt = update(Channel).where(Channel.status.in_(LIVE_CHANNEL))
    if account_id is not None:
        stmt = stmt.where(Channel.account_id == account_id)
    if calendar_ids is not None:
        stmt = stmt.where(Channel.calendar_id.in_(list(calendar_ids)))
    return rows_affected(session.execute(stmt.values(status=ChannelStatus.STOPPED, stopped_at=now)))


def live_channels(
    session: Session, *, calendar_id: int | None = None, account_id: int | None = None, kind: str = ChannelKind.EVENTS
) -> list[Channel]:
    """The pending or active channels of one calendar (or of one account's calendar list)."""
    stmt = select(Channel).where(Channel.kind == kind, Channel.status.in_(LIVE_CHANNEL))
    if calendar_id is not None:
        stmt = stmt.where(Channel.calendar_id == calendar_id)
    if account_id is not None:
        stmt = stmt.where(Channel.account_id == account_id)
    return list(session.scalars(stmt.order_by(Channel.created_at)))


def renewal_due_at(expires_at: datetime, created_at: datetime | None, renew_before: timedelta) -> datetime:
    """When a channel wants its successor: `renew_before` ahead of its expiry, or halfway through its
    life when Google granted less than that window. Against the window alone, such a channel was due
    the moment it opened, and every job (and every scheduler pass) replaced it."""
    window = renew_before
    if created_at is not None and expires_at > created_at:
        window = min(window, (expires_at - created_at) / 2)
    return expires_at - window


def needs_new_channel(channels: list[Channel], now: datetime, renew_before: timedelta) -> bool:
    """True when no active channel outlasts its renewal time (none at all, or all close to expiry).

    Called under the lease of the calendar (or calendar list), so a pending row seen here is a crash's
    leftover, not a watch in flight.
    """
    return not any(
        c.status == ChannelStatus.ACTIVE
        and c.expires_at is not None
        and renewal_due_at(c.expires_at, c.created_at, renew_before) > now
        for c in channels
    )


def replace_channel(
    runtime: Runtime,
    *,
    calendar_id: int | None = None,
    account_id: int | None = None,
    priority: Priority = Priority.RENEWAL,
) -> str:
    """Open a new channel first, then stop the old ones (the caller syncs afterwards to cover the seam)."""
    with transaction(runtime.sessions) as session:
        kind = ChannelKind.EVENTS if calendar_id is not None else ChannelKind.CALENDAR_LIST
        old = [c.id for c in live_channels(session, calendar_id=calendar_id, account_id=account_id, kind=kind)]
    if calendar_id is not None:
        new_id = open_events_channel(runtime, calendar_id, priority)
    else:
        assert account_id is not None
        new_id = open_calendar_list_channel(runtime, account_id, priority)
    for old_id in old:
        stop_channel(runtime, old_id, replaced_by=new_id, priority=priority)
    return new_id


def expiration_from_ms(value: Any) -> datetime | None:
    """Google's `expiration` (Unix ms, as a string) → an aware datetime."""
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


# Helpers ---------------------------------------------------------------------------------------
def _open(
    runtime: Runtime,
    account_id: int,
    calendar_id: int | None,
    kind: str,
    watch: Callable[[GoogleCalendar, str, str], dict[str, Any]],
    priority: Priority,
) -> str:
    channel_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    with transaction(runtime.sessions) as session:
        session.add(
            Channel(
                id=channel_id,
                account_id=account_id,
                calendar_id=calendar_id,
                kind=kind,
                token_hash=hash_token(token),
                status=ChannelStatus.PENDING,
                created_at=runtime.clock.now(),
            )
        )
    try:
        api, creds, token_before = _client(runtime, account_id, priority)
        try:
            granted = watch(api, channel_id, token)
        finally:
            with transaction(runtime.sessions) as session:
                save_if_refreshed(session, runtime, account_id, creds, token_before)
    except BaseException:
        with transaction(runtime.sessions) as session:
            _mark_stopped(session, [channel_id], runtime.clock.now())
        raise
    resource_id = granted.get("resourceId")
    with transaction(runtime.sessions) as session:
        # The receiver may already have turned it active on `sync`; a stop in between wins, and so
        # does the calendar's removal from the list while Google was granting it.
        wanted = [Channel.id == channel_id, Channel.status.in_(LIVE_CHANNEL)]
        if calendar_id is not None:
            wanted.append(exists().where(Calendar.id == calendar_id, Calendar.removed_at.is_(None)))
        made = rows_affected(
            session.execute(
                update(Channel)
                .where(*wanted)
                .values(
                    resource_id=resource_id,
                    resource_uri=granted.get("resourceUri"),
                    expires_at=expiration_from_ms(granted.get("expiration")),
                    status=ChannelStatus.ACTIVE,
                )
            )
        )
        if not made:
            # Record the resource id, so that whatever stops it later can tell Google.
            session.execute(update(Channel).where(Channel.id == channel_id).values(resource_id=resource_id))
    if not made:
        _unwanted(runtime, account_id, channel_id, resource_id, priority)
    log.info("opened %s channel %s (account %s, calendar %s)", kind, channel_id, account_id, calendar_id)
    return channel_id


def _unwanted(runtime: Runtime, account_id: int, channel_id: str, resource_id: str | None, priority: Priority) -> None:
    """A channel Google granted after its row was stopped (a job took the pending row for a crash's
    leftover, the account was disconnected) or its calendar left the list: stopped at Google at once.
    Left open, Google would push its notifications (and calsync answer 404) until it expired, days
    later, with nothing to stop it: the row's stop had no resource id to give Google."""
    if not _stop_at_google(runtime, account_id, channel_id, resource_id, priority):
        # Put off: `stopping` (the row may say stopped already), so the next list refresh stops it.
        with transaction(runtime.sessions) as session:
            session.execute(update(Channel).where(Channel.id == channel_id).values(status=ChannelStatus.STOPPING))
    raise ChannelNotWanted(f"channel {channel_id} was stopped as Google granted it: no longer wanted")


def _mark_stopped(session: Session, ids: list[str], now: datetime) -> None:
    session.execute(
        update(Channel)
        .where(Channel.id.in_(ids), Channel.status != ChannelStatus.STOPPED)
        .values(status=ChannelStatus.STOPPED, stopped_at=now)
    )


def _sibling_resource_id(session: Session, channel: Channel) -> str | None:
    stmt = select(Channel.resource_id).where(
        Channel.kind == channel.kind, Channel.account_id == channel.account_id, Channel.resource_id.is_not(None)
    )
    if channel.calendar_id is not None:
        stmt = stmt.where(Channel.calendar_id == channel.calendar_id)
    return session.scalar(stmt.order_by(Channel.created_at.desc()).limit(1))


def _client(runtime: Runtime, account_id: int, priority: Priority) -> tuple[GoogleCalendar, Any, str | None]:
    with transaction(runtime.sessions) as session:
        account = session.get(Account, account_id)
        if account is None:
            raise GoogleNotFound(f"account {account_id} does not exist", status=404, reason="notFound")
        creds = load_credentials(runtime, account)
    budget = runtime.budget.spender(account_id, priority)
    return GoogleCalendar(creds, runtime.settings.calendar_api_endpoint, budget=budget), creds, creds.token
