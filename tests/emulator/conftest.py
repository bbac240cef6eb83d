"""Shared fixtures: one emulator per session (reset per test), API clients nobody here wrote,
and a tiny webhook receiver recording what Google-style push delivers."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import google.oauth2.credentials
import pytest
from googleapiclient.discovery import build

from calsync.emulator import Emulator

ALICE = "alice@example.com"
READONLY = "https://www.googleapis.com/auth/calendar.readonly"
FULL = "https://www.googleapis.com/auth/calendar"


@pytest.fixture(scope="session")
def _server() -> Iterator[Emulator]:
    emu = Emulator(seed=7, push_retry_base=0.05, push_max_attempts=3, push_timeout=2.0).start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(_server: Emulator) -> Iterator[Emulator]:
    """A started emulator with no state left over from other tests."""
    _server.reset()
    yield _server
    _server.wait_push_idle(2.0)
    _server.reset()


@pytest.fixture
def alice(emu: Emulator) -> str:
    return emu.create_user(ALICE, "Alice")


def credentials_for(emu: Emulator, tokens: dict[str, Any]) -> google.oauth2.credentials.Credentials:
    web = emu.client_config(["http://127.0.0.1/cb"])["web"]
    return google.oauth2.credentials.Credentials(
        token=tokens["access_token"],
        refresh_token=tokens.get("refresh_token"),
        token_uri=emu.url + "/token",
        client_id=web["client_id"],
        client_secret=web["client_secret"],
        scopes=tokens["scope"].split(),
    )


def service_for(emu: Emulator, tokens: dict[str, Any]) -> Any:
    """google-api-python-client's Calendar service pointed at the emulator (static discovery)."""
    return build(
        "calendar",
        "v3",
        credentials=credentials_for(emu, tokens),
        cache_discovery=False,
        client_options={"api_endpoint": emu.api_url + "calendar/v3/"},
    )


@pytest.fixture
def service(emu: Emulator, alice: str) -> Any:
    """Alice's read-only Calendar client."""
    return service_for(emu, emu.issue_tokens(alice))


@pytest.fixture
def writer(emu: Emulator, alice: str) -> Any:
    """Alice's read-write Calendar client."""
    return service_for(emu, emu.issue_tokens(alice, scopes=(FULL,)))


def timed(day: int, hour: int, summary: str = "meeting", **extra: Any) -> dict[str, Any]:
    """An event body on 2030-01-<day> at <hour>:00 UTC lasting one hour."""
    return {
        "summary": summary,
        "start": {"dateTime": f"2030-01-{day:02d}T{hour:02d}:00:00Z"},
        "end": {"dateTime": f"2030-01-{day:02d}T{hour + 1:02d}:00:00Z"},
        **extra,
    }


def list_all(service: Any, calendar_id: str = "primary", **params: Any) -> tuple[list[dict[str, Any]], str, int]:
    """Follow nextPageToken to the end: (items, nextSyncToken, pages)."""
    items: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        page = service.events().list(calendarId=calendar_id, pageToken=token, **params).execute()
        pages += 1
        items += page["items"]
        token = page.get("nextPageToken")
        if not token:
            return items, page["nextSyncToken"], pages


@dataclass
class Hit:
    """One POST the receiver got."""

    time: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint on loopback; ``statuses`` is consumed first, then ``default`` answers."""

    url: str
    hits: list[Hit] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    default: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, predicate: Callable[[list[Hit]], bool], timeout: float = 30.0) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = list(self.hits)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.01)
        raise AssertionError(f"receiver condition not met; got {len(snapshot)} hits")

    def states(self) -> list[str]:
        with self.lock:
            return [h.headers["X-Goog-Resource-State"] for h in self.hits]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            with rec.lock:
                rec.hits.append(Hit(time.monotonic(), self.path, dict(self.headers.items()), body))
                status = rec.statuses.pop(0) if rec.statuses else rec.default
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
