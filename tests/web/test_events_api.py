"""POST/PATCH/DELETE /api/calendars/{cal}/events over HTTP, on both engines: the answers of the document,
`origin` in the feed, concurrent PATCHes with one If-Match, and a retry after calsync was SIGKILLed between
Google's insert and its own commit."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select, text

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.models import Calendar, IdempotencyKey, QuotaBudget
from calsync.store.quota import PROJECT, Budget, Limits
from calsync.store.states import Priority
from calsync.sync import idempotency, turns
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.sync.run import sync_calendar
from tests.conftest import API_TOKEN, free_port
from tests.push_support import wait_for
from tests.sync_support import (
    READONLY,
    WRITER,
    assert_feed_rebuilds_mirror,
    changes,
    connect_account,
    google_view,
    mirror,
    writable_calendar,
)
from tests.web.process_support import web_env

ANN = "ann@example.com"
MEETING = {
    "summary": "Booking 42",
    "start": {"dateTime": "2026-03-02T10:00:00Z"},
    "end": {"dateTime": "2026-03-02T11:00:00Z"},
}
EVENTS = f"/api/calendars/{ANN}/events"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, google_scopes=WRITER)


@pytest.fixture
def cal(runtime: Runtime, emu: Any) -> int:
    return writable_calendar(runtime, emu, ANN)


def feed(client: FlaskClient, headers: dict[str, str], query: str = "") -> list[dict[str, Any]]:
    resp = client.get(f"/api/changes?after=0{query}", headers=headers)
    assert resp.status_code == 200, resp.json
    return [c for c in resp.json["changes"] if c["event_id"]]  # type: ignore[index]


def test_create_replay_and_reuse_answer_as_documented_and_the_feed_says_origin(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any, cal: int
) -> None:
    keyed = {**api_headers, "Idempotency-Key": "booking-42"}
    made = client.post(EVENTS + "?sendUpdates=none", json=MEETING, headers=keyed)
    assert made.status_code == 201, made.json
    assert made.json is not None and made.json["event"] == emu.events(ANN)[0]
    again = client.post(EVENTS + "?sendUpdates=none", json=MEETING, headers=keyed)
    assert (again.status_code, again.json) == (200, made.json)
    inserts = [r for r in emu.requests if r.api_method == "calendar.events.insert"]
    assert [r.params.get("sendUpdates") for r in inserts] == ["none"]  # passed through; the replay sent nothing
    reused = client.post(EVENTS, json={**MEETING, "summary": "x"}, headers=keyed)
    assert (reused.status_code, reused.json["error"]) == (422, "idempotency_key_reused")  # type: ignore[index]
    emu.insert_event(ANN, {**MEETING, "summary": "By Ann in Google"})
    sync_calendar(runtime, cal)
    rows = feed(client, api_headers)
    assert [(r["origin"], r.get("idempotency_key"), r["after"]["summary"]) for r in rows] == [
        ("api", "booking-42", "Booking 42"),
        ("google", None, "By Ann in Google"),
    ]
    assert [r["after"]["summary"] for r in feed(client, api_headers, "&origin=google")] == ["By Ann in Google"]
    assert [r["after"]["summary"] for r in feed(client, api_headers, "&origin=api")] == ["Booking 42"]
    bad = client.get("/api/changes?origin=app", headers=api_headers)
    assert (bad.status_code, bad.json["error"]) == (400, "bad_request")  # type: ignore[index]


def test_patch_and_delete_answer_with_the_mirrored_event_and_its_seq(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any, cal: int
) -> None:
    made = client.post(EVENTS, json=MEETING, headers=api_headers).json
    assert made is not None
    event_id, etag = made["event"]["id"], made["event"]["etag"]
    moved = client.patch(f"{EVENTS}/{event_id}", json={"summary": "Moved"}, headers={**api_headers, "If-Match": etag})
    assert moved.status_code == 200 and moved.json is not None
    assert moved.json["event"] == mirror(runtime, cal)[event_id] == emu.events(ANN)[0]
    assert moved.json["seq"] == made["seq"] + 1
    stale = client.delete(f"{EVENTS}/{event_id}", headers={**api_headers, "If-Match": etag})
    assert stale.status_code == 412 and stale.json is not None
    assert (stale.json["error"], stale.json["current"]) == ("precondition_failed", moved.json["event"])
    assert emu.events(ANN) == [moved.json["event"]]
    gone = client.delete(f"{EVENTS}/{event_id}", headers=api_headers)
    assert (gone.status_code, gone.json) == (200, {"seq": moved.json["seq"] + 1})
    assert client.get(f"/api/events?calendar={ANN}", headers=api_headers).json["items"] == []  # type: ignore[index]
    again = client.delete(f"{EVENTS}/{event_id}", headers=api_headers)
    assert (again.status_code, again.json["error"]) == (404, "not_found")  # type: ignore[index]
    sync_calendar(runtime, cal)
    assert [r["change"] for r in feed(client, api_headers)] == ["created", "updated", "deleted"]


def test_refusals_say_why_and_change_nothing(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any, cal: int
) -> None:
    for headers, body, error in (
        ({"Idempotency-Key": "é"}, MEETING, "bad_request"),
        ({}, ["no"], "bad_request"),
        ({}, {"summary": "no times"}, "invalid_event"),
    ):
        resp = client.post(EVENTS, json=body, headers={**api_headers, **headers})
        assert (resp.status_code, resp.json["error"]) == (400, error), resp.json  # type: ignore[index]
    unknown = client.post("/api/calendars/nobody@example.com/events", json=MEETING, headers=api_headers)
    assert unknown.status_code == 404
    assert client.post(EVENTS, json=MEETING).status_code == 401
    emu.create_user("bob@example.com")
    emu.share_calendar("bob@example.com", ANN, role="reader")
    refresh_calendar_list(runtime, 1)
    read_only = client.post("/api/calendars/bob@example.com/events", json=MEETING, headers=api_headers)
    assert (read_only.status_code, read_only.json["error"]) == (403, "forbidden")  # type: ignore[index]
    assert emu.events(ANN) == [] and emu.events("bob@example.com") == [] and feed(client, api_headers) == []


def test_a_write_the_quota_has_no_room_for_is_503_with_retry_after_and_frees_its_key(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any, cal: int
) -> None:
    """The user's budget spent to the last call writes may take: the write is put off to the app, as a
    503 it may retry after the seconds it names, not a 500; nothing reached Google, the key is free."""
    runtime.budget = Budget(runtime.sessions, runtime.clock, Limits(per_window=0, per_user_per_window=100), max_wait=0)
    with runtime.sessions() as session:
        account = session.scalars(select(Calendar.account_id).where(Calendar.id == cal)).one()
    while runtime.budget.try_take(Priority.WRITE, account) == 0.0:
        pass
    inserts = emu.count("calendar.events.insert")
    refused = client.post(EVENTS, json=MEETING, headers={**api_headers, "Idempotency-Key": "k"})
    assert (refused.status_code, refused.json["error"]) == (503, "quota_exhausted"), refused.json  # type: ignore[index]
    assert int(refused.headers["Retry-After"]) >= 1
    assert emu.count("calendar.events.insert") == inserts and feed(client, api_headers) == []
    with runtime.sessions() as session:
        assert session.scalars(select(IdempotencyKey)).all() == []


@contextmanager
def _turn_held(runtime: Runtime, calendar_id: int) -> Iterator[None]:
    """The calendar's turn held as another process's write or sync page holds it."""
    if runtime.engine.dialect.name != "postgresql":
        with turns.turn(runtime, calendar_id):  # its own open file: a lock of its own, even in this process
            yield
        return
    with runtime.engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k, :c)"), {"k": 0x63616C, "c": calendar_id})
        try:
            yield
        finally:
            holder.execute(text("SELECT pg_advisory_unlock_all()"))


def test_a_write_that_waits_too_long_for_its_calendar_is_503_and_sends_nothing(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any, cal: int, monkeypatch: Any
) -> None:
    """Work stuck while holding the calendar's turn (a stopped process, a hung socket) held every
    write of the calendar, each with a connection and a request thread, for as long as it stayed."""
    monkeypatch.setattr(turns, "TURN_WAIT", 0.3)
    inserts = emu.count("calendar.events.insert")
    with _turn_held(runtime, cal):
        started = time.monotonic()
        refused = client.post(EVENTS, json=MEETING, headers={**api_headers, "Idempotency-Key": "busy"})
        waited = time.monotonic() - started
    assert (refused.status_code, refused.json["error"]) == (503, "calendar_busy"), refused.json  # type: ignore[index]
    assert int(refused.headers["Retry-After"]) >= 1 and 0.3 <= waited < 3
    assert emu.count("calendar.events.insert") == inserts and feed(client, api_headers) == []
    with runtime.sessions() as session:
        assert session.scalars(select(IdempotencyKey)).all() == []  # the key is free for the retry
    retried = client.post(EVENTS, json=MEETING, headers={**api_headers, "Idempotency-Key": "busy"})
    assert retried.status_code == 201 and emu.count("calendar.events.insert") == inserts + 1


def test_a_busy_refusal_leaves_a_twin_in_flight_its_key(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, cal: int, monkeypatch: Any
) -> None:
    """The same key sent again while its first request holds the calendar (its call to Google under
    way): the second is refused as busy, and the key stays the first one's."""
    monkeypatch.setattr(turns, "TURN_WAIT", 0.3)
    digest = idempotency.body_hash(MEETING)
    with runtime.sessions.begin() as session:  # the first request's claim, committed before its call
        idempotency.claim(session, cal, "twin", digest, "twinevent", runtime.clock.now())
    with _turn_held(runtime, cal):
        refused = client.post(EVENTS, json=MEETING, headers={**api_headers, "Idempotency-Key": "twin"})
    assert refused.status_code == 503 and refused.json["error"] == "calendar_busy"  # type: ignore[index]
    with runtime.sessions() as session:
        assert [(k.key, k.body_hash, k.seq) for k in session.scalars(select(IdempotencyKey))] == [
            ("twin", digest, None)
        ]


