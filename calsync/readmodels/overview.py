"""The operator's overview of a deployment: what the dashboard, `calsync status` and `/metrics` show.

Accounts, their live calendars and channels, the feed's newest seq, recent activity and the gauges
all come from here, so the dashboard and the terminal cannot show the same deployment two ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from calsync.feed.cursor import newest_seq
from calsync.store.models import Account, Calendar, Change, Channel, Delivery, Notification
from calsync.store.serving import Serving, serving_channels
from calsync.store.states import LIVE_CHANNEL, AccountStatus, ChannelStatus, DeliveryState


@dataclass(frozen=True)
class Overview:
    """Every account, its calendars and channels, and where the feed stands."""

    accounts: list[Account]  # by email
    calendars: list[Calendar]  # still listed, by account, the primary first, then by title
    channels: list[Channel]  # by expiry
    serving: Serving  # the channel that serves each calendar and calendar list
    last_seq: int  # the counter: right even when retention deleted every row


@dataclass(frozen=True)
class Activity:
    """What happened lately, for the dashboard's figures."""

    changes_today: int
    notifications_hour: int
    failed_deliveries: int


@dataclass(frozen=True)
class Gauges:
    """The deployment-wide figures `/metrics` samples on each scrape."""

    next_channel_expiry: datetime | None  # the soonest active channel's
    oldest_owed_sync: datetime | None  # due time of the oldest sync owed to a live calendar
    calendars_by_state: Mapping[str, int]  # still listed
    accounts_by_status: Mapping[str, int]
    channels_by_status: Mapping[str, int]


def operator_overview(session: Session, *, all_channels: bool = False) -> Overview:
    """The overview; channels are the live ones unless `all_channels` adds stopped and expired ones."""
    accounts = list(session.scalars(select(Account).order_by(Account.email)))
    calendars = list(
        session.scalars(
            select(Calendar)
            .where(Calendar.removed_at.is_(None))
            .order_by(Calendar.account_id, Calendar.primary.desc(), Calendar.summary)
        )
    )
    query = select(Channel).order_by(Channel.expires_at)
    if not all_channels:
        query = query.where(Channel.status.in_(LIVE_CHANNEL))
    return Overview(accounts, calendars, list(session.scalars(query)), serving_channels(session), newest_seq(session))


def recent_activity(session: Session, now: datetime) -> Activity:
    """Changes of the last day, notifications of the last hour, deliveries that failed for good."""
    day, hour = now - timedelta(days=1), now - timedelta(hours=1)
    return Activity(
        changes_today=session.scalar(select(func.count()).select_from(Change).where(Change.detected_at >= day)) or 0,
        notifications_hour=session.scalar(
            select(func.count()).select_from(Notification).where(Notification.received_at >= hour)
        )
        or 0,
        failed_deliveries=session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.state == DeliveryState.FAILED)
        )
        or 0,
    )


def gauges(session: Session) -> Gauges:
    """The whole deployment's gauges, read in one session."""
    next_expiry = session.scalar(select(func.min(Channel.expires_at)).where(Channel.status == ChannelStatus.ACTIVE))
    oldest_owed = session.scalar(
        select(func.min(Calendar.due_at))
        .join(Account)
        .where(
            Calendar.sync_requested > Calendar.sync_done,
            Calendar.removed_at.is_(None),
            Account.status == AccountStatus.ACTIVE,
        )
    )
    by_state = session.execute(
        select(Calendar.sync_state, func.count()).where(Calendar.removed_at.is_(None)).group_by(Calendar.sync_state)
    ).all()
    by_status = session.execute(select(Account.status, func.count()).group_by(Account.status)).all()
    channels = session.execute(select(Channel.status, func.count()).group_by(Channel.status)).all()
    return Gauges(
        next_channel_expiry=next_expiry,
        oldest_owed_sync=oldest_owed,
        calendars_by_state={str(k): int(v) for k, v in by_state},
        accounts_by_status={str(k): int(v) for k, v in by_status},
        channels_by_status={str(k): int(v) for k, v in channels},
    )


def calendar_titles(session: Session) -> list[tuple[int, str, str]]:
    """(row id, title or Google id, account email) of every calendar ever listed, by account, then title."""
    rows = session.execute(
        select(Calendar.id, Calendar.summary, Calendar.google_id, Account.email)
        .join(Account, Account.id == Calendar.account_id)
        .order_by(Account.email, Calendar.summary)
    )
    return [(cid, summary or gid, email) for cid, summary, gid, email in rows]


def watched(session: Session) -> tuple[list[Calendar], list[Account]]:
    """What calsync keeps push channels on: the live calendars (by id) and the calendar lists of active accounts."""
    calendars = session.scalars(
        select(Calendar)
        .join(Account)
        .where(Calendar.removed_at.is_(None), Account.status == AccountStatus.ACTIVE)
        .order_by(Calendar.id)
    )
    accounts = session.scalars(select(Account).where(Account.status == AccountStatus.ACTIVE))
    return list(calendars), list(accounts)
