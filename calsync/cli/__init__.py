"""The `calsync` command: one click group, a module per area."""

from __future__ import annotations

import logging
import sys

import click
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from calsync.errors import CalsyncError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """calsync: mirror Google Calendars through push notifications and keep a diff log."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _register() -> None:
    from calsync.cli.changes import changes
    from calsync.cli.db import db, keygen
    from calsync.cli.demo import demo
    from calsync.cli.events import events
    from calsync.cli.freebusy import freebusy
    from calsync.cli.processes import serve, web, worker
    from calsync.cli.status import channels, status, sync
    from calsync.cli.webhooks import webhooks
    from calsync.emulator.cli import emulator

    for command in (
        db,
        keygen,
        changes,
        events,
        freebusy,
        webhooks,
        serve,
        web,
        worker,
        status,
        sync,
        channels,
        demo,
        emulator,
    ):
        cli.add_command(command)


def main() -> None:
    """Entry point: known failures become one clear line on stderr, never a traceback."""
    _register()
    for position, arg in enumerate(sys.argv[1:], 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode: the drivers would choke on them
            click.echo(f"error: argument {position} is not valid UTF-8 text: {arg!a}", err=True)
            sys.exit(2)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except CalsyncError as err:
        # One line even for a ConfigError naming several variables (one per indented line).
        click.echo("error: " + str(err).replace(":\n  ", ": ").replace("\n  ", "; ").replace("\n", " "), err=True)
        sys.exit(2)
    except SQLAlchemyError as err:
        click.echo(f"error: {_database_problem(err)}", err=True)
        sys.exit(2)


def _database_problem(err: SQLAlchemyError) -> str:
    """One line for a database error. A statement that ran and failed on a schema that is not this
    code's (a missing column: SQLite calls it an OperationalError) is told as that, with what to
    run; it was "the database cannot be reached", which sent operators after the network."""
    if isinstance(err, DBAPIError) and err.statement is not None:  # connected: the database is there
        mismatch = _schema_mismatch()
        if mismatch is not None:
            return mismatch
    if isinstance(err, OperationalError):
        return f"the database cannot be reached: {str(err.orig).strip().splitlines()[0]}"
    return f"database error: {str(err).splitlines()[0]}"


def _schema_mismatch() -> str | None:
    """What calsync.store.migrate says of CALSYNC_DATABASE_URL's revision, or None when it is this
    code's head or cannot be read (the error in hand is then told as it is)."""
    from calsync.cli.changes import refuse_missing_sqlite
    from calsync.config import Settings
    from calsync.store.db import make_engine
    from calsync.store.migrate import current_revision, schema_problem

    try:
        url = Settings.from_env().database_url
        refuse_missing_sqlite(url)  # the failed statement may have been on another file (the demo's)
        engine = make_engine(url)
        try:
            problem = schema_problem(current_revision(engine))
        finally:
            engine.dispose()
    except Exception:  # a courtesy on the way out: never a second error in place of the first
        return None
    return None if problem is None else str(problem)
