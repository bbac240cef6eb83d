"""The states of the rows that move through a life cycle, one definition each.

The columns store the plain values (no migration, and SQL written by hand compares with the same
words, through `sql_list` or `.value`); the ORM reads and writes them as these enums
(`calsync.store.models.EnumColumn`), so a misspelt state is a type error, and a stored one that is
no member fails loudly when read.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import IntEnum, StrEnum


class AccountStatus(StrEnum):
    """Whether calsync may act for a connected Google account."""

    ACTIVE = "active"  # tokens work: sync, watch, renew
    REAUTH_REQUIRED = "reauth_required"  # Google refused the refresh token: the user must consent again
    DISCONNECTED = "disconnected"  # the user or an operator disconnected it: grant revoked, tokens wiped


class SyncState(StrEnum):
    """How a calendar's mirror stands against Google, as `/api/calendars` reports it."""

    PENDING = "pending"  # no full sync has completed yet
    SYNCED = "synced"  # the last sync succeeded
    BACKOFF = "backoff"  # the last sync hit a transient error; a retry is scheduled
    ERROR = "error"  # the last sync failed for a reason a retry will not fix


class ChannelKind(StrEnum):
    """What a push channel watches."""

    EVENTS = "events"  # one calendar's events
    CALENDAR_LIST = "calendar_list"  # one account's calendar list


class ChannelStatus(StrEnum):
    """Where a push channel is in its life: opened before the watch call, stopped once replaced."""

    PENDING = "pending"  # row written, watch call not yet answered (Google may already notify)
    ACTIVE = "active"  # Google agreed; notifications are accepted
    STOPPING = "stopping"  # calsync decided to stop it and is telling Google; notifications are refused
    STOPPED = "stopped"  # stopped at Google (or given up on); refused
    EXPIRED = "expired"  # lapsed at Google's expiration; refused


# The channel that serves its calendar: the receiver accepts it, renewal replaces it, status and the
# dashboard show it. A channel being stopped is not live, even though Google may still send on it.
LIVE_CHANNEL = frozenset({ChannelStatus.PENDING, ChannelStatus.ACTIVE})
# Channels that Google may still be serving, so a disconnect must stop them there: the live ones and
# one left `stopping` by a crash in the middle of `channels.stop`.
UNSTOPPED_CHANNEL = LIVE_CHANNEL | {ChannelStatus.STOPPING}


class ChangeKind(StrEnum):
    """What one row of the change feed says happened to an event (its `change` field)."""

    SNAPSHOT = "snapshot"  # stored by the calendar's first full sync: the state the feed starts from
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class ChangeType(StrEnum):
    """The `type` of a change-feed row and of its webhook message: an event's change or a lifecycle step."""

    EVENT_SNAPSHOT = "event.snapshot"
    EVENT_CREATED = "event.created"
    EVENT_UPDATED = "event.updated"
    EVENT_DELETED = "event.deleted"
    ACCOUNT_CONNECTED = "account.connected"
    ACCOUNT_REAUTH_REQUIRED = "account.reauth_required"
    ACCOUNT_DISCONNECTED = "account.disconnected"
    CALENDAR_ADDED = "calendar.added"
    CALENDAR_REMOVED = "calendar.removed"
    CALENDAR_SYNCED = "calendar.synced"

    @classmethod
    def of_event(cls, kind: str) -> ChangeType:
        """The type of an event row of this kind."""
        return cls(f"{EVENT_PREFIX}{ChangeKind(kind).value}")

    @property
    def kind(self) -> ChangeKind | None:
        """The event change this type names, or None for a lifecycle type."""
        prefix, _, rest = self.value.partition(".")
        return ChangeKind(rest) if f"{prefix}." == EVENT_PREFIX else None


EVENT_PREFIX = "event."


def event_kind(change_type: str) -> str | None:
    """The `change` field of a feed row of this type: the event change, or None for a lifecycle row."""
    kind = ChangeType(change_type).kind
    return None if kind is None else kind.value


