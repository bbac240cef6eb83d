"""`calsync freebusy`: the busy blocks of calendars, from the mirror, as a table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from calsync.cli.changes import open_database
from calsync.config import Settings
from calsync.readmodels import availability
from calsync.readmodels.occurrences import check_window, known_zone, parse_instant, render, zone_of
from calsync.store.db import make_sessionmaker


def _instant(value: str, zone_name: str) -> datetime:
    """An RFC 3339 time, or a date taken as midnight in `zone_name`."""
    try:
        if len(value) == 10:
            day = datetime.strptime(value, "%Y-%m-%d")
            return day.replace(tzinfo=zone_of(zone_name)).astimezone(UTC)
        return parse_instant(value)
    except ValueError as err:
        raise click.BadParameter(f"{value!r}: give a date (2026-03-02) or an RFC 3339 time with an offset") from err


@click.command()
@click.argument("calendars", nargs=-1, required=True, metavar="CALENDAR...")
@click.option("--from", "start", metavar="WHEN", help="Start of the window (date or RFC 3339; default now).")
@click.option("--to", "end", metavar="WHEN", help="End of the window (default seven days after --from).")
@click.option("--tz", "zone_name", default="UTC", show_default=True, help="Time zone to show times and read dates in.")
def freebusy(calendars: tuple[str, ...], start: str | None, end: str | None, zone_name: str) -> None:
    """Print when the CALENDARs (Google calendar ids) are busy, answered from the mirror alone."""
    if not known_zone(zone_name):
        raise click.BadParameter(f"unknown time zone {zone_name!r}", param_hint="--tz")
    low = _instant(start, zone_name) if start else datetime.now(UTC).replace(microsecond=0)
    high = _instant(end, zone_name) if end else low + timedelta(days=7)
    try:
        check_window(low, high)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--from/--to") from err
    engine = open_database(Settings.from_env().database_url)
    try:
        seq, answers = availability.freebusy(make_sessionmaker(engine), list(dict.fromkeys(calendars)), low, high)
    finally:
        engine.dispose()
    zone = zone_of(zone_name)
    table = Table(title=f"Busy {render(low.astimezone(zone))} → {render(high.astimezone(zone))} (as of change #{seq})")
    for name in ("Calendar", "Start", "End", "Duration"):
        table.add_column(name)
    for answer in answers:
        if answer.errors:
            reasons = ", ".join(e["reason"] for e in answer.errors)
            table.add_row(escape(answer.calendar_id), f"[red]{escape(reasons)}[/red]", "", "")
        elif not answer.busy:
            table.add_row(escape(answer.calendar_id), "[green]free[/green]", "", "")
        for block_start, block_end in answer.busy:
            table.add_row(
                escape(answer.calendar_id),
                render(block_start.astimezone(zone)),
                render(block_end.astimezone(zone)),
                _duration(block_end - block_start),
            )
    Console(highlight=False, width=max(140, Console().width)).print(table)


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes or not parts:
        parts.append(f"{minutes}m")
    return " ".join(parts)
