"""The edges (web, cli, demo) build no SQL: they call functions of the layers below that own the data.

A query written in a view or a command is a second definition of something a lower layer already
knows (which calendars are live, what a sync owes, which channel serves a calendar) and drifts
from it. This walks every module of the edges and fails on what builds or runs a statement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "calsync"
EDGES = ("web", "cli", "demo")

# What builds a statement; the edges may still name engines, sessions, URLs and sqlalchemy's errors.
SQL_BUILDERS = frozenset(
    {
        "select",
        "update",
        "insert",
        "delete",
        "func",
        "text",
        "and_",
        "or_",
        "not_",
        "case",
        "cast",
        "exists",
        "literal",
        "literal_column",
        "bindparam",
        "column",
        "table",
        "union",
        "union_all",
    }
)
# What runs one: Session.execute/scalars/scalar, Connection.execute, a driver cursor's execute.
SQL_RUNNERS = frozenset({"execute", "executemany", "scalars", "scalar", "query"})


def sql_in(path: Path) -> list[str]:
    """`line: what` for each SQL builder imported or used and each statement run in the module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: set[str] = set()  # names bound to the sqlalchemy package or one of its modules
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            found += [
                f"{node.lineno}: imports {a.name} from {node.module}" for a in node.names if a.name in SQL_BUILDERS
            ]
        elif isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "sqlalchemy"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr in SQL_BUILDERS:
                found.append(f"{node.lineno}: uses {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_RUNNERS:
            found.append(f"{node.lineno}: calls .{node.func.attr}(…)")
    return sorted(found, key=lambda line: (int(line.split(":")[0]), line))


def edge_modules() -> list[Path]:
    return sorted(path for edge in EDGES for path in (PACKAGE / edge).rglob("*.py"))


@pytest.mark.parametrize("path", edge_modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_the_edges_build_and_run_no_sql(path: Path) -> None:
    assert sql_in(path) == []


def test_the_walk_finds_sql_written_in_any_of_the_usual_ways(tmp_path: Path) -> None:
    module = tmp_path / "view.py"
    module.write_text(
        "import sqlalchemy as sa\n"
        "from sqlalchemy import Engine, func, select\n"
        "from sqlalchemy.orm import Session\n"
        "def view(session: Session) -> None:\n"
        "    session.scalars(select(1))\n"
        "    session.scalar(sa.select(func.count()))\n"
        "    session.execute(sa.text('SELECT 1'))\n"
        "    session.get(object, 1)\n"
    )
    assert sql_in(module) == [
        "2: imports func from sqlalchemy",
        "2: imports select from sqlalchemy",
        "5: calls .scalars(…)",
        "6: calls .scalar(…)",
        "6: uses sa.select",
        "7: calls .execute(…)",
        "7: uses sa.text",
    ]
