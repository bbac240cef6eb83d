"""Disconnecting an account: stop its channels, revoke the grant, forget its tokens.

It talks to Google, so it owns its transactions (like a job): the account is first marked
`disconnected` and its leases taken, so no worker picks up its work and none still at it writes
after the feed's `account.disconnected`; then Google is called, then the channels and the
credentials are settled. A crash in between leaves the credentials in place and a second call
finishes the work: disconnecting is idempotent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import requests
from google.oauth2.credentials import Credentials
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from calsync.accounts.connected import load_credentials
from calsync.accounts.connections import forget_pending
from calsync.errors import ConfigError, GoogleApiError, GoogleNotFound, NotFoundError, QuotaWait
from calsync.feed.append import append_changes
from calsync.feed.lifecycle import account_change
from calsync.google.calendar import GoogleCalendar
from calsync.google.oauth import revoke
from calsync.runtime import Runtime
from calsync.store.db import sqlstate, transaction
from calsync.store.models import Account, Calendar, Channel
from calsync.store.states import UNSTOPPED_CHANNEL, AccountStatus, ChangeType, ChannelStatus, Priority

log = logging.getLogger(__name__)

EMPTY_CREDENTIALS = "{}"
_DEADLOCK = "40P01"  # PostgreSQL's deadlock_detected
_DEADLOCK_TRIES = 5


@dataclass
class DisconnectResult:
    account: str
    channels_stopped: list[str] = field(default_factory=list)
    channels_not_stopped: list[str] = field(default_factory=list)
    revoked: bool = False
    already_disconnected: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "account": self.account,
            "status": AccountStatus.DISCONNECTED,
            "revoked": self.revoked,
            "channels_stopped": self.channels_stopped,
            "channels_not_stopped": self.channels_not_stopped,
        }


def find_account_id(runtime: Runtime, email: str, *, ref: str | None = None) -> int:
    """The id of the account with this email (and this ref, when given); NotFoundError when there is none."""
    query = select(Account.id).where(Account.email == email)
    if ref is not None:
        query = query.where(Account.ref == ref)
    with runtime.sessions() as session:
        account_id = session.scalar(query)
    if account_id is None:
        raise NotFoundError(f"no account {email!r}" + (f" with ref {ref!r}" if ref is not None else ""))
    return account_id


def disconnect_account(runtime: Runtime, account_id: int) -> DisconnectResult:
    """Stop the account's channels at Google, revoke its grant, wipe its tokens, stop its syncs."""
    result, creds, channels = _mark_disconnected(runtime, account_id)

    if creds is not None:
        _stop_channels(runtime, account_id, creds, channels, result)
        # A worker busy with this account when it was marked may have opened one more meanwhile.
        late = [c for c in _live_channels(runtime, account_id) if c[0] not in {cid for cid, _ in channels}]
        _stop_channels(runtime, account_id, creds, late, result)
        result.revoked = _revoke(runtime, creds)
    else:
        result.channels_not_stopped = [channel_id for channel_id, _ in channels]

    with transaction(runtime.sessions) as session:
        now = runtime.clock.now()
        session.execute(
            update(Channel)
            .where(Channel.account_id == account_id, Channel.status.in_(UNSTOPPED_CHANNEL))
            .values(status=ChannelStatus.STOPPED, stopped_at=now)
        )
        session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(
                status=AccountStatus.DISCONNECTED,
                credentials=runtime.cipher.encrypt_str(EMPTY_CREDENTIALS),
                list_due_at=None,
                updated_at=now,
            )
        )
        session.execute(update(Calendar).where(Calendar.account_id == account_id).values(due_at=None, retry_at=None))
    log.info(
        "account %s disconnected: %d channel(s) stopped, grant revoked: %s",
        result.account,
        len(result.channels_stopped),
        result.revoked,
    )
    return result


def _mark_disconnected(
    runtime: Runtime, account_id: int
) -> tuple[DisconnectResult, Credentials | None, list[tuple[str, str | None]]]:
    """The first transaction, run again when PostgreSQL ended it to break a deadlock: nothing of
    it was committed, and two disconnects must not both announce the account's end."""
    for attempt in range(1, _DEADLOCK_TRIES + 1):
        try:
            with transaction(runtime.sessions) as session:
                return _mark(session, runtime, account_id)
        except OperationalError as err:
            if sqlstate(err) != _DEADLOCK or attempt == _DEADLOCK_TRIES:
                raise
            log.info("account %s: the disconnect met a deadlock (try %d); trying again", account_id, attempt)
    raise AssertionError("unreachable")  # the last try returned or raised


