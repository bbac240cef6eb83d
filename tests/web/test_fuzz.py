"""Bad input never breaks calsync: fuzzed notification headers get 2xx/4xx, never 5xx; schemathesis fuzzes
every /api operation of the OpenAPI document against a live `calsync web`, alone and in linked sequences
(create a webhook, read, patch, rotate, delete it). A rejected request writes nothing (only the bounded
notification log may note a rejected notification)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, GenerationMode
from schemathesis import Case as GenericCase
from sqlalchemy import select, text

from calsync.config import Settings
from calsync.feed.append import append_changes
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.models import Account, Calendar, Change, Channel, Event, Notification
from calsync.sync.calendar_list import refresh_calendar_list
from calsync.web.openapi import document
from tests.conftest import API_TOKEN
from tests.sync_support import WRITER, connect_account
from tests.web.process_support import calsync_web
from tests.webhooks.receiver import Receiver

Case = GenericCase[APIOperation[Any, Any, Any, Any]]
TOKEN = "the-right-token"
CHANNEL_ID = "0b7c1e2a-5f0e-4b7a-9d54-fuzzchannel01"
RESOURCE_ID = "fuzz-resource-id"
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
NOTIFICATION_ANSWERS = document()["paths"]["/notifications"]["post"]["responses"]
# Tables a rejected request must leave exactly as they were (the notification log is checked apart).
GUARDED = (
    "accounts",
    "calendars",
    "channels",
    "events",
    "changes",
    "webhook_subscriptions",
    "deliveries",
    "connect_sessions",
)


@pytest.fixture
def world(runtime: Runtime, emu: Any) -> dict[str, Any]:
    """One account, a calendar with an event, a change in the log and a live channel with a known token;
    and an account of the emulator whose grant may write, with its calendar listed."""
    refresh_calendar_list(runtime, connect_account(runtime, emu, WRITER_EMAIL, scopes=WRITER))
    now = runtime.clock.now()
    with transaction(runtime.sessions) as session:
        account = Account(
            email="fuzz@example.com",
            credentials=runtime.cipher.encrypt_str("{}"),
            scopes=[],
            status="active",
            list_requested=0,
            list_done=0,
        )
        session.add(account)
        session.flush()
        cal = Calendar(
            account_id=account.id,
            google_id="fuzz@example.com",
            baseline_done=True,
            sync_requested=1,
            sync_done=1,
            sync_state="synced",
            due_at=now + timedelta(hours=1),
        )
        session.add(cal)
        session.flush()
        data = {"id": "ev1", "summary": "Fuzz", "status": "confirmed"}
        session.add(Event(calendar_id=cal.id, google_id="ev1", status="confirmed", data=data))
        session.add(
            Channel(
                id=CHANNEL_ID,
                account_id=account.id,
                calendar_id=cal.id,
                kind="events",
                token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
                resource_id=RESOURCE_ID,
                status="active",
                expires_at=now + timedelta(days=7),
                created_at=now,
            )
        )
        append_changes(
            session,
            [Change(calendar_id=cal.id, event_id="ev1", kind="created", fields=[], before=None, after=data)],
            now,
        )
    return {"calendar": "fuzz@example.com"}


def _header_text() -> st.SearchStrategy[str]:
    """What a server can receive: any bytes (here UTF-8 of any text, NUL included) read as latin-1, no line breaks."""
    raw = st.one_of(
        st.text(max_size=80),
        st.text(max_size=5000),
        st.integers(5_000, 20_000).map(lambda n: "x" * n),
        st.integers(-(2**70), 2**70).map(str),
        st.just(""),
        st.just(" "),
    )
    return raw.map(lambda s: s.encode("utf-8").decode("latin-1")).map(lambda s: s.replace("\r", "").replace("\n", ""))


def _maybe(values: st.SearchStrategy[str], *known: str) -> st.SearchStrategy[str | None]:
    options = [st.none(), values] + ([st.sampled_from(known)] if known else [])
    return st.one_of(*options)


notification_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Goog-Channel-ID": _maybe(_header_text(), CHANNEL_ID, "unknown-channel"),
        "X-Goog-Channel-Token": _maybe(_header_text(), TOKEN, ""),
        "X-Goog-Resource-ID": _maybe(_header_text(), RESOURCE_ID),
        "X-Goog-Resource-State": _maybe(_header_text(), "sync", "exists", "not_exists", "EXISTS"),
        "X-Goog-Message-Number": _maybe(_header_text(), "1", "2", "99999999999999999999", "-3", "1e9", "٣"),
        "X-Goog-Resource-URI": _maybe(_header_text()),
        "X-Goog-Channel-Expiration": _maybe(_header_text(), "Tue, 19 Nov 2013 01:13:52 GMT"),
        "Content-Type": _maybe(_header_text(), "application/json"),
    },
)


def _snapshot(runtime: Runtime) -> dict[str, Any]:
    with runtime.engine.connect() as conn:
        state = {t: sorted(map(repr, conn.execute(text(f"SELECT * FROM {t}")).all())) for t in GUARDED}
    return state


def _log(runtime: Runtime) -> list[Notification]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


@settings(FUZZ, max_examples=200)
@given(headers=notification_headers, body=st.one_of(st.just(b""), st.binary(max_size=2000)))
@example(
    headers={
        "X-Goog-Channel-ID": CHANNEL_ID,
        "X-Goog-Channel-Token": TOKEN,
        "X-Goog-Resource-ID": RESOURCE_ID,
        "X-Goog-Resource-State": "exists",
        "X-Goog-Message-Number": "7",
    },
    body=b"",
)
@example(
    headers={
        "X-Goog-Channel-ID": CHANNEL_ID,
        "X-Goog-Channel-Token": TOKEN + "x",
        "X-Goog-Resource-ID": RESOURCE_ID,
        "X-Goog-Resource-State": "exists",
        "X-Goog-Message-Number": "8",
    },
    body=b"",
)
def test_fuzzed_notifications_get_2xx_or_4xx_and_rejected_ones_write_nothing(
    client: FlaskClient, runtime: Runtime, world: dict[str, Any], headers: Any, body: Any
) -> None:
    before, log_before = _snapshot(runtime), len(_log(runtime))
    resp = client.post("/notifications", headers={k: v for k, v in headers.items() if v is not None}, data=body)
    assert resp.status_code < 500, (resp.status_code, headers)
    assert str(resp.status_code) in NOTIFICATION_ANSWERS, resp.status_code
    log = _log(runtime)
    assert len(log) <= log_before + 1
    if resp.status_code >= 400:
        assert _snapshot(runtime) == before, headers
        assert all(n.outcome not in {"queued", "sync", "duplicate"} for n in log[log_before:])
    else:
        after = _snapshot(runtime)
        for table in ("accounts", "events", "changes", "webhook_subscriptions", "deliveries"):
            assert after[table] == before[table], table


# /api: schemathesis against a live `calsync web` ------------------------------------------------------
API_EXAMPLES = 600  # cases drawn across all operations (each must be reached), half valid and half not
STATEFUL_SCENARIOS = 30
# Requests that fit the document but are refused for what only the server can know: a URL that does
# not resolve, is private or fails the verification; a page token calsync never handed out; delivery
# ids that are not the subscription's; a time window whose end is not after its start, or longer than 366 days;
# a return_to outside CALSYNC_RETURN_URLS; a ref, login hint or connection code with a character Unicode does
# not call printable.
SEMANTIC_REFUSALS = {
    "createWebhook": ["400", "422"],
    "listEvents": ["400"],
    "replayWebhookDeliveries": ["400"],
    "queryFreeBusy": ["400"],
    "createConnectSession": ["400"],
    "confirmConnection": ["400"],
    "listAccounts": ["400"],
    "disconnectAccount": ["400"],
    # Writes: the world's first account may not write (403 insufficient_scope); Google refuses events
    # it finds malformed (400) or unknown (404), a stale If-Match (412), a reused key (422), an id
    # the calendar holds (409).
    "createEvent": ["400", "403", "409", "422"],
    "patchEvent": ["400", "403", "412"],
    "deleteEvent": ["400", "403", "412"],
}
WRITER_EMAIL = "fuzz-writer@example.com"


class LiveAPI:
    def __init__(self, schema: BaseSchema, receiver: Receiver, runtime: Runtime) -> None:
        self.schema = schema
        self.receiver = receiver
        self.runtime = runtime
        self.calls: list[tuple[str, str, int]] = []  # (method, path template, status)

    def call(self, case: Case) -> Any:
        """Send the case and run every schemathesis check on the answer; a refusal must store nothing."""
        before = _snapshot(self.runtime)
        response = case.call()
        self.settle(case, response, before)
        case.validate_response(response)
        return response

    def settle(self, case: Case, response: Any, before: dict[str, Any]) -> None:
        self.calls.append((case.method.upper(), case.path, response.status_code))
        if response.status_code >= 400:
            assert _snapshot(self.runtime) == before, (case.method, case.formatted_path, response.status_code)


@pytest.fixture
def live_api(settings: Settings, runtime: Runtime, world: dict[str, Any], tmp_path: Path) -> Iterator[LiveAPI]:
    """The document as served by a real `calsync web` on this test's database, loaded by schemathesis.

    Webhook endpoints are verified by a real loopback subscriber: about half the valid subscription
    requests get its URL, so that creations succeed and the links can be followed.
    """
    receiver = Receiver().start()
    env = {
        "CALSYNC_WEBHOOK_ALLOW_HTTP": "1",
        "CALSYNC_WEBHOOK_ALLOW_PRIVATE": "1",
        "CALSYNC_WEBHOOK_VERIFY_TIMEOUT": "1",
    }
    try:
        with calsync_web(settings, tmp_path / "web.log", **env) as base:
            config = schemathesis.Config.from_dict(
                {
                    "headers": {"Authorization": f"Bearer {API_TOKEN}"},
                    "operations": [
                        {
                            "include-operation-id": op,
                            "checks": {
                                "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "404", *statuses]}
                            },
                        }
                        for op, statuses in SEMANTIC_REFUSALS.items()
                    ],
                }
            )
            loaded = schemathesis.openapi.from_url(base + "/api/openapi.json", config=config)
            loaded.config.update(base_url=base)
            schema = loaded.include(path_regex="^/api/")  # /notifications has its own fuzzer above

            @schema.hook
            def flatmap_case(context: Any, case: Case) -> st.SearchStrategy[Case]:
                """Point about half the valid subscription requests at the subscriber (never an invalid
                one: it must stay invalid)."""
                if context.operation.path.startswith("/api/calendars/") and "calendar_id" in case.path_parameters:
                    return st.sampled_from([None, "fuzz@example.com", WRITER_EMAIL]).map(
                        lambda google_id: _at_calendar(case, google_id)
                    )
                if (
                    context.operation.label != "POST /api/webhooks"
                    or not isinstance(case.body, dict)
                    or case.meta is None
                    or case.meta.generation.mode != GenerationMode.POSITIVE
                ):
                    return st.just(case)
                body: dict[str, Any] = case.body

                def point(at_receiver: bool) -> Case:
                    if at_receiver:
                        case.body = {**body, "url": receiver.url}
                    return case

                return st.booleans().map(point)

            yield LiveAPI(schema, receiver, runtime)
    finally:
        receiver.stop()


def _at_calendar(case: Case, google_id: str | None) -> Case:
    """A write case pointed at one of the world's calendars (None: left as generated, mostly unknown)."""
    if google_id is not None:
        case.path_parameters = {**case.path_parameters, "calendar_id": google_id}
    return case


