"""Schema and key commands."""

from __future__ import annotations

import click
from alembic.util.exc import CommandError

from calsync.cli.changes import open_database, refuse_missing_sqlite
from calsync.config import Settings
from calsync.store.crypto import cipher_from_settings, new_key, reencrypt_stored
from calsync.store.db import make_engine, make_sessionmaker
from calsync.store.migrate import current_revision, schema_problem, upgrade


@click.group()
def db() -> None:
    """Manage the database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema of CALSYNC_DATABASE_URL."""
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine, revision)
        click.echo(f"database at revision {current_revision(engine)}")
    except CommandError as err:  # Alembic's word on the revision asked for: one line, not a traceback
        raise click.ClickException(f"cannot upgrade to {revision!r}: {err}") from err
    finally:
        engine.dispose()


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database."""
    url = Settings.from_env().database_url
    refuse_missing_sqlite(url)  # looking must not make an empty file where the database should be
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    click.echo(revision or "empty")
    problem = schema_problem(revision)
    if problem is not None:  # on stderr: the revision alone stays on stdout, for scripts
        click.echo(f"note: {problem}", err=True)


@db.command("reencrypt")
def db_reencrypt() -> None:
    """Encrypt every stored token and secret again with the first key of CALSYNC_TOKEN_KEY.

    Key rotation: put the new key first (`NEW,OLD`) on every process, run this, then drop OLD.
    """
    settings = Settings.from_env()
    engine = open_database(settings.database_url)
    try:
        done = reencrypt_stored(make_sessionmaker(engine), cipher_from_settings(settings))
    finally:
        engine.dispose()
    click.echo(f"{done.done} stored secret(s) now under the first key")
    if done.unreadable:
        raise click.ClickException(
            f"{done.unreadable} stored secret(s) no key of CALSYNC_TOKEN_KEY decrypts were left as they are"
        )


@click.command()
def keygen() -> None:
    """Print a new CALSYNC_TOKEN_KEY (a Fernet key)."""
    click.echo(new_key())
