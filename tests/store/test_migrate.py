from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from alembic import command
from calsync.store.db import make_engine
from calsync.store.migrate import alembic_config, current_revision, head_revision
from calsync.store.models import Base


def test_migration_history_has_a_single_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1


def test_migrations_match_the_models(db_url: str) -> None:
    """The fixture database was made by the migrations alone; the models must agree with it."""
    engine = make_engine(db_url)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    command.check(alembic_config(db_url))  # raises if autogenerate would emit any operation
    engine.dispose()
