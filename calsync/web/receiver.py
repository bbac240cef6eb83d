"""`POST /notifications`: Google's push messages. Checks the channel, marks work, answers at once.

Google retries only 500/502/503/504, and treats every other non-2xx as a failed message; so forged
or stale channels get 404 (no retries), and 503 is kept for "the database could not record it".
The request never calls Google: it hands the notification to the process's intake (group commit,
`calsync.push.intake`) and answers once it is committed.

This one path is served by a plain WSGI app placed in front of Flask (`mount`). A notification needs
none of Flask's request machinery (no session, no routing, no templates, no JSON), and that machinery
cost more CPU per notification than the rest of the receiver together; every other path goes on to
Flask unchanged. Under calsync's own server, the event loop goes further and answers a plainly shaped
notification without a request thread (`calsync.web.reading_worker`); both take the same two steps,
`check` and, once the intake is done, `conclude`, so a notification gets the same answer either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from calsync.metrics import NOTIFICATIONS
from calsync.push.intake import Intake, IntakeUnavailable
from calsync.push.intake_sql import Push
from calsync.runtime import Runtime
from calsync.store.states import REFUSED_NOTIFICATION, NotificationOutcome

log = logging.getLogger(__name__)

PATH = "/notifications"
EXTENSION = "calsync.receiver"  # where `mount` leaves the receiver in the Flask app's extensions
STATES = ("sync", "exists", "not_exists")
INVALID_STATE = "invalid"  # the metrics label of every other value: anyone can send any header
# Outcomes counted beside the `NotificationOutcome`s, for requests that were never recorded.
OVERSIZED, DB_ERROR = "oversized", "db_error"
REFUSAL_LOG_EVERY = 60.0  # seconds: at most one WARNING line for refused notifications per period
BODY_CAP = 64 * 1024  # Google sends no body; anything this large is not Google
NUL_REFUSED = "bad request: NUL byte in the request line or headers\n"  # see has_nul
_LOGGED_HEADERS = (
    "X-Goog-Channel-ID",
    "X-Goog-Channel-Token",
    "X-Goog-Channel-Expiration",
    "X-Goog-Message-Number",
    "X-Goog-Resource-ID",
    "X-Goog-Resource-State",
    "X-Goog-Resource-URI",
    "User-Agent",
)
_ENVIRON_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in _LOGGED_HEADERS)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Answer = tuple[str, bytes]  # a status line and a body


class Receiver:
    """The WSGI app for `/notifications`; any other path goes on to `next_app` (Flask)."""

    def __init__(self, next_app: WSGIApp, runtime: Runtime) -> None:
        self._next = next_app
        self.intake = Intake(runtime)  # its writer thread starts on first use, in the serving process
        self.refusals = RefusalLog()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self._next(environ, start_response)
        status, body = self.answer(environ)
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        if status.startswith("405"):
            headers.append(("Allow", "POST"))
        start_response(status, headers)
        return [body]

    def answer(self, environ: dict[str, Any]) -> Answer:
        """The status line and body for one request to `/notifications`, once it is recorded."""
        checked = self.check(environ)
        if not isinstance(checked, Checked):
            return checked
        try:
            outcome: NotificationOutcome | None = self.intake.record(checked.push, checked.logged)
        except IntakeUnavailable:
            outcome = None
        return self.conclude(checked, outcome)

    def check(self, environ: dict[str, Any]) -> Answer | Checked:
        """What a request to `/notifications` is: answered already (refused before any recording), or a
        notification (well-formed or not) for the intake to record, then `conclude`."""
        if environ.get("REQUEST_METHOD") != "POST":
            return "405 METHOD NOT ALLOWED", b"notifications are POSTed\n"
        if has_nul(environ):
            return "400 BAD REQUEST", NUL_REFUSED.encode()
        length = environ.get("CONTENT_LENGTH") or "0"
        if not (length.isascii() and length.isdigit()) or int(length) > BODY_CAP:
            NOTIFICATIONS.labels(INVALID_STATE, OVERSIZED).inc()
            return "413 REQUEST ENTITY TOO LARGE", b"body too large; notifications carry none\n"
        sent = {name: environ[key] for name, key in _ENVIRON_KEYS if key in environ}
        push, problem = parse_headers(sent)
        return Checked(push, push.state if push else INVALID_STATE, problem, _for_log(sent))

    def conclude(self, checked: Checked, outcome: NotificationOutcome | None) -> Answer:
        """The answer once the intake is done with a notification: its outcome, or None when it could
        not be recorded."""
        if outcome is None:
            NOTIFICATIONS.labels(checked.state, DB_ERROR).inc()
            if checked.push is not None:
                return "503 SERVICE UNAVAILABLE", b"cannot record the notification now\n"
            outcome = NotificationOutcome.MALFORMED
        NOTIFICATIONS.labels(checked.state, outcome).inc()
        if checked.push is None:
            return "400 BAD REQUEST", f"bad request: {checked.problem}\n".encode()
        if outcome in REFUSED_NOTIFICATION:
            self.refusals.log(checked.push.channel_id, outcome)
            return "404 NOT FOUND", b""
        return "200 OK", b""


@dataclass(frozen=True, slots=True)
class Checked:
    """A request to `/notifications` that goes to the intake: a notification, or a malformed one (`push`
    None, and `problem` says why) that is only logged."""

    push: Push | None
    state: str  # the metrics label
    problem: str
    logged: dict[str, str]  # its headers as the inspector shows them


class RefusalLog:
    """The WARNING line for refused notifications, at most once per `every` seconds.

    Anyone can POST a made-up channel id, so one line per refusal would let a stranger fill the
    log; the line names the latest refusal and how many were left unlogged since the previous one.
    """

    def __init__(self, every: float = REFUSAL_LOG_EVERY) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._unlogged = 0

    def log(self, channel_id: str, outcome: NotificationOutcome) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_at:
                self._unlogged += 1
                return
            self._next_at = now + self.every
            unlogged, self._unlogged = self._unlogged, 0
        log.warning(
            "refused notification for channel %s: %s (%d more refused since the last line)",
            channel_id[:64],
            outcome,
            unlogged,
        )


def mount(app: Any, runtime: Runtime) -> Receiver:
    """Put the receiver in front of a Flask app's WSGI callable (`app.wsgi_app = mount(app, rt)`)."""
    receiver = Receiver(app.wsgi_app, runtime)
    app.extensions[EXTENSION] = receiver
    return receiver


