from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from alembic import command
from calsync.store.db import make_engine
from calsync.store.migrate import alembic_config, current_revision, head_revision, upgrade
from calsync.store.models import Base
from tests.pg_support import empty_database


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


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own, so a migration can start below head."""
    with empty_database(request.param, tmp_path, "calsync_migrate") as url:
        yield url


SEEDED = ("accounts", "calendars", "events", "changes", "channels", "deliveries", "delivery_attempts")


def seed_at_0002(engine: Engine) -> None:
    """A database at 0002 with a row or more in every table a migration's table copy could empty."""
    upgrade(engine, "0002")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (id, email, credentials, scopes, status, list_requested, list_done,"
                " list_error_count, created_at, updated_at) VALUES (7, 'a@example.com', :c, '[]',"
                " 'active', 1, 0, 0, :now, :now)"
            ),
            {"c": b"x", "now": now},
        )
        conn.execute(
            text(
                'INSERT INTO calendars (id, account_id, google_id, "primary", sync_state, baseline_done,'
                " full_sync_gen, sync_requested, sync_done, error_count, created_at) VALUES"
                " (3, 7, 'a@example.com', true, 'synced', true, 1, 1, 1, 0, :now)"
            ),
            {"now": now},
        )
        for seq, kind in ((1, "created"), (2, "updated"), (3, "deleted")):
            conn.execute(
                text(
                    "INSERT INTO changes (seq, calendar_id, event_id, kind, fields, detected_at)"
                    " VALUES (:seq, 3, 'ev1', :kind, '[]', :now)"
                ),
                {"seq": seq, "kind": kind, "now": now},
            )
        conn.execute(
            text(
                "INSERT INTO webhook_subscriptions (id, url, events, format, secret, status, created_at)"
                " VALUES ('wh_1', 'https://x.example/h', '[\"*\"]', 'standard', :s, 'active', :now)"
            ),
            {"s": b"s", "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (id, subscription_id, change_seq, message_id, state, attempts,"
                " created_at) VALUES (5, 'wh_1', 2, 'msg_wh_1_2', 'pending', 0, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms)"
                " VALUES (5, :now, 500, 12.5)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO events (calendar_id, google_id, status, data, seen_gen)"
                " VALUES (3, 'ev1', 'confirmed', '{\"id\": \"ev1\"}', 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO channels (id, account_id, calendar_id, kind, token_hash, status, created_at)"
                " VALUES ('ch_1', 7, 3, 'events', 'h', 'active', :now)"
            ),
            {"now": now},
        )


def row_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        counts = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in SEEDED}
    engine.dispose()
    return counts


def alembic_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Alembic's own command, run from the checkout (configured by pyproject.toml) on `url`."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("alembic")), *args],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "CALSYNC_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_0003_keeps_every_change_and_delivery_and_types_them(empty_db_url: str) -> None:
    """Rows written under 0002 survive 0003: changes typed, their account filled in, deliveries kept."""
    engine = make_engine(empty_db_url)
    seed_at_0002(engine)
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, type, account_id, calendar_id, event_id FROM changes ORDER BY seq")).all()
        assert [tuple(r) for r in rows] == [
            (1, "event.created", 7, 3, "ev1"),
            (2, "event.updated", 7, 3, "ev1"),
            (3, "event.deleted", 7, 3, "ev1"),
        ]
        assert conn.execute(text("SELECT change_seq FROM deliveries")).scalars().all() == [2]
        assert conn.execute(text("SELECT connected_at IS NOT NULL FROM accounts")).scalar_one()
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_upgrades_started_together_take_turns(empty_db_url: str) -> None:
    """One per machine of a deployment: on PostgreSQL they all ran the same DDL, and all but one
    failed (a duplicate type, a duplicate column)."""
    engines = [make_engine(empty_db_url) for _ in range(3)]
    failures: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            upgrade(engine)
        except BaseException as err:  # handed to the test's thread
            failures.append(err)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert current_revision(engines[0]) == head_revision()
    for engine in engines:
        engine.dispose()


def test_alembic_s_own_command_upgrades_from_a_checkout(tmp_path: Path) -> None:
    """Configured by pyproject.toml, with no alembic.ini: the environment asked the missing file
    for the URL and failed before reading CALSYNC_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    done = alembic_cli(url, "upgrade", "head")
    assert done.returncode == 0, done.stderr[-2000:]
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


@pytest.mark.parametrize(
    ("from_head", "args"),
    [
        # With SQLite's foreign keys on, dropping the old copy of calendars emptied events, changes,
        # channels, deliveries and their attempts through ON DELETE CASCADE, and the command said 0.
        (True, ("downgrade", "-1")),
        # 0003 copies changes: the DROP of its old copy emptied deliveries and delivery_attempts.
        (False, ("upgrade", "head")),
    ],
)
def test_alembic_s_own_command_keeps_every_row(empty_db_url: str, from_head: bool, args: tuple[str, str]) -> None:
    engine = make_engine(empty_db_url)
    seed_at_0002(engine)
    if from_head:
        upgrade(engine)
    engine.dispose()
    before = row_counts(empty_db_url)
    assert all(before.values()), before
    done = alembic_cli(empty_db_url, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert row_counts(empty_db_url) == before
    engine = make_engine(empty_db_url)
    head = ScriptDirectory.from_config(alembic_config()).get_revision("head")
    assert current_revision(engine) == (head.down_revision if from_head else head.revision)
    engine.dispose()