LIFECYCLE_OF_CALENDAR = frozenset({ChangeType.CALENDAR_ADDED, ChangeType.CALENDAR_REMOVED, ChangeType.CALENDAR_SYNCED})


class Origin(StrEnum):
    """Who made the change an event row of the feed records."""

    API = "api"  # written to Google through calsync's own API, on an app's behalf
    GOOGLE = "google"  # found in Google by a sync (every row written before writes existed)


class NotificationOutcome(StrEnum):
    """What the receiver made of one push notification: logged with it, and counted by it."""

    QUEUED = "queued"  # a new message: its calendar (or calendar list) owes one more sync
    SYNC = "sync"  # the channel's first message, which Google sends when it opens; nothing is owed
    DUPLICATE = "duplicate"  # a message number already seen; nothing more is owed
    MALFORMED = "malformed"  # the headers are missing or unreadable
    UNKNOWN_CHANNEL = "unknown_channel"  # no such channel
    BAD_TOKEN = "bad_token"  # the channel's token is missing or wrong
    BAD_RESOURCE = "bad_resource"  # the resource id is not the channel's
    STOPPED_CHANNEL = "stopped_channel"  # the channel no longer serves its calendar
    ACCOUNT_INACTIVE = "account_inactive"  # the channel's account is not active


# Refused: answered 404 so that Google stops sending on the channel.
REFUSED_NOTIFICATION = frozenset(
    {
        NotificationOutcome.UNKNOWN_CHANNEL,
        NotificationOutcome.BAD_TOKEN,
        NotificationOutcome.BAD_RESOURCE,
        NotificationOutcome.STOPPED_CHANNEL,
        NotificationOutcome.ACCOUNT_INACTIVE,
    }
)
# The inspector's second history (anyone can send these), trimmed apart from the accepted ones.
NOT_ACCEPTED_NOTIFICATION = REFUSED_NOTIFICATION | {NotificationOutcome.MALFORMED}


class ConnectOutcome(StrEnum):
    """How a connect session ended: the `status` its user is sent back to the app with."""

    CONNECTED = "connected"  # consent given and the account stored
    DENIED = "denied"  # the user declined at Google
    ERROR = "error"  # anything else; the return carries a short `error` code


class ConnectionState(StrEnum):
    """Where the connection a connect session's consent made stands: held until the app confirms it."""

    PENDING = "pending"  # the consent succeeded; the account waits for the app's confirmation
    CONFIRMED = "confirmed"  # the app confirmed it for the session's ref: the account is that ref's
    REFUSED = "refused"  # the app's signed-in user was another ref: dropped
    EXPIRED = "expired"  # not confirmed in time: dropped


class SubscriptionStatus(StrEnum):
    """Whether an outgoing webhook subscription is sent to."""

    ACTIVE = "active"
    PAUSED = "paused"  # by an operator; messages wait in the outbox
    DISABLED = "disabled"  # by calsync after the endpoint kept failing, or refused verification


class DeliveryState(StrEnum):
    """Where one outgoing webhook message stands."""

    PENDING = "pending"  # due now or at its next retry
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # retries exhausted; can be replayed


class Priority(IntEnum):
    """Who goes first when Google's quota is tight (smaller is more urgent).

    A calendar's `due_priority` says why its next sync is owed, so claims take the most urgent first;
    every Google call takes its place in the budget with the priority of the work it does.
    """

    WRITE = 0  # a change an app asked calsync to make in Google
    NOTIFICATION = 1  # a sync owed to a push notification (or to the seam of a new channel)
    RENEWAL = 2  # a channel about to expire, and the sync across its seam
    FIRST_SYNC = 3  # the first full sync of a newly connected calendar
    RECONCILE = 4  # the periodic safety-net sync


def sql_list(states: Collection[StrEnum]) -> str:
    """`'a', 'b'` for SQL written by hand, sorted so statements stay byte-identical across processes."""
    return ", ".join(f"'{state.value}'" for state in sorted(states))
