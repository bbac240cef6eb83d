"""The change log's writer: seq in commit order, every column written as the ORM would read it back."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select

from calsync.feed import append as changelog
from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.bulk import INSERT_UP_TO
from calsync.store.db import transaction
from calsync.store.models import Change, IdempotencyKey
from calsync.store.states import Origin
from tests.sync_support import stored_calendar

NOW = datetime(2026, 3, 1, 9, 30, 1, 250000, tzinfo=UTC)


def test_the_writer_names_every_column_of_the_table() -> None:
    assert set(changelog._COLUMNS) == {column.name for column in Change.__table__.columns}


def test_appended_rows_read_back_as_written_with_their_account_and_ref(runtime: Runtime) -> None:
    account_id, cal_id = stored_calendar(runtime, ref="user-42")
    with transaction(runtime.sessions) as session:
        big = {"id": "e2", "n": 2**70, "nested": {"ü": [1.5, None, True]}}
        written = append_changes(
            session,
            [
                Change(calendar_id=cal_id, event_id="e1", kind="snapshot", fields=[], before=None, after={"id": "e1"}),
                Change(
                    calendar_id=cal_id,
                    event_id="e2",
                    kind="updated",
                    fields=["n", "nested"],
                    before={"id": "e2"},
                    after=big,
                ),
            ],
            NOW,
        )
        assert [c.seq for c in written] == [1, 2]
    with runtime.sessions() as session:
        rows = session.scalars(select(Change).order_by(Change.seq)).all()
        assert [
            (r.seq, r.type, r.account_id, r.calendar_id, r.event_id, r.ref, r.fields, r.before, r.after, r.detected_at)
            for r in rows
        ] == [
            (1, "event.snapshot", account_id, cal_id, "e1", "user-42", [], None, {"id": "e1"}, NOW),
            (2, "event.updated", account_id, cal_id, "e2", "user-42", ["n", "nested"], {"id": "e2"}, big, NOW),
        ]


def _calendar(runtime: Runtime) -> int:
    return stored_calendar(runtime, ref="user-42")[1]


def _rows(cal: int, n: int, tag: str) -> list[Change]:
    return [
        Change(calendar_id=cal, event_id=f"{tag}{i}", kind="created", fields=[], before=None, after={"id": f"{tag}{i}"})
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [1, 3, INSERT_UP_TO + 5])
def test_a_commit_that_takes_seqs_while_another_holds_them_follows_it(runtime: Runtime, n: int) -> None:
    """A writes and has not committed; B's append waits for A's commit, and B's seqs come after A's:
    a reader paging by seq never sees B's rows before A's. Few rows (one statement on PostgreSQL) and
    many (COPY) alike."""
    cal = _calendar(runtime)
    first = runtime.sessions()
    first.begin()
    a = [c.seq for c in append_changes(first, _rows(cal, n, "a"), NOW)]
    b_seqs: list[int] = []
    b = threading.Thread(target=lambda: b_seqs.extend(_append_in_own_transaction(runtime, _rows(cal, n, "b"))))
    b.start()
    b.join(timeout=1.0)
    assert b.is_alive(), "B took seqs while A held the counter"
    first.commit()
    first.close()
    b.join(timeout=30)
    assert a == list(range(1, n + 1)) and b_seqs == list(range(n + 1, 2 * n + 1))
    with runtime.sessions() as session:
        rows = session.execute(select(Change.seq, Change.event_id).order_by(Change.seq)).all()
    assert rows == [(i + 1, f"a{i}") for i in range(n)] + [(n + i + 1, f"b{i}") for i in range(n)]


def _append_in_own_transaction(runtime: Runtime, rows: list[Change]) -> list[int]:
    with transaction(runtime.sessions) as session:
        return [c.seq for c in append_changes(session, rows, NOW)]


def test_a_few_rows_take_their_seqs_and_are_inserted_in_one_statement_on_postgresql(runtime: Runtime) -> None:
    """Each commit that writes changes (every write through calsync, most syncs) pays one round trip
    for them, not two (the counter, then the rows)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no round trips")
    cal = _calendar(runtime)
    statements: list[str] = []
    event.listen(runtime.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    with transaction(runtime.sessions) as session:
        written = append_changes(session, _rows(cal, 3, "e"), NOW)
    assert [c.seq for c in written] == [1, 2, 3]
    ours = [sql for sql in statements if "counters" in sql or "changes" in sql]  # (not the accounts' refs)
    assert len(ours) == 1 and "UPDATE counters" in ours[0] and "INSERT INTO changes" in ours[0]


@pytest.mark.parametrize("n", [1, 2, INSERT_UP_TO + 5])
def test_rows_with_a_key_mark_its_claim_committed_at_their_last_seq_and_leave_other_keys_alone(
    runtime: Runtime, n: int
) -> None:
    """A creation's feed rows carry its Idempotency-Key: appending them marks the key's claim at their
    last seq (on PostgreSQL within the one statement that numbers and inserts a few rows); a claim
    already committed, or of another calendar, keeps what it had."""
    cal = _calendar(runtime)
    other = stored_calendar(runtime, ref="user-43", email="bob@example.com")[1]
    with transaction(runtime.sessions) as session:
        for calendar_id, key, seq in [(cal, "k1", None), (cal, "k2", 99), (other, "k1", None)]:
            session.add(
                IdempotencyKey(calendar_id=calendar_id, key=key, body_hash="h", event_id="e", seq=seq, created_at=NOW)
            )
    rows = _rows(cal, n, "a")
    for row in rows:
        row.origin, row.idempotency_key = Origin.API, "k1"
    rows += _rows(cal, 1, "b")  # no key
    rows[-1].origin, rows[-1].idempotency_key = Origin.API, "k2"
    statements: list[str] = []
    event.listen(runtime.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    with transaction(runtime.sessions) as session:
        written = append_changes(session, rows, NOW)
    appending = list(statements)
    last_k1 = max(c.seq for c in written if (c.event_id or "").startswith("a"))
    with runtime.sessions() as session:
        marks = {(k.calendar_id, k.key): k.seq for k in session.scalars(select(IdempotencyKey))}
    assert marks == {(cal, "k1"): last_k1, (cal, "k2"): 99, (other, "k1"): None}
    if runtime.engine.dialect.name == "postgresql" and len(rows) <= INSERT_UP_TO:
        ours = [sql for sql in appending if "idempotency_keys" in sql or "changes" in sql]
        assert len(ours) == 1, ours