def _mark(
    session: Session, runtime: Runtime, account_id: int
) -> tuple[DisconnectResult, Credentials | None, list[tuple[str, str | None]]]:
    """Mark the account disconnected and take every lease on its work, so that a sync page or a
    calendar-list commit still in flight finds its lease gone (LeaseLost) and writes nothing after
    `account.disconnected`; read under the account's row lock, so that of two disconnects at once
    only the first announces it."""
    now = runtime.clock.now()
    # Account row first, then calendars: the order of a calendar-list commit and of a dead grant
    # (`mark_reauth_required`); a sync page saving a refreshed token locks the other way, and the
    # deadlock PostgreSQL breaks then is run again by `_mark_disconnected`.
    account = session.get(Account, account_id, with_for_update=True, populate_existing=True)
    if account is None:
        raise NotFoundError(f"no account with id {account_id}")
    result = DisconnectResult(account.email, already_disconnected=account.status == AccountStatus.DISCONNECTED)
    creds = _stored_credentials(runtime, account)
    channels = _live_channels(runtime, account_id, session)
    account.status = AccountStatus.DISCONNECTED
    account.list_due_at = None
    account.list_lease_owner = None
    account.list_lease_until = None
    account.updated_at = now
    forget_pending(session, account.email)
    session.execute(
        update(Calendar)
        .where(Calendar.account_id == account_id)
        .values(due_at=None, retry_at=None, lease_owner=None, lease_until=None)
    )
    if not result.already_disconnected:
        append_changes(session, [account_change(ChangeType.ACCOUNT_DISCONNECTED, account_id)], now)
    return result, creds, channels


def _live_channels(runtime: Runtime, account_id: int, session: Session | None = None) -> list[tuple[str, str | None]]:
    """(id, resource id) of the account's channels that Google may still be serving."""
    query = (
        select(Channel.id, Channel.resource_id)
        .where(Channel.account_id == account_id, Channel.status.in_(UNSTOPPED_CHANNEL))
        .order_by(Channel.id)
    )
    if session is not None:
        return [(cid, rid) for cid, rid in session.execute(query)]
    with runtime.sessions() as own:
        return [(cid, rid) for cid, rid in own.execute(query)]


def _stored_credentials(runtime: Runtime, account: Account) -> Credentials | None:
    """The account's credentials, or None once they were wiped, or when no key decrypts them (the
    one that encrypted them was removed from CALSYNC_TOKEN_KEY): the disconnect then stops and wipes
    what it can here, where it was a 500 that changed nothing."""
    try:
        stored = runtime.cipher.decrypt_str(account.credentials)
    except ConfigError as err:
        log.warning("account %s: %s; disconnecting without telling Google", account.email, err)
        return None
    data = json.loads(stored or EMPTY_CREDENTIALS)
    if not data.get("token") and not data.get("refresh_token"):
        return None
    return load_credentials(runtime, account)


def _stop_channels(
    runtime: Runtime,
    account_id: int,
    creds: Credentials,
    channels: list[tuple[str, str | None]],
    result: DisconnectResult,
) -> None:
    """channels.stop for each, from the user's quota budget as every call for the account is.

    With no room in the budget, the rest are left to expire: the disconnect must still revoke the
    grant and wipe the tokens (it stopped half-way, the account marked disconnected and its tokens
    kept, when the budget's wait escaped from here)."""
    if not channels:
        return
    budget = runtime.budget.spender(account_id, Priority.RENEWAL)
    google = GoogleCalendar(creds, runtime.settings.calendar_api_endpoint, budget=budget)
    for index, (channel_id, resource_id) in enumerate(channels):
        if resource_id is None:  # the watch never answered: there is nothing to stop at Google
            result.channels_stopped.append(channel_id)
            continue
        try:
            google.stop_channel(channel_id, resource_id)
        except GoogleNotFound:
            pass  # already gone at Google
        except QuotaWait as err:
            log.warning("no quota to stop the channels of %s (%s); they will expire", result.account, err)
            result.channels_not_stopped.extend(cid for cid, _ in channels[index:])
            return
        except GoogleApiError as err:
            # It will expire on its own; the receiver refuses it once the row is stopped.
            log.warning("could not stop channel %s of %s: %s", channel_id, result.account, err)
            result.channels_not_stopped.append(channel_id)
            continue
        result.channels_stopped.append(channel_id)


def _revoke(runtime: Runtime, creds: Credentials) -> bool:
    token = creds.refresh_token or creds.token
    if not token:
        return False
    try:
        return revoke(runtime.settings, token)
    except requests.RequestException as err:
        log.warning("could not revoke the grant: %s", err)
        return False