def mounted(app: Any) -> Receiver | None:
    """The receiver mounted in an app (None for any other WSGI app), for a server that answers
    notifications without calling the app (`calsync.web.reading_worker`)."""
    extensions = getattr(app, "extensions", None)
    found = extensions.get(EXTENSION) if isinstance(extensions, dict) else None
    return found if isinstance(found, Receiver) else None


def parse_headers(headers: Any) -> tuple[Push | None, str]:
    """The notification, or None and what is wrong with it."""
    channel_id = (headers.get("X-Goog-Channel-ID") or "").strip()
    if not channel_id or len(channel_id) > 255:
        return None, "missing or oversized X-Goog-Channel-ID"
    state = (headers.get("X-Goog-Resource-State") or "").strip()
    if state not in STATES:
        return None, "X-Goog-Resource-State must be sync, exists or not_exists"
    raw_number = (headers.get("X-Goog-Message-Number") or "").strip()
    # ASCII digits only: str.isdigit() also takes "²" and other digits that int() refuses.
    if not (raw_number.isascii() and raw_number.isdigit()) or len(raw_number) > 18:
        return None, "X-Goog-Message-Number must be a whole number"
    return Push(
        channel_id=channel_id,
        state=state,
        message_number=int(raw_number),
        resource_id=headers.get("X-Goog-Resource-ID"),
        token=headers.get("X-Goog-Channel-Token"),
    ), ""


def has_nul(environ: dict[str, Any]) -> bool:
    """A NUL byte is never valid in a path, a parameter or a header, and PostgreSQL cannot even compare
    text with one. The environ holds the path and headers already decoded; parameters can only carry
    one as %00."""
    return "%00" in environ.get("QUERY_STRING", "") or any("\x00" in v for v in environ.values() if type(v) is str)


def _for_log(headers: dict[str, str]) -> dict[str, str]:
    return {name: "<redacted>" if name == "X-Goog-Channel-Token" else value[:512] for name, value in headers.items()}