def test_schemathesis_finds_no_5xx_no_response_outside_the_document_and_no_write_by_a_refusal(
    live_api: LiveAPI,
) -> None:
    cases = st.one_of(
        live_api.schema.as_strategy(GenerationMode.POSITIVE), live_api.schema.as_strategy(GenerationMode.NEGATIVE)
    )

    @settings(FUZZ, max_examples=API_EXAMPLES)
    @given(case=cases)
    def fuzz(case: Case) -> None:
        live_api.call(case)

    fuzz()
    print(
        f"schemathesis: {len(live_api.calls)} requests, {sum(status >= 400 for *_, status in live_api.calls)} refused"
    )
    operations = {(method, path) for method, path, _ in live_api.calls}
    assert len(operations) == len(list(live_api.schema.get_all_operations())), operations
    assert any(status == 201 for method, path, status in live_api.calls if path == "/api/webhooks")
    assert any(status == 400 for *_, status in live_api.calls)


def test_schemathesis_follows_the_webhook_links_statefully(live_api: LiveAPI) -> None:
    class Scenario(live_api.schema.as_state_machine()):  # type: ignore[misc]
        """Every schemathesis check on each step (the base class runs them), and the snapshot."""

        def before_call(self, case: Case) -> None:
            self.before = _snapshot(live_api.runtime)

        def after_call(self, response: Any, case: Case) -> None:
            super().after_call(response, case)
            live_api.settle(case, response, self.before)

    Scenario.run(settings=settings(FUZZ, max_examples=STATEFUL_SCENARIOS, stateful_step_count=6))
    print(
        f"schemathesis stateful: {len(live_api.calls)} requests, "
        f"{sum(status >= 400 for *_, status in live_api.calls)} refused"
    )
    followed = {(method, path) for method, path, status in live_api.calls if status < 300 and "{sub_id}" in path}
    assert {
        ("GET", "/api/webhooks/{sub_id}"),
        ("PATCH", "/api/webhooks/{sub_id}"),
        ("DELETE", "/api/webhooks/{sub_id}"),
    } <= followed, sorted(set(live_api.calls))
