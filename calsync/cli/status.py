"""`calsync status`, `calsync sync CALENDAR` and `calsync channels renew|stop`: the operator's terminal view.

Calendars are named the way people know them: their Google id, or their title when that is unique.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from calsync.clock import SystemClock
from calsync.config import Settings
from calsync.errors import ConfigError, NotFoundError
from calsync.humanize import ago, expires_in
from calsync.readmodels.overview import operator_overview, watched
from calsync.readmodels.reads import calendars_named
from calsync.runtime import Runtime
from calsync.store.db import make_engine, make_sessionmaker, transaction
from calsync.store.liveness import heartbeat_is_fresh
from calsync.store.migrate import require_head
from calsync.store.models import Account, Calendar, Channel
from calsync.store.states import LIVE_CHANNEL, AccountStatus, ChannelKind, ChannelStatus, SyncState
from calsync.work.leases import Claim, claim_this_calendar, finish_calendar, release_calendar
from calsync.work.liveness import last_heartbeat
from calsync.work.quota import describe, outlook

# A channel's `pending` and `active` are the same words as a calendar's and an account's, so share
# their styles.
STATE_STYLE: dict[str, str] = {
    SyncState.SYNCED: "green",
    SyncState.PENDING: "cyan",
    SyncState.BACKOFF: "yellow",
    SyncState.ERROR: "bold red",
    AccountStatus.ACTIVE: "green",
    AccountStatus.REAUTH_REQUIRED: "bold white on red",
    AccountStatus.DISCONNECTED: "dim",
    ChannelStatus.STOPPING: "yellow",
    ChannelStatus.STOPPED: "dim",
    ChannelStatus.EXPIRED: "dim",
}


@click.command()
@click.option("--all-channels", is_flag=True, help="Also list stopped and expired channels.")
def status(all_channels: bool) -> None:
    """Accounts, calendars (sync state, last sync, error) and push channels with their expiry."""
    console = Console(highlight=False)
    with _database() as (_settings, engine), make_sessionmaker(engine)() as session:
        now = SystemClock().now()
        seen = operator_overview(session, all_channels=all_channels)
        accounts, calendars, channels = seen.accounts, seen.calendars, seen.channels
        emails = {a.id: a.email for a in accounts}
        titles = {c.id: c.summary or c.google_id for c in calendars}
        last_seq = seen.last_seq
        heartbeat = last_heartbeat(session)
        quota = outlook(session, _settings, now)
    console.print(_accounts_table(accounts, calendars, now))
    console.print(_calendars_table(calendars, seen.serving.calendars, emails, now))
    console.print(_channels_table(channels, emails, titles, now))
    if heartbeat is None:
        worker = "[yellow]no worker has run yet[/yellow]"
    elif heartbeat_is_fresh(heartbeat, now):
        worker = f"worker heartbeat {ago(heartbeat, now)}"
    else:
        worker = f"[bold red]no live worker[/bold red]: last heartbeat {ago(heartbeat, now)}"
    console.print(f"diff log at seq [bold]{last_seq}[/bold] · {worker}")
    console.print(describe(quota), markup=False)


@click.command()
@click.argument("calendar")
@click.option("--account", metavar="EMAIL", help="The account, when several accounts share the calendar.")
@click.option(
    "--full",
    is_flag=True,
    help="List everything and compare with the mirror, instead of an incremental sync from the stored sync token.",
)
def sync(calendar: str, account: str | None, full: bool) -> None:
    """Sync one CALENDAR (its Google id or its title) now, with a progress bar.

    Takes the calendar's lease, so a running worker never syncs it at the same time.
    """
    from calsync.sync.run import sync_calendar

    console = Console(highlight=False)
    with _runtime() as rt:
        owner = f"cli-sync-{id(rt)}"
        with transaction(rt.sessions) as session:
            cal = find_calendar(session, calendar, account)
            claim = _claim(session, cal, owner, rt)
            label = f"{cal.summary or cal.google_id} ({cal.account.email})"
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed} events"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        try:
            with progress:
                task = progress.add_task(f"syncing {escape(label)}", total=None)
                result = sync_calendar(
                    rt,
                    claim.id,
                    full=full,
                    lease_owner=owner,
                    progress=lambda seen, total: progress.update(task, completed=seen, total=total),
                )
        except BaseException:
            with transaction(rt.sessions) as session:
                release_calendar(session, claim)
            raise
        with transaction(rt.sessions) as session:
            finish_calendar(session, claim, rt.clock.now(), rt.settings.reconcile_every)
    console.print(
        f"[green]✓[/green] {escape(label)}: {result.kind} sync, {result.pages} page(s), "
        f"{result.events_seen} event(s) seen · [green]{result.created} created[/green] · "
        f"[yellow]{result.updated} updated[/yellow] · [red]{result.deleted} deleted[/red]"
    )


@click.group()
def channels() -> None:
    """Push channels: replace them before they expire, or stop them."""


@channels.command("renew")
@click.argument("calendar", required=False)
@click.option("--account", metavar="EMAIL", help="The account, when several accounts share the calendar.")
@click.option("--all", "renew_all", is_flag=True, help="Every calendar and calendar list of every active account.")
def channels_renew(calendar: str | None, account: str | None, renew_all: bool) -> None:
    """Open a new channel for CALENDAR (or --all), then stop the old one, then queue a sync for the seam."""
    from calsync.errors import ChannelNotWanted
    from calsync.push.channels import replace_channel
    from calsync.store.owed import request_calendar_sync

    if bool(calendar) == renew_all:
        raise click.UsageError("name one CALENDAR or give --all")
    with _runtime() as rt:
        with rt.sessions() as session:
            if renew_all:
                live, active = watched(session)
                targets = [(c.id, c.account_id, f"{c.summary or c.google_id} ({c.account.email})") for c in live]
                lists = [(a.id, a.email) for a in active]
            else:
                cal = find_calendar(session, calendar or "", account)
                targets = [(cal.id, cal.account_id, f"{cal.summary or cal.google_id} ({cal.account.email})")]
                lists = []
        for account_id, email in lists:
            try:
                new_id = replace_channel(rt, account_id=account_id)
            except ChannelNotWanted as err:
                click.echo(f"calendar list of {email}: not renewed ({err})")
                continue
            click.echo(f"calendar list of {email}: new channel {new_id}")
        for calendar_id, _account_id, label in targets:
            try:
                new_id = replace_channel(rt, calendar_id=calendar_id)
            except ChannelNotWanted as err:
                click.echo(f"{label}: not renewed ({err})")
                continue
            with transaction(rt.sessions) as session:
                request_calendar_sync(session, calendar_id, rt.clock.now())
                rt.wakeup.notify_after_commit(session)
            click.echo(f"{label}: new channel {new_id}")
        if not targets and not lists:
            click.echo("no active calendar to renew")


@channels.command("stop")
@click.argument("channel_id", required=False)
@click.option("--calendar", metavar="CALENDAR", help="Stop every live channel of this calendar instead.")
@click.option("--account", metavar="EMAIL", help="With --calendar: the account, when several share it.")
def channels_stop(channel_id: str | None, calendar: str | None, account: str | None) -> None:
    """Stop CHANNEL_ID (or every channel of --calendar) at Google; the receiver refuses it from then on.

    The calendar keeps being reconciled; a new channel opens at its next renewal or `channels renew`.
    """
    from calsync.push.channels import live_channels, stop_channel

    if bool(channel_id) == bool(calendar):
        raise click.UsageError("name one CHANNEL_ID or give --calendar")
    with _runtime() as rt:
        with rt.sessions() as session:
            if channel_id:
                channel = session.get(Channel, channel_id)
                if channel is None:
                    raise NotFoundError(f"no channel {channel_id!r} (see `calsync status`)")
                if channel.status not in (*LIVE_CHANNEL, ChannelStatus.STOPPING):  # a stop put off: again
                    click.echo(f"channel {channel_id} is already {channel.status}")
                    return
                ids = [channel_id]
            else:
                cal = find_calendar(session, calendar or "", account)
                ids = [c.id for c in live_channels(session, calendar_id=cal.id)]
        put_off = [cid for cid in ids if not stop_channel(rt, cid)]
        for cid in ids:
            if cid in put_off:
                click.echo(
                    f"channel {cid}: Google did not take the stop now; it is refused here, and stopped "
                    "at Google by the account's next list refresh (or run this again)",
                    err=True,
                )
            else:
                click.echo(f"stopped channel {cid}")
        if not ids:
            click.echo("no live channel to stop")
        if put_off:
            sys.exit(1)


def find_calendar(session: Session, ref: str, account: str | None = None) -> Calendar:
    """The one live calendar named by Google id or, failing that, by title; a usage error if several."""
    found = calendars_named(session, ref, account)
    if not found:
        owner = f" of account {account}" if account else ""
        raise NotFoundError(f"no calendar {ref!r}{owner} (see `calsync status`)")
    if len(found) > 1:
        owners = ", ".join(sorted({f"{c.google_id} of {c.account.email}" for c in found}))
        raise click.UsageError(f"{ref!r} names {len(found)} calendars ({owners}): use its Google id or add --account")
    return found[0]


@contextmanager
def _database() -> Iterator[tuple[Settings, Engine]]:
    """An engine on an existing calsync database: an operator command never creates one by accident."""
    settings = Settings.from_env()
    url = make_url(settings.database_url)
    if (
        url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
        and not Path(url.database).exists()
    ):
        raise ConfigError(f"CALSYNC_DATABASE_URL: no database at {url.database} (run `calsync db upgrade`)")
    engine = make_engine(settings.database_url)
    try:
        # a schema behind (or ahead of) the code fails later on a missing column, told as "cannot be reached"
        require_head(engine)
        yield settings, engine
    finally:
        engine.dispose()


@contextmanager
def _runtime() -> Iterator[Runtime]:
    """What commands that call Google need: client secrets, the database, the token cipher, the clock."""
    from calsync.google.oauth import client_config

    client_config(Settings.from_env())  # a missing client secret is named before anything else
    with _database() as (settings, engine):
        yield Runtime.create(settings, engine=engine)


def _claim(session: Session, cal: Calendar, owner: str, rt: Runtime) -> Claim:
    """Take the calendar's lease unless a worker holds it right now."""
    claim = claim_this_calendar(session, cal.id, cal.sync_requested, owner, rt.clock.now(), rt.settings.lease)
    if claim is None:
        raise click.ClickException(
            f"{cal.summary or cal.google_id} is being synced by a worker right now; try again in a moment"
        )
    return claim


