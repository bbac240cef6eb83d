"""Operators' sign-ins: the guessing delay per client, shared by every process, and sessions that end."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from calsync.accounts.operator_sign_in import (
    FREE_FAILURES,
    claim_attempt,
    client_key,
    delay_after,
    end_session,
    forget_failures,
    session_is_live,
    start_session,
)
from calsync.store.db import make_engine, make_sessionmaker, transaction
from calsync.store.models import LoginFailure, OperatorSession

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_the_delay_is_free_then_doubles_up_to_five_minutes() -> None:
    assert [delay_after(n) for n in range(FREE_FAILURES)] == [0.0] * FREE_FAILURES
    assert [delay_after(n) for n in range(5, 10)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert delay_after(14) == delay_after(10_000) == 300.0


def test_a_client_is_its_ipv4_address_or_its_ipv6_network() -> None:
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key(None) == "unknown"


def test_attempts_sent_side_by_side_get_only_the_free_ones(db_url: str) -> None:
    """Twenty attempts at the same instant, each in its own transaction: five are checked, the rest wait."""
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    start = threading.Barrier(20)
    waits: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        start.wait()
        with transaction(sessions) as session:
            wait = claim_attempt(session, "203.0.113.7", NOW)
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(waits)[:FREE_FAILURES] == [0.0] * FREE_FAILURES
        assert all(w == 1.0 for w in sorted(waits)[FREE_FAILURES:])
        with transaction(sessions) as session:
            assert claim_attempt(session, "198.51.100.20", NOW) == 0.0, "another client is not held back"
            row = session.get(LoginFailure, "203.0.113.7")
            assert row is not None and row.failures == FREE_FAILURES
    finally:
        engine.dispose()


def test_failures_are_forgotten_after_a_right_password_or_an_hour_of_quiet(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        with transaction(sessions) as session:
            for _ in range(FREE_FAILURES):
                assert claim_attempt(session, "a", NOW) == 0.0
                assert claim_attempt(session, "b", NOW) == 0.0
            assert claim_attempt(session, "a", NOW) == 1.0
            forget_failures(session, "a")
            assert claim_attempt(session, "a", NOW) == 0.0
            assert claim_attempt(session, "b", NOW) == 1.0
            later = NOW + timedelta(hours=1, seconds=1)
            assert claim_attempt(session, "b", later) == 0.0
            row = session.get(LoginFailure, "b")
            assert row is not None and row.failures == 1
    finally:
        engine.dispose()


def test_a_session_lives_until_it_is_ended_or_expires_and_only_its_hash_is_stored(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        with transaction(sessions) as session:
            first, second = start_session(session, NOW), start_session(session, NOW)
        with transaction(sessions) as session:
            stored = set(session.scalars(select(OperatorSession.id_hash)))
            assert first not in stored and second not in stored and len(stored) == 2
            assert session_is_live(session, first, NOW) and session_is_live(session, second, NOW)
            assert end_session(session, first)
            assert not session_is_live(session, first, NOW)
            assert session_is_live(session, second, NOW + timedelta(hours=11))
            assert not session_is_live(session, second, NOW + timedelta(hours=12))
        with transaction(sessions) as session:  # expired rows go when the next session starts
            start_session(session, NOW + timedelta(hours=13))
            assert session.scalar(select(func.count()).select_from(OperatorSession)) == 1
    finally:
        engine.dispose()
