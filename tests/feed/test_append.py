"""The change log's writer: seq in commit order, every column written as the ORM would read it back."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from calsync.feed import append as changelog
from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change

NOW = datetime(2026, 3, 1, 9, 30, 1, 250000, tzinfo=UTC)


def test_the_writer_names_every_column_of_the_table() -> None:
    assert set(changelog._COLUMNS) == {column.name for column in Change.__table__.columns}


def test_appended_rows_read_back_as_written_with_their_account_and_ref(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        account = Account(email="a@example.com", credentials=b"x", ref="user-42")
        session.add(account)
        session.flush()
        cal = Calendar(account_id=account.id, google_id="a@example.com")
        session.add(cal)
        session.flush()
        big = {"id": "e2", "n": 2**70, "nested": {"ü": [1.5, None, True]}}
        written = append_changes(
            session,
            [
                Change(calendar_id=cal.id, event_id="e1", kind="snapshot", fields=[], before=None, after={"id": "e1"}),
                Change(
                    calendar_id=cal.id,
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
        account_id, cal_id = account.id, cal.id
    with runtime.sessions() as session:
        rows = session.scalars(select(Change).order_by(Change.seq)).all()
        assert [
            (r.seq, r.type, r.account_id, r.calendar_id, r.event_id, r.ref, r.fields, r.before, r.after, r.detected_at)
            for r in rows
        ] == [
            (1, "event.snapshot", account_id, cal_id, "e1", "user-42", [], None, {"id": "e1"}, NOW),
            (2, "event.updated", account_id, cal_id, "e2", "user-42", ["n", "nested"], {"id": "e2"}, big, NOW),
        ]
