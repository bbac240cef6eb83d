"""The data model: SQLAlchemy 2.0 typed ORM classes. The schema itself is made by Alembic only."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeEngine

from calsync.store.states import (
    AccountStatus,
    ChangeKind,
    ChangeType,
    ChannelKind,
    ChannelStatus,
    ConnectionState,
    ConnectOutcome,
    DeliveryState,
    NotificationOutcome,
    Origin,
    Priority,
    SubscriptionStatus,
    SyncState,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which keeps naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; calsync uses aware UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=Enum)


_MEMBER_OPS = frozenset(
    {
        operators.eq,
        operators.ne,
        operators.in_op,
        operators.not_in_op,
        operators.is_distinct_from,
        operators.is_not_distinct_from,
    }
)


class UnknownStateError(ValueError):
    """The database holds a value that is not a member of its column's enum."""


class EnumColumn(TypeDecorator[E]):
    """An enum's values stored as the plain column they always were; read back as its members.

    The schema stays the same (a string, or a small integer for an `IntEnum`), so SQL written by
    hand still compares with the stored words, while the ORM hands out members and takes members (or
    their values: an unknown one is refused).
    """

    impl: TypeEngine[Any] | type[TypeEngine[Any]] = String  # replaced by each column's own
    cache_ok = True

    def __init__(self, enum: type[E], stored: TypeEngine[Any]) -> None:
        super().__init__()
        self.impl = stored
        self.enum = enum
        self._members: dict[Any, E] = {member.value: member for member in enum}

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:  # a member, or its value
        if value is None:
            return None
        if value.__class__ is self.enum:
            return value._value_
        member = None if isinstance(value, Enum) else self._members.get(value)  # another enum's member: no
        if member is None:
            raise UnknownStateError(f"{value!r} is not a {self.enum.__name__}")
        return member._value_

    def process_result_value(self, value: Any, dialect: Dialect) -> E | None:
        if value is None:
            return None
        member = self._members.get(value)
        if member is None:
            raise UnknownStateError(f"the database holds {value!r}, which is not a {self.enum.__name__}")
        return member

    def coerce_compared_value(self, op: Any, value: Any) -> TypeEngine[Any]:
        # Compared for equality, the other side must be a member too; a LIKE pattern is text.
        return self if op in _MEMBER_OPS else self.impl_instance


JSONType = JSON().with_variant(JSONB(), "postgresql")
# Google's event JSON and the feed's before/after, kept as the text they were written as: jsonb
# refuses `\u0000` and lone surrogates, which JSON allows and an event may hold. Nothing queries
# inside them on the server; every index is on the columns derived beside them.
ExactJSON = JSON().with_variant(PG_JSON(), "postgresql")


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    if TYPE_CHECKING:  # every model here is mapped to a Table, which Core's update() and insert() need
        __table__: ClassVar[Table]
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[str]: JSONType,
    }