def test_a_user_under_googles_calendar_usage_limits_gets_429_and_slows_nobody_else(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any, cal: int
) -> None:
    """Google's 403 `quotaExceeded` ("Calendar usage limits exceeded") is one user's calendar refusing
    changes for hours. It was taken for a rate limit of the project: a 503 to retry in a second, and
    every user's calls slowed to half pace. Now: a 429 naming it, to retry in an hour, the project's
    pace untouched, and the same key makes the event once the limit is lifted."""
    emu.fail_next(1, status=403, reason="quotaExceeded", method="calendar.events.insert")
    refused = client.post(EVENTS, json=MEETING, headers={**api_headers, "Idempotency-Key": "k"})
    assert (refused.status_code, refused.json["error"]) == (429, "calendar_usage_limits"), refused.json  # type: ignore[index]
    assert int(refused.headers["Retry-After"]) == 3600
    assert emu.events(ANN) == [] and feed(client, api_headers) == []
    with runtime.sessions() as session:
        project = session.get(QuotaBudget, PROJECT)
        assert project is not None and (project.factor, project.hold_until) == (1.0, 0.0)
    made = client.post(EVENTS, json=MEETING, headers={**api_headers, "Idempotency-Key": "k"})
    assert made.status_code == 201 and len(emu.events(ANN)) == 1
    assert [row["origin"] for row in feed(client, api_headers)] == ["api"]


