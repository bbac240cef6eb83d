"""Schema management through Alembic, the only way the schema is made or changed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from alembic import command
from calsync.errors import ConfigError
from calsync.store.locations import resource_dir

UPGRADE_LOCK = 0x63616C73796E63  # "calsync": the key of the upgrade's transaction-level advisory lock


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("alembic")))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection inside the one transaction a schema change runs in, committed when the block ends.

    On SQLite, changing a column means copying its table and dropping the old one, and a DROP
    TABLE with foreign keys on first deletes its rows, cascading into the tables that refer to it.
    So foreign keys are off during the migration, as SQLite's own procedure for schema changes
    says, and checked before the commit: a violation rolls everything back.

    On PostgreSQL the transaction first takes a lock of its own: upgrades started together (one
    per machine of a deployment) read the version one after the other, and each but the first
    finds nothing left to do, where they all ran the same DDL and all but one failed.

    `upgrade` and Alembic's own command (alembic/env.py) both migrate through this, so neither
    can lose rows the other keeps.
    """
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        if sqlite:  # outside any transaction, where SQLite honours it
            driver.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                if not sqlite:  # SQLite's BEGIN IMMEDIATE already makes two upgrades take turns
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK})")
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise RuntimeError(f"migration left a broken foreign key: {tuple(broken)}")
        finally:
            if sqlite:
                driver.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` inside one transaction (see `migrating`).

    A database already past this code's head (a release rolled back) is refused in one line:
    Alembic's own answer was a traceback about a revision it cannot locate.
    """
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with migrating(engine) as conn:
        problem = schema_problem(_revision_on(conn), upgrading=True)
        if problem is not None:
            raise problem
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return _revision_on(conn)


def _revision_on(conn: Connection) -> str | None:
    """The revision in alembic_version, without Alembic's INFO lines about its context: a check is
    not news, and a refusal must stay one line."""
    runtime_log = logging.getLogger("alembic.runtime.migration")
    level = runtime_log.level
    runtime_log.setLevel(max(level, logging.WARNING))
    try:
        return MigrationContext.configure(conn).get_current_revision()
    finally:
        runtime_log.setLevel(level)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema_problem(current: str | None, *, upgrading: bool = False) -> ConfigError | None:
    """What is wrong with a database at revision `current` for this code, or None when nothing is.

    The one place that tells a schema behind this code (`calsync db upgrade` brings it up) from one
    ahead of it or unknown to it (made by a newer release, then rolled back): upgrading cannot fix
    that, and saying "run `calsync db upgrade`" sent operators round in a circle. With `upgrading`,
    only the second is a problem.
    """
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if current == head:
        return None
    if current is not None and current not in {s.revision for s in script.walk_revisions()}:
        return ConfigError(
            f"the database's schema ({current}) is newer than this calsync knows (head {head}): "
            "run the calsync release that made it, or restore a backup taken before it"
        )
    if upgrading:
        return None
    if current is None:
        return ConfigError("CALSYNC_DATABASE_URL: the database has no calsync schema (run `calsync db upgrade`)")
    return ConfigError(
        f"the database's schema ({current}) is older than this calsync's (head {head}): run `calsync db upgrade` first"
    )


def require_head(engine: Engine) -> None:
    """ConfigError unless the database is at this code's head: what every process and command
    that reads or writes it (and does not upgrade it) checks first."""
    problem = schema_problem(current_revision(engine))
    if problem is not None:
        raise problem