class Account(Base):
    """A connected Google account; its primary calendar id is its email."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    credentials: Mapped[bytes] = mapped_column(LargeBinary)  # Fernet-encrypted JSON
    scopes: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[AccountStatus] = mapped_column(EnumColumn(AccountStatus, String(20)), default=AccountStatus.ACTIVE)
    # The embedding app's own id for the user behind this account (set by a connect session).
    ref: Mapped[str | None] = mapped_column(String(200), index=True)
    connected_at: Mapped[datetime | None]  # the last completed consent
    last_error: Mapped[str | None] = mapped_column(Text)
    # The calendar list is work of its own, coalesced like a calendar's events.
    list_requested: Mapped[int] = mapped_column(Integer, default=1)
    list_done: Mapped[int] = mapped_column(Integer, default=0)
    list_due_at: Mapped[datetime | None] = mapped_column(index=True)
    list_lease_owner: Mapped[str | None] = mapped_column(String(100))
    list_lease_until: Mapped[datetime | None]
    list_error_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)

    calendars: Mapped[list[Calendar]] = relationship(back_populates="account")


class Calendar(Base):
    """One Google calendar of an account, with its sync token and its place in the work queue."""

    __tablename__ = "calendars"
    __table_args__ = (
        UniqueConstraint("account_id", "google_id"),
        # The claim's order: the most urgent kind of owed work first, then the longest waiting.
        Index("ix_calendars_due_priority_due_at", "due_priority", "due_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    google_id: Mapped[str] = mapped_column(String(1024))
    summary: Mapped[str | None] = mapped_column(Text)
    time_zone: Mapped[str | None] = mapped_column(String(100))
    access_role: Mapped[str | None] = mapped_column(String(40))
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    removed_at: Mapped[datetime | None]  # gone from the account's calendar list; changes stay
    # Sync state
    sync_token: Mapped[str | None] = mapped_column(Text)
    sync_state: Mapped[SyncState] = mapped_column(EnumColumn(SyncState, String(20)), default=SyncState.PENDING)
    baseline_done: Mapped[bool] = mapped_column(Boolean, default=False)
    full_sync_gen: Mapped[int] = mapped_column(Integer, default=0)
    last_synced_at: Mapped[datetime | None]
    next_reconcile_at: Mapped[datetime | None]
    # When Google last said it will not watch this calendar (push not supported, as for its public
    # holiday calendars): no watch is asked for again for a while, where each sync asked one.
    watch_refused_at: Mapped[datetime | None]
    # The last sync that found a real change (not a snapshot): how active the calendar is, which
    # decides whose reconciliations stretch first when the day's quota is short.
    last_changed_at: Mapped[datetime | None]
    # Its decayed rate of changes (calsync.store.activity); NULL until a sync after the first finds one.
    activity: Mapped[float | None] = mapped_column(Float)
    # Work queue: requested > done means a sync is owed; due_at says when it may run.
    sync_requested: Mapped[int] = mapped_column(Integer, default=1)
    sync_done: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(index=True)
    # Why the owed sync is owed (a Priority): claims take the most urgent first.
    due_priority: Mapped[Priority] = mapped_column(
        EnumColumn(Priority, SmallInteger()), default=Priority.FIRST_SYNC, server_default="3"
    )
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    retry_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=_now)

    account: Mapped[Account] = relationship(back_populates="calendars")


class Channel(Base):
    """A push channel opened with Google; the token is kept only as a hash."""

    __tablename__ = "channels"
    __table_args__ = (Index("ix_channels_status_expires_at", "status", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    calendar_id: Mapped[int | None] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ChannelKind] = mapped_column(EnumColumn(ChannelKind, String(20)))
    token_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(255))
    resource_uri: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    status: Mapped[ChannelStatus] = mapped_column(EnumColumn(ChannelStatus, String(20)), default=ChannelStatus.PENDING)
    last_message_number: Mapped[int | None] = mapped_column(BigInteger)
    replaced_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=_now)
    stopped_at: Mapped[datetime | None]


class Event(Base):
    """The mirror of one Google event (series, exception or single), as Google's JSON."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("calendar_id", "google_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    calendar_id: Mapped[int] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"))
    google_id: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(20))
    etag: Mapped[str | None] = mapped_column(String(100))
    updated: Mapped[str | None] = mapped_column(String(40))
    recurring_event_id: Mapped[str | None] = mapped_column(String(1024))
    start: Mapped[str | None] = mapped_column(String(40))
    end: Mapped[str | None] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(ExactJSON)
    seen_gen: Mapped[int] = mapped_column(Integer, default=0)