def test_a_calendar_two_accounts_share_is_named_by_account_and_refusals_leave_its_turn_free(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any, cal: int
) -> None:
    """The write finds the calendar the app names itself (in the statement that takes the calendar's
    turn): one shared by two accounts needs `account=`; every refusal gives the turns back, so a sync
    of each calendar still commits."""
    bob = "bob@example.com"
    bobs = writable_calendar(runtime, emu, bob)
    emu.share_calendar(bob, ANN, role="writer")
    refresh_calendar_list(runtime, 1)
    shared = f"/api/calendars/{bob}/events"
    ambiguous = client.post(shared, json=MEETING, headers=api_headers)
    assert (ambiguous.status_code, ambiguous.json["error"]) == (400, "ambiguous_calendar")  # type: ignore[index]
    nobody = client.post(f"{shared}?account=carl@example.com", json=MEETING, headers=api_headers)
    assert nobody.status_code == 404
    stale = client.patch(f"{shared}/nope?account={bob}", json={"summary": "x"}, headers=api_headers)
    assert stale.status_code == 404  # Google's: no such event
    assert emu.count("calendar.events.insert") == 0
    made = client.post(f"{shared}?account={ANN}", json=MEETING, headers=api_headers)
    assert made.status_code == 201 and made.json is not None
    assert [e["id"] for e in emu.events(bob)] == [made.json["event"]["id"]]
    for calendar_id in (cal, bobs, *_calendar_ids(runtime, bob)):
        syncer = threading.Thread(target=sync_calendar, args=(runtime, calendar_id), daemon=True)
        syncer.start()
        syncer.join(10)
        assert not syncer.is_alive(), f"calendar {calendar_id}'s turn was left taken"
    assert made.json["event"]["id"] in mirror(runtime, bobs)


