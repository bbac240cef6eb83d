"""`calsync changes`: the diff log on a terminal, or as JSON lines for scripts."""

from __future__ import annotations

import json
import sys
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from calsync.config import Settings
from calsync.errors import ConfigError, CursorExpired, NotFoundError
from calsync.feed import reads as feed_reads
from calsync.humanize import lifecycle_title
from calsync.readmodels import reads
from calsync.stopping import stop_on_signals
from calsync.store.db import make_engine, make_sessionmaker, reading
from calsync.store.migrate import require_head
from calsync.store.states import ChangeKind, ChangeType, Origin

POLL_SECONDS = 0.5
AWAY_PAUSE_SECONDS = 1.0  # following, between two reads while the database is away
KIND_STYLE = {
    ChangeKind.CREATED: "green",
    ChangeKind.UPDATED: "yellow",
    ChangeKind.DELETED: "red",
    ChangeKind.SNAPSHOT: "cyan",
}
VALUE_WIDTH = 200
SEQ_MAX = 2**63 - 1  # a seq is a signed 64-bit integer in both databases


@click.command()
@click.option(
    "--after",
    type=click.IntRange(min=0, max=SEQ_MAX),
    default=0,
    show_default=True,
    help="Print changes with a seq greater than this.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=feed_reads.CHANGES_DEFAULT_LIMIT,
    show_default=True,
    help="At most this many changes (per poll with --follow; capped at 1000).",
)
@click.option("--calendar", "calendar_id", metavar="ID", help="Only changes of this Google calendar id.")
@click.option("--account", metavar="EMAIL", help="With --calendar: the account, when several share the calendar.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new changes as they are committed (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as in /api/changes.")
@click.option(
    "--snapshots",
    is_flag=True,
    help="Also print event.snapshot rows (a first sync writes one per event; hidden by default).",
)
@click.option("--types", "types_text", metavar="A,B", help="Only rows of these types, as /api/changes?types=.")
@click.option(
    "--origin",
    type=click.Choice([o.value for o in Origin]),
    help="Only rows of this origin, as /api/changes?origin= (google: not the writes made through the API).",
)
def changes(
    after: int,
    limit: int,
    calendar_id: str | None,
    account: str | None,
    follow: bool,
    as_json: bool,
    snapshots: bool,
    types_text: str | None,
    origin: str | None,
) -> None:
    """Print the diff log of CALSYNC_DATABASE_URL."""
    if account and not calendar_id:
        raise click.UsageError("--account needs --calendar")
    types = _types(types_text, snapshots)
    settings = Settings.from_env()
    engine = open_database(settings.database_url)
    sessions = make_sessionmaker(engine)
    console = Console(highlight=False, soft_wrap=True)
    limit = min(limit, feed_reads.CHANGES_MAX_LIMIT)
    # Following, Ctrl-C sets `stop`: a KeyboardInterrupt can be swallowed where it lands.
    stops = stop_on_signals() if follow else nullcontext(threading.Event())
    # The driver's own errors too: setting up a pooled connection (its isolation level) can meet the
    # dead connection outside SQLAlchemy's wrapping.
    dbapi = engine.dialect.loaded_dbapi
    away = (OperationalError, InterfaceError, dbapi.OperationalError, dbapi.InterfaceError)
    try:
        with stops as stop:
            while not stop.is_set():
                try:
                    page = _read_page(sessions, calendar_id, account, after, limit, types, origin, follow)
                except away as err:
                    if not follow:
                        raise
                    # A following consumer outlives a killed connection or a restart: it reads
                    # again from the same `after`, which moves only once a page is printed.
                    reason = getattr(err, "orig", None) or err
                    click.echo(f"warning: the database is away ({reason}); reading again shortly", err=True)
                    stop.wait(AWAY_PAUSE_SECONDS)
                    continue
                for item in page.changes:
                    _print(console, item, as_json)
                sys.stdout.flush()
                after = page.next
                if not follow:
                    if not page.changes and not as_json:
                        click.echo(f"no changes after seq {after}", err=True)
                    return
                if len(page.changes) < limit:
                    stop.wait(POLL_SECONDS)
    except KeyboardInterrupt:  # without --follow, Ctrl-C during the one read: what was printed is not whole
        raise click.exceptions.Abort() from None
    finally:
        engine.dispose()