class Change(Base):
    """One row of the change feed. `seq` is global, strictly increasing, and in commit order.

    An event row names its calendar and event; a lifecycle row (`account.*`, `calendar.*`) has no
    event, and an account's row no calendar. `ref` is the account's ref when the row was written,
    so a message retried later carries the same bytes.
    """

    __tablename__ = "changes"
    __table_args__ = (Index("ix_changes_calendar_id_seq", "calendar_id", "seq"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    type: Mapped[ChangeType] = mapped_column(EnumColumn(ChangeType, String(40)))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    calendar_id: Mapped[int | None] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"))
    event_id: Mapped[str | None] = mapped_column(String(1024))
    ref: Mapped[str | None] = mapped_column(String(200))
    fields: Mapped[list[str]] = mapped_column(ExactJSON, default=list)
    before: Mapped[dict[str, Any] | None] = mapped_column(ExactJSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(ExactJSON)
    detected_at: Mapped[datetime] = mapped_column(default=_now)
    # `api` for a write made through calsync (with the app's Idempotency-Key, if any), else `google`.
    origin: Mapped[Origin] = mapped_column(
        EnumColumn(Origin, String(10)), default=Origin.GOOGLE, server_default=Origin.GOOGLE.value
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(200))

    calendar: Mapped[Calendar | None] = relationship()
    account: Mapped[Account | None] = relationship()

    @property
    def kind(self) -> ChangeKind | None:
        """The event change (`created`, `snapshot`, ...) this row records; None for a lifecycle row."""
        return ChangeType(self.type).kind  # one made by hand may hold the plain word until flushed

    @kind.setter
    def kind(self, value: str) -> None:
        self.type = ChangeType.of_event(value)


class IdempotencyKey(Base):
    """An app's `Idempotency-Key` for one event creation: the body it came with and the event it made.

    Claimed (with `seq` null) before Google is called, so a retry or a concurrent twin finds it; `seq`
    is the feed row of the creation once committed. Kept for a day (the scheduler's prune pass).
    """

    __tablename__ = "idempotency_keys"

    calendar_id: Mapped[int] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(1024))
    seq: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class ConnectSession(Base):
    """A single-use consent link an app made for one of its users; the token is kept only as a hash."""

    __tablename__ = "connect_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    ref: Mapped[str] = mapped_column(String(200))
    return_to: Mapped[str] = mapped_column(Text)
    login_hint: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=_now)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    outcome: Mapped[ConnectOutcome | None] = mapped_column(EnumColumn(ConnectOutcome, String(20)))  # once used
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    # The connection the consent made, held (tokens encrypted) until the app confirms it for the
    # user signed in to it; the one-time code is kept only as its hash, like the link's token.
    connection_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    connection_state: Mapped[ConnectionState | None] = mapped_column(EnumColumn(ConnectionState, String(20)))
    connection_until: Mapped[datetime | None] = mapped_column(index=True)  # set while tokens are held
    email: Mapped[str | None] = mapped_column(String(320))
    credentials: Mapped[bytes | None] = mapped_column(LargeBinary)  # Fernet-encrypted JSON, wiped once settled
    scopes: Mapped[list[str] | None] = mapped_column(JSONType)


class Counter(Base):
    """Named counters; taking `seq` from a locked row keeps seq order equal to commit order."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class QuotaBudget(Base):
    """Google's quota as one row per scope ("project", "user:<account id>"), shared by every process.

    Times are Unix seconds (floats), so the budget's arithmetic is the same on both engines. The
    project's row also carries the day's counts (Google's day ends at midnight Pacific time) and
    the plan: which calendars' reconciliations are stretched to fit the day's budget.
    """

    __tablename__ = "quota_budget"

    scope: Mapped[str] = mapped_column(String(40), primary_key=True)
    # When the calls taken so far are paid off.
    tat: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    hold_until: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # Google's Retry-After
    # The share of the rate after the last slow-down, and when that slow-down happened.
    factor: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    factor_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    day: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # YYYYMMDD in Pacific time
    calls_today: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reconcile_today: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    first_sync_today: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The plan's cut (seconds between changes): calendars changing less often are stretched (NULL:
    # none). See calsync.work.quota.Plan.
    reconcile_cut: Mapped[float | None] = mapped_column(Float)
    projected: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    planned_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # The last quota day's calls other than reconciliations and first syncs: how the plan expects the
    # rest of today to go (today's pace so far misleads: office hours).
    steady_before: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Those calls hour by hour, today and the last day ("YYYYMMDD:n0,n1,…", counts so far at the end
    # of each hour, written by the plan): the last day's shape says how much of a day is still to come.
    steady_hours: Mapped[str | None] = mapped_column(String(400))
    steady_hours_before: Mapped[str | None] = mapped_column(String(400))


class Notification(Base):
    """A bounded log of received push notifications, for the inspector."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    channel_id: Mapped[str | None] = mapped_column(String(255))  # unindexed: see migration 0002
    resource_state: Mapped[str | None] = mapped_column(String(20))
    message_number: Mapped[int | None] = mapped_column(BigInteger)
    resource_id: Mapped[str | None] = mapped_column(String(255))
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outcome: Mapped[NotificationOutcome] = mapped_column(EnumColumn(NotificationOutcome, String(40)))
    received_at: Mapped[datetime] = mapped_column(default=_now)


class WebhookSubscription(Base):
    """An operator's endpoint that receives signed change messages."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(default=list)
    calendars: Mapped[list[str] | None] = mapped_column(JSONType)
    format: Mapped[str] = mapped_column(String(20), default="standard")  # standard|slack
    origin: Mapped[Origin | None] = mapped_column(EnumColumn(Origin, String(10)))  # only event rows of it; null: all
    secret: Mapped[bytes] = mapped_column(LargeBinary)  # encrypted whsec_…
    previous_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_until: Mapped[datetime | None]
    status: Mapped[SubscriptionStatus] = mapped_column(
        EnumColumn(SubscriptionStatus, String(20)), default=SubscriptionStatus.ACTIVE
    )
    # The newest feed seq this subscription has looked at: rows above it are still to be queued.
    cursor_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    last_success_at: Mapped[datetime | None]
    failing_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=_now)


class Delivery(Base):
    """The outbox: one message of one change to one subscription, queued as the subscription's cursor
    passes the change, and kept after its last attempt (the claim check)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "change_seq"),
        Index("ix_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        # Deleting old changes (retention) cascades here: one probe per change, not a scan.
        Index("ix_deliveries_change_seq", "change_seq"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"))
    change_seq: Mapped[int] = mapped_column(BigInteger, ForeignKey("changes.seq", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(80), unique=True)
    state: Mapped[DeliveryState] = mapped_column(EnumColumn(DeliveryState, String(20)), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=_now)
    delivered_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    """Every attempt, logged with status, latency and the first bytes of the answer."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(default=_now)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None]
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class WorkerHeartbeat(Base):
    """Each worker process says it is alive; /healthz reads the freshest."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=_now)
    seen_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class OperatorSession(Base):
    """A dashboard sign-in. The cookie carries a random id and this row its hash: deleting the row
    (signing out, or expiry) ends the session for every copy of the cookie."""

    __tablename__ = "operator_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class LoginFailure(Base):
    """Failed dashboard sign-ins of one client (an IPv4 address, or an IPv6 /64), which set how long
    it must wait before its next attempt; shared by every web process."""

    __tablename__ = "login_failures"

    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(index=True)
