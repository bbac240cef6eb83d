"""Schema and key commands."""

from __future__ import annotations

import click

from calsync.cli.changes import sqlite_path_missing
from calsync.config import Settings
from calsync.errors import ConfigError
from calsync.store.crypto import new_key
from calsync.store.db import make_engine
from calsync.store.migrate import current_revision, upgrade


@click.group()
def db() -> None:
    """Manage the database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema of CALSYNC_DATABASE_URL."""
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    upgrade(engine, revision)
    click.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database."""
    url = Settings.from_env().database_url
    missing = sqlite_path_missing(url)
    if missing is not None:  # looking must not make an empty file where the database should be
        raise ConfigError(f"CALSYNC_DATABASE_URL: no database at {missing} (run `calsync db upgrade`)")
    engine = make_engine(url)
    click.echo(current_revision(engine) or "empty")
    engine.dispose()


@click.command()
def keygen() -> None:
    """Print a new CALSYNC_TOKEN_KEY (a Fernet key)."""
    click.echo(new_key())