def _read_page(
    sessions: sessionmaker[Session],
    calendar_id: str | None,
    account: str | None,
    after: int,
    limit: int,
    types: list[str] | None,
    origin: str | None,
    follow: bool,
) -> feed_reads.ChangesPage:
    """One page of the feed after `after`."""
    with reading(sessions) as session:
        # Looked up in the page's own snapshot: a calendar row added since the last page (another
        # account that sees the same calendar) has its rows read, not skipped.
        calendars = _calendars(session, calendar_id, account)
        if calendars == [] and not follow:
            raise NotFoundError(f"no calendar {calendar_id!r}" + (f" of account {account}" if account else ""))
        try:
            return feed_reads.changes_page(
                session,
                after=after,
                limit=limit,
                calendars=calendars,
                types=types,
                origin=Origin(origin) if origin else None,
            )
        except CursorExpired as err:
            raise click.ClickException(_expired(err)) from err


def format_change(item: dict[str, Any]) -> list[str]:
    """Rich-markup lines for one change: a header, then `field: before → after` for updates."""
    kind = item["change"]
    if kind is None:
        return [_lifecycle_line(item)]
    style = KIND_STYLE.get(kind, "white")
    event = item["after"] or item["before"] or {}
    summary = event.get("summary") or ("(no title)" if item["event_id"] else "")
    lines = [
        f"[bold]#{item['seq']}[/bold]  {item['detected_at']}  {_where(item)}  [{style}]{kind}[/{style}]  "
        f"{escape(str(summary))}  [dim]{escape(item['event_id'] or '')}[/dim]  {_origin(item)}".rstrip()
    ]
    if kind == ChangeKind.UPDATED:
        before, after = item["before"] or {}, item["after"] or {}
        for name in item["fields"]:
            lines.append(f"    {escape(name)}: {escape(_short(before.get(name)))} → {escape(_short(after.get(name)))}")
    return lines


def _origin(item: dict[str, Any]) -> str:
    """`via api` (with the app's key) for a write made through calsync, `from google` for one a sync found."""
    if item.get("origin") == Origin.API:
        key = item.get("idempotency_key")
        return "[blue]via api[/blue]" + (f" [dim]key {escape(key)}[/dim]" if key else "")
    return "[dim]from google[/dim]"


def _lifecycle_line(item: dict[str, Any]) -> str:
    """An account's or a calendar's step, in words, with the app's ref when it has one."""
    ref = f"  [dim]ref {escape(item['ref'])}[/dim]" if item["ref"] is not None else ""
    return (
        f"[bold]#{item['seq']}[/bold]  {item['detected_at']}  {_where(item)}  [magenta]{item['type']}[/magenta]  "
        f"{escape(lifecycle_title(item['type'], item.get('summary')))}{ref}"
    )


def _where(item: dict[str, Any]) -> str:
    """`account / calendar`, or the account alone for an account's lifecycle row."""
    return escape(item["account"]) + (f" / {escape(item['calendar_id'])}" if item["calendar_id"] else "")


def _types(raw: str | None, snapshots: bool) -> list[str] | None:
    """The types to print (None: all): those of --types, else all but snapshots unless --snapshots."""
    if raw is None:
        return None if snapshots else [t.value for t in ChangeType if t != ChangeType.EVENT_SNAPSHOT]
    try:
        chosen = feed_reads.parse_types(raw)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--types") from err
    if snapshots and ChangeType.EVENT_SNAPSHOT not in chosen:
        chosen.append(ChangeType.EVENT_SNAPSHOT)
    return [t.value for t in chosen]


def _expired(err: CursorExpired) -> str:
    kept_from = err.oldest_seq - 1
    return (
        f"cursor expired: the changes after seq {err.after} up to seq {kept_from} were deleted by retention "
        f"(CALSYNC_CHANGES_RETENTION). `--after {kept_from}` prints what is kept; a copy built from the feed "
        "must start again from scratch."
    )


def _print(console: Console, item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(item, separators=(",", ":"), sort_keys=True) + "\n")
        return
    for line in format_change(item):
        console.print(line)


def _short(value: Any) -> str:
    text = "∅" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def open_database(url: str) -> Engine:
    """An engine on an existing calsync database at this code's schema; reading must never create
    one by accident, and a schema behind or ahead is told as that before any statement fails on it."""
    refuse_missing_sqlite(url)
    engine = make_engine(url)
    try:
        require_head(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def refuse_missing_sqlite(url: str) -> None:
    """ConfigError when `url` names a SQLite file that does not exist: opening it would create it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if not Path(parsed.database).exists():
        raise ConfigError(f"CALSYNC_DATABASE_URL: no database at {parsed.database} (run `calsync db upgrade`)")


def _calendars(session: Session, calendar_id: str | None, account: str | None) -> list[Any] | None:
    """The calendar rows of --calendar; an empty list while it is unknown (it may appear under --follow)."""
    if not calendar_id:
        return None
    try:
        return reads.find_calendars(session, calendar_id, account)
    except NotFoundError:
        return []