def _style(value: str) -> str:
    style = STATE_STYLE.get(value)
    return f"[{style}]{escape(value)}[/{style}]" if style else escape(value)


def _accounts_table(accounts: list[Account], calendars: list[Calendar], now: datetime) -> Table:
    table = Table(title="Accounts", title_justify="left", expand=False)
    for col in ("account", "status", "calendars", "connected", "problem"):
        table.add_column(col)
    for a in accounts:
        count = sum(1 for c in calendars if c.account_id == a.id)
        problem = a.last_error or ""
        if a.status == AccountStatus.REAUTH_REQUIRED:
            problem = "re-consent needed at /connect" + (f": {problem}" if problem else "")
        table.add_row(
            escape(a.email),
            _style(a.status),
            str(count),
            ago(a.created_at, now),
            f"[red]{escape(problem)}[/red]" if problem else "—",
        )
    if not accounts:
        table.add_row("[dim]no account yet: people connect at /connect[/dim]", "", "", "", "")
    return table


def _calendars_table(
    calendars: list[Calendar], serving: dict[int, Channel], emails: dict[int, str], now: datetime
) -> Table:
    table = Table(title="Calendars", title_justify="left")
    for col in ("account", "calendar", "google id", "state", "last sync", "channel", "error"):
        table.add_column(col, overflow="fold")
    for c in calendars:
        channel = expires_in(serving[c.id].expires_at, now) if c.id in serving else "[dim]none[/dim]"
        error = f"[red]{escape(c.last_error)}[/red]" if c.last_error else "—"
        if c.retry_at and c.retry_at > now:
            error += f" [dim](retry {ago(c.retry_at, now)})[/dim]"
        table.add_row(
            escape(emails.get(c.account_id, "?")),
            escape(c.summary or ""),
            escape(c.google_id),
            _style(c.sync_state),
            ago(c.last_synced_at, now),
            channel,
            error,
        )
    return table


def _channels_table(channels: list[Channel], emails: dict[int, str], titles: dict[int, str], now: datetime) -> Table:
    table = Table(title="Channels", title_justify="left")
    for col in ("channel id", "watches", "account", "status", "expiry", "last message"):
        table.add_column(col, overflow="fold")
    for ch in channels:
        watches = (
            "calendar list" if ch.kind == ChannelKind.CALENDAR_LIST else titles.get(ch.calendar_id or 0, "(removed)")
        )
        table.add_row(
            ch.id,
            escape(watches),
            escape(emails.get(ch.account_id, "?")),
            _style(ch.status),
            expires_in(ch.expires_at, now),
            str(ch.last_message_number or "—"),
        )
    if not channels:
        table.add_row("[dim]no live channel[/dim]", "", "", "", "", "")
    return table
