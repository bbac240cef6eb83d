"""Many rows into one table, straight to the driver: COPY on PostgreSQL, executemany on SQLite.

A first sync writes thousands of mirror rows and as many change-log rows per page; the per-row work
of an ORM or Core insert cost more than the database's own. On PostgreSQL, COPY streams the rows as
one statement: on 2,500-event pages it took half the server time of an INSERT per row and a fifth of
the client's CPU. A few rows (a write through calsync, an incremental sync's page) go as one
multi-row INSERT instead: COPY costs two round trips (its start, then its end), an INSERT one.
Values must already be what the driver takes: JSON as text, times as the column's type binds them
(`bound`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, Table

from calsync.store.jsontext import dumps_text

# Up to this many rows, PostgreSQL gets one INSERT (one round trip) rather than COPY (two).
INSERT_UP_TO = 20


def insert_rows(connection: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows whose values are in `columns` order."""
    if not rows:
        return
    dialect = connection.dialect
    names = ", ".join(dialect.identifier_preparer.quote(name) for name in columns)
    if dialect.name == "postgresql" and len(rows) > INSERT_UP_TO:
        driver = connection.connection.driver_connection
        assert driver is not None  # a checked-out connection always has its driver's
        with driver.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    if dialect.name == "postgresql":
        row_marks = "(" + ", ".join("%s" for _ in columns) + ")"
        values = ", ".join(row_marks for _ in rows)
        flat = tuple(value for row in rows for value in row)
        connection.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES {values}", flat)
        return
    marks = ", ".join("?" for _ in columns)
    connection.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", list(rows))


def json_text(value: Any) -> str | None:
    """JSON as text for a JSON column (orjson: far cheaper than the json module); None stays NULL."""
    if value is None:
        return None
    return dumps_text(value)


def bound(connection: Connection, column: Column[Any], value: Any) -> Any:
    """`value` as the column's type hands it to the driver (a UTC time as SQLite's text, say)."""
    processor = column.type.dialect_impl(connection.dialect).bind_processor(connection.dialect)
    return processor(value) if processor is not None else value
