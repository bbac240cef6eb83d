"""Schema management through Alembic, the only way the schema is made or changed."""

from __future__ import annotations

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from alembic import command
from calsync.store.locations import resource_dir

UPGRADE_LOCK = 0x63616C73796E63  # "calsync": the key of the upgrade's transaction-level advisory lock


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("alembic")))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` inside one transaction.

    On SQLite, changing a column means copying its table and dropping the old one, and a DROP
    TABLE with foreign keys on first deletes its rows, cascading into the tables that refer to it.
    So foreign keys are off during the migration, as SQLite's own procedure for schema changes
    says, and checked before the commit: a violation rolls everything back.

    On PostgreSQL an upgrade first takes a lock of its own for the transaction: upgrades started
    together (one per machine of a deployment) read the version one after the other, and each but
    the first finds nothing left to do, where they all ran the same DDL and all but one failed.
    """
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        if sqlite:  # outside any transaction, where SQLite honours it
            driver.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                if not sqlite:  # SQLite's BEGIN IMMEDIATE already makes two upgrades take turns
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK})")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise RuntimeError(f"migration left a broken foreign key: {tuple(broken)}")
        finally:
            if sqlite:
                driver.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
