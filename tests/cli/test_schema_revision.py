"""A database whose schema is not this code's head, told in one line by every command, with what to run.

Ahead (a release rolled back after it upgraded the database): `calsync db upgrade` and `serve`
printed Alembic's traceback, `web` and `worker` said to run `calsync db upgrade`, which cannot help.
Behind: reading commands said "the database cannot be reached: no such column".
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from calsync.cli import _database_problem
from calsync.store.crypto import new_key
from calsync.store.db import make_engine
from calsync.store.migrate import alembic_config, head_revision, upgrade
from tests.cli.test_status import one_line_error
from tests.pg_support import empty_database

CALSYNC = str(Path(sys.executable).with_name("calsync"))
HEAD = head_revision() or ""
AHEAD = f"{int(HEAD) + 1:04d}"  # the revision the next release will add
BEHIND = ScriptDirectory.from_config(alembic_config()).get_revision("head").down_revision
# Commands that only read or act on the database: each checks the revision before its first statement.
READERS = (
    ["status"],
    ["changes"],
    ["freebusy", "primary"],
    ["webhooks", "list"],
    ["events", "delete", "primary", "e1"],
    ["db", "reencrypt"],
)
NEWER = f"the database's schema ({AHEAD}) is newer than this calsync knows (head {HEAD}): run the calsync release"


@pytest.fixture(params=["sqlite", "postgresql"])
def own_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own: these tests set its revision where the shared ones cannot go."""
    with empty_database(request.param, tmp_path, "calsync_revision") as url:
        yield url


def at_revision(url: str, revision: str) -> None:
    """The database upgraded to `revision`, or stamped AHEAD as a newer release leaves it."""
    engine = make_engine(url)
    upgrade(engine, HEAD if revision == AHEAD else revision)
    if revision == AHEAD:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": AHEAD})
    engine.dispose()


def run(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env.update(CALSYNC_DATABASE_URL=url, CALSYNC_TOKEN_KEY=new_key(), CALSYNC_INSTANCE_PATH=str(tmp_path))
    return subprocess.run([CALSYNC, *args], env=env, capture_output=True, text=True, timeout=90)


def test_a_database_ahead_of_the_code_is_refused_by_every_command(own_url: str, tmp_path: Path) -> None:
    at_revision(own_url, AHEAD)
    for command in (["db", "upgrade"], ["serve", "--port", "0"], ["web", "--port", "0"], ["worker"], *READERS):
        line = one_line_error(run(own_url, tmp_path, *command))
        assert line.startswith(f"error: {NEWER}"), (command, line)
    current = run(own_url, tmp_path, "db", "current")  # the revision on stdout, and what it means
    assert current.returncode == 0 and current.stdout == f"{AHEAD}\n"
    assert current.stderr.startswith(f"note: {NEWER}")
    engine = make_engine(own_url)
    with engine.connect() as conn:  # refused, not rolled back nor touched
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == AHEAD
    engine.dispose()


def test_db_upgrade_names_a_revision_alembic_does_not_know_without_a_traceback(own_url: str, tmp_path: Path) -> None:
    """Alembic logs its context as an upgrade starts; the refusal after it is one line."""
    done = run(own_url, tmp_path, "db", "upgrade", "--revision", "nosuch")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: cannot upgrade to 'nosuch': Can't locate revision identified by 'nosuch'"
    )


def test_a_database_behind_the_code_is_told_to_upgrade(own_url: str, tmp_path: Path) -> None:
    assert BEHIND is not None
    at_revision(own_url, str(BEHIND))
    older = f"error: the database's schema ({BEHIND}) is older than this calsync's (head {HEAD}): "
    for command in (["worker", "--burst"], ["web", "--port", "0"], *READERS):
        line = one_line_error(run(own_url, tmp_path, *command))
        assert line == older + "run `calsync db upgrade` first", (command, line)
    upgraded = run(own_url, tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    shown = run(own_url, tmp_path, "status")
    assert shown.returncode == 0, shown.stderr[-2000:]


def test_a_statement_failing_on_a_schema_behind_the_code_says_so(
    own_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command checks the revision first; a statement that still fails on a column the schema
    lacks (the schema moved under a running command) is told the same way, not as "cannot be reached"
    (an OperationalError on SQLite, a ProgrammingError on PostgreSQL)."""
    at_revision(own_url, "0002")
    monkeypatch.setenv("CALSYNC_DATABASE_URL", own_url)
    engine = make_engine(own_url)
    try:
        with pytest.raises(DBAPIError) as failed, engine.connect() as conn:
            conn.execute(text("SELECT ref FROM accounts"))  # a column added after 0002
    finally:
        engine.dispose()
    assert _database_problem(failed.value) == (
        f"the database's schema (0002) is older than this calsync's (head {HEAD}): run `calsync db upgrade` first"
    )