def _calendar_ids(runtime: Runtime, google_id: str) -> list[int]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Calendar.id).where(Calendar.google_id == google_id)))


def test_an_account_without_the_write_scope_gets_403_insufficient_scope_with_a_reconnect_hint(
    client: FlaskClient, api_headers: dict[str, str], runtime: Runtime, emu: Any
) -> None:
    account = connect_account(runtime, emu, ANN, scopes=(READONLY,))
    refresh_calendar_list(runtime, account)
    resp = client.post(EVENTS, json=MEETING, headers=api_headers)
    assert resp.status_code == 403 and resp.json is not None
    assert resp.json["error"] == "insufficient_scope" and "connect" in resp.json["reconnect"]
    assert emu.count("calendar.events.insert") == 0


def test_concurrent_patches_with_the_same_if_match_exactly_one_wins(
    live_server: str, runtime: Runtime, emu: Any, cal: int
) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    made = requests.post(live_server + EVENTS, json=MEETING, headers=headers, timeout=10).json()["event"]
    emu.slow_next(4, 0.2, method="calendar.events.patch")  # both are at Google at the same time
    start = threading.Barrier(4)
    answers: list[requests.Response] = []

    def patch(n: int) -> None:
        start.wait()
        answers.append(
            requests.patch(
                f"{live_server}{EVENTS}/{made['id']}",
                json={"summary": f"writer {n}"},
                headers={**headers, "If-Match": made["etag"]},
                timeout=20,
            )
        )

    threads = [threading.Thread(target=patch, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 412, 412, 412], [a.json() for a in answers]
    [winner] = [a.json()["event"] for a in answers if a.status_code == 200]
    assert all(a.json()["current"] == winner for a in answers if a.status_code == 412)
    assert emu.events(ANN) == [winner] and mirror(runtime, cal)[made["id"]] == winner
    sync_calendar(runtime, cal)
    assert [c.origin for c in changes(runtime, cal)] == ["api", "api"]
    assert_feed_rebuilds_mirror(runtime, cal)


@contextmanager
def web_process(settings: Settings, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`calsync web` in a process group of its own, so the test can SIGKILL it whole."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "calsync"), "web", "--port", str(port), "--workers", "1"],
            env=web_env(settings, CALSYNC_GOOGLE_SCOPES=" ".join(WRITER)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(base + "/api/openapi.json", timeout=2).status_code == 200
        except requests.RequestException:
            return proc.poll() is not None

    try:
        wait_for(up, timeout=60, interval=0.1, what="calsync web")
        assert proc.poll() is None, log.read_text()
        yield base, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_retry_after_calsync_was_killed_between_googles_insert_and_its_commit_makes_one_event(
    settings: Settings, runtime: Runtime, emu: Any, cal: int, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "order-1001"}
    emu.fail_after_write(1, hold=30, status=None, method="calendar.events.insert")  # made, answer held
    lost: list[BaseException] = []
    with web_process(settings, tmp_path / "web.log") as (base, proc):

        def post() -> None:
            try:
                requests.post(base + EVENTS, json=MEETING, headers=headers, timeout=60)
            except requests.RequestException as err:
                lost.append(err)

        caller = threading.Thread(target=post)
        caller.start()
        wait_for(lambda: len(emu.events(ANN)) == 1, timeout=20, interval=0.02, what="Google's insert")
        os.killpg(proc.pid, signal.SIGKILL)  # calsync dies with Google's answer on its way
        proc.wait(timeout=10)
        caller.join(timeout=60)
    assert lost, "the caller must not have had an answer"
    assert changes(runtime, cal) == []  # nothing committed in calsync
    with web_process(settings, tmp_path / "web.log") as (base, _):
        retry = requests.post(base + EVENTS, json=MEETING, headers=headers, timeout=30)
        assert retry.status_code == 201, retry.text
        replay = requests.post(base + EVENTS, json=MEETING, headers=headers, timeout=30)
        assert (replay.status_code, replay.json()) == (200, retry.json())
    [made] = emu.events(ANN)
    assert retry.json()["event"] == made
    [row] = changes(runtime, cal)
    assert (row.seq, row.origin, row.idempotency_key) == (retry.json()["seq"], "api", "order-1001")
    sync_calendar(runtime, cal)
    assert mirror(runtime, cal) == google_view(emu, ANN) and len(changes(runtime, cal)) == 1
