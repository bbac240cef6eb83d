"""The channel that serves a calendar, or an account's calendar list: the one the API, the dashboard
and `calsync status` show.

Of a calendar's channels Google agreed to (active), the one that expires last: during a renewal the
new channel serves as soon as Google agrees to it, and a watch still in flight (pending) serves
nothing yet.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.clock import utc
from calsync.store.models import Channel
from calsync.store.states import ChannelKind, ChannelStatus


@dataclass(frozen=True)
class Serving:
    calendars: dict[int, Channel] = field(default_factory=dict)  # by calendar id
    lists: dict[int, Channel] = field(default_factory=dict)  # by account id


def serving_channels(session: Session, *, calendar_ids: Collection[int] | None = None) -> Serving:
    """The serving channel of each calendar (of those named, or of all) and, when none are named, of
    each account's calendar list."""
    if calendar_ids is not None and not calendar_ids:
        return Serving()
    query = select(Channel).where(Channel.status == ChannelStatus.ACTIVE)
    if calendar_ids is not None:
        query = query.where(Channel.kind == ChannelKind.EVENTS, Channel.calendar_id.in_(list(calendar_ids)))
    serving = Serving()
    for channel in sorted(session.scalars(query), key=_expiry):  # the later wins: it comes last
        if channel.kind == ChannelKind.CALENDAR_LIST:
            serving.lists[channel.account_id] = channel
        elif channel.calendar_id is not None:
            serving.calendars[channel.calendar_id] = channel
    return serving


def _expiry(channel: Channel) -> tuple[datetime, datetime, str]:
    """Expiry, then creation; an expiry not known yet (Google's answer not written) counts as earliest."""
    return (utc(channel.expires_at) or _UNKNOWN, utc(channel.created_at) or _UNKNOWN, channel.id)


_UNKNOWN = datetime.min.replace(tzinfo=UTC)
