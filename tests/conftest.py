"""Shared fixtures: a real database (SQLite and PostgreSQL) on the real migrations, the emulator over
HTTP, and calsync's web app served on loopback so the emulator's push reaches it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import make_url, text
from werkzeug.serving import make_server

from calsync.config import Settings
from calsync.push.channels import open_events_channel
from calsync.runtime import Runtime
from calsync.store.crypto import new_key
from calsync.store.db import make_engine
from calsync.store.migrate import upgrade
from tests.openapi_support import CONFORMANCE, Conformance
from tests.push_support import add_calendar_row, connect_account, emu_channel

PG_ENV = "CALSYNC_TEST_DATABASE_URL"
API_TOKEN = "test-api-token"


# A shell that starts a command in the background without job control makes it ignore SIGINT, and
# an ignored signal stays ignored in every child: the tests that stop a `calsync` process with
# Ctrl-C (SIGINT) would wait for it in vain. A handler is reset to the default in a child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Every /api response against the OpenAPI document ----------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def openapi_conformance() -> Iterator[Conformance]:
    """Checks each /api response any calsync app gives during the session (tests.openapi_support)."""
    CONFORMANCE.start()
    yield CONFORMANCE
    CONFORMANCE.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    CONFORMANCE.take()  # what an earlier test left is that test's
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """A response outside the document fails the test that made it (in its fixtures or its body)."""
    result = yield
    CONFORMANCE.check()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    result = yield
    CONFORMANCE.check()
    return result


# Databases -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def _postgres_url() -> Iterator[str | None]:
    """A database of this test session's own, made beside the one CALSYNC_TEST_DATABASE_URL names,
    so that concurrent runs never truncate each other's tables."""
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return
    admin_url = make_url(Settings(database_url=url).database_url)
    name = f"calsync_test_{os.getpid()}"
    admin = make_engine(admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    own = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(own)
    upgrade(engine)
    engine.dispose()
    yield own
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        # A session a test left open (idle in its transaction, nobody to end it) would make the
        # TRUNCATE wait forever: end it, and never wait on a lock for long.
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
            )
        )
        conn.execute(text("SET LOCAL lock_timeout = '60s'"))
        tables = [
            r[0]
            for r in conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'")
            )
        ]
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        conn.execute(text("INSERT INTO counters (name, value) VALUES ('change_seq', 0)"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path) -> str:
    """Every database test runs on both engines; PostgreSQL skips only without CALSYNC_TEST_DATABASE_URL."""
    if request.param == "sqlite":
        path = tmp_path / "calsync.db"
        shutil.copy(_sqlite_template, path)
        return f"sqlite:///{path}"
    pg = request.getfixturevalue("_postgres_url")
    if pg is None:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_ENV} must be set in CI")
        pytest.skip(f"PostgreSQL run skipped: set {PG_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test")
    _truncate_postgres(pg)
    return str(pg)


# The emulator --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[object]:
    from calsync.emulator import Emulator

    emu = Emulator(access_token_ttl=3600)
    emu.start(host="127.0.0.1", port=0)
    yield emu
    emu.stop()


@pytest.fixture
def emu(_emulator_server: object) -> Iterator[object]:
    """The local Google, emptied for each test."""
    _emulator_server.reset()  # type: ignore[attr-defined]
    yield _emulator_server


# calsync -------------------------------------------------------------------------------------
@pytest.fixture
def public_port() -> int:
    return free_port()


@pytest.fixture
def settings(db_url: str, emu: object, tmp_path: Path, public_port: int) -> Settings:
    public_url = f"http://127.0.0.1:{public_port}"
    secrets_path = tmp_path / "client_secret.json"
    emu.write_client_secrets(secrets_path, [public_url + "/oauth2callback"])  # type: ignore[attr-defined]
    return Settings(
        database_url=db_url,
        google_client_secrets=secrets_path,
        google_api_url=emu.api_url,  # type: ignore[attr-defined]
        public_url=public_url,
        secret_key=None,
        token_key=new_key(),  # type: ignore[arg-type]
        api_token=API_TOKEN,  # type: ignore[arg-type]
        instance_path=tmp_path / "instance",
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.create(settings)
    yield rt
    rt.close()


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    from calsync import create_app

    application = create_app(runtime=runtime)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def api_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def live_server(app: Flask, public_port: int) -> Iterator[str]:
    """calsync's web app on the loopback port its settings name, so push from the emulator arrives."""
    server = make_server("127.0.0.1", public_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{public_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def watched(runtime: Runtime, emu: Any) -> dict[str, Any]:
    """One account, one calendar with an open events channel (as the emulator sees it)."""
    account_id = connect_account(runtime, emu, "ann@example.com")
    cal_id = add_calendar_row(runtime, account_id, "ann@example.com", sync_requested=1, sync_done=1, baseline_done=True)
    channel_id = open_events_channel(runtime, cal_id)
    return {"account_id": account_id, "calendar_id": cal_id, "channel": emu_channel(emu, channel_id)}
