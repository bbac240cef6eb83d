"""One table from calsync's errors to the API's HTTP answers, registered once on the app.

Every view raises the domain's own error and this table says what it answers: the status and a
stable `error` code, in the JSON shape `openapi.yaml` promises (`{"error", "message"}`, plus the
`field` an error names, plus what `details` adds). Outside `/api` the same status is the page's own
error page. A refused request field is always `bad_request` with its `field`, whichever part of
calsync refused it. An error whose answer depends on what it carries (Google's status, why a
connection code is unusable) names its `variants`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import default_exceptions

from calsync.errors import (
    CalendarHeld,
    CalendarUsageLimited,
    CalsyncError,
    ConnectionUnusable,
    CursorExpired,
    Duplicate,
    Forbidden,
    GoogleApiError,
    GoogleNotFound,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidConnectSession,
    InvalidSubscription,
    InvalidWrite,
    NotFoundError,
    QuotaWait,
    RefMismatch,
    TransientGoogleError,
    UnsafeURLError,
    VerificationFailed,
    WriteConflict,
)
from calsync.readmodels.reads import AmbiguousCalendar
from calsync.web.app import is_api_path

BAD_REQUEST = "bad_request"


class BadParameter(ValueError):
    """A query parameter or body value a view refused; the message names it."""


class Unauthorized(CalsyncError):
    """The request lacks the API's bearer token (or the API has none)."""


class DatabaseUnavailable(CalsyncError):
    """The database cannot answer (down, restarting, locked past its timeout, disk full)."""


RETRY_AFTER_SECONDS = 2  # what a client told the database is away should wait


@dataclass(frozen=True)
class ErrorAnswer:
    """What one kind of error answers under `/api`."""

    status: int
    error: str
    field: str | None = None  # the field it always concerns; errors with a `field` attribute name their own
    details: Callable[[Any], dict[str, Any]] | None = None  # further keys of the JSON body
    message: Callable[[Any], str] = str  # the body's `message`
    headers: Callable[[Any], dict[str, str]] | None = None
    plain_page: bool = False  # outside /api: the message as text, not the error page
    # Another answer for some errors of the class: `variants[key(err)]`, else this one.
    key: Callable[[Any], Any] | None = None
    variants: Mapping[Any, ErrorAnswer] = dataclasses.field(default_factory=dict)


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}


ANSWERS: dict[type[Exception], ErrorAnswer] = {
    BadParameter: ErrorAnswer(400, BAD_REQUEST),
    InvalidConnectSession: ErrorAnswer(400, BAD_REQUEST),
    InvalidSubscription: ErrorAnswer(400, BAD_REQUEST),
    InvalidWrite: ErrorAnswer(400, BAD_REQUEST),
    AmbiguousCalendar: ErrorAnswer(400, "ambiguous_calendar"),
    UnsafeURLError: ErrorAnswer(400, "unsafe_url", field="url"),
    VerificationFailed: ErrorAnswer(422, "verification_failed", field="url"),
    Unauthorized: ErrorAnswer(401, "unauthorized", headers=lambda _: {"WWW-Authenticate": 'Bearer realm="calsync"'}),
    NotFoundError: ErrorAnswer(404, "not_found"),
    CursorExpired: ErrorAnswer(410, "cursor_expired", details=lambda err: {"oldest_seq": err.oldest_seq}),
    DatabaseUnavailable: ErrorAnswer(
        503, "database_unavailable", headers=lambda _: _retry_after(RETRY_AFTER_SECONDS), plain_page=True
    ),
    # Connecting: the app confirms the connection a link's consent made.
    RefMismatch: ErrorAnswer(409, "ref_mismatch"),
    ConnectionUnusable: ErrorAnswer(
        410,
        "connection_expired",
        key=lambda err: err.reason,
        variants={"unknown": ErrorAnswer(404, "unknown_connection"), "used": ErrorAnswer(410, "connection_used")},
    ),
    # Writes through calsync, and Google's refusals of them, said plainly.
    InsufficientScope: ErrorAnswer(403, "insufficient_scope", details=lambda err: {"reconnect": err.reconnect}),
    IdempotencyKeyReused: ErrorAnswer(422, "idempotency_key_reused"),
    WriteConflict: ErrorAnswer(412, "precondition_failed", details=lambda err: {"current": err.current}),
    TransientGoogleError: ErrorAnswer(  # a pause on Google's side: the app may retry
        503,
        "google_unavailable",
        message=lambda err: f"Google did not answer the write; retry later ({err})",
        headers=lambda err: _retry_after(err.retry_after),
    ),
    CalendarUsageLimited: ErrorAnswer(  # Google takes no changes from this user for some hours
        429,
        "calendar_usage_limits",
        message=lambda err: (
            "Google's Calendar usage limits refuse this user's changes for some hours (too many events, "
            f"invitations or calendars made in a short time); reads go on ({err})"
        ),
        headers=lambda err: _retry_after(err.retry_after),
    ),
    CalendarHeld: ErrorAnswer(  # other work held the calendar's turn for longer than a write waits
        503,
        "calendar_busy",
        message=lambda err: f"{err}; nothing was sent to Google, retry",
        headers=lambda err: _retry_after(err.wait),
    ),
    QuotaWait: ErrorAnswer(  # the user's (or the project's) Google quota has no room for the write yet
        503,
        "quota_exhausted",
        message=lambda err: f"calsync's Google quota has no room for this write now; retry later ({err})",
        headers=lambda err: _retry_after(err.wait),
    ),
    GoogleNotFound: ErrorAnswer(
        404, "not_found", message=lambda err: f"Google has no such event (or it was deleted): {err}"
    ),
    Duplicate: ErrorAnswer(
        409, "duplicate", message=lambda err: f"the calendar already holds an event with this id: {err}"
    ),
    Forbidden: ErrorAnswer(
        403, "forbidden", message=lambda err: f"Google refused the write ({err.reason or 'forbidden'}): {err}"
    ),
    GoogleApiError: ErrorAnswer(
        502,
        "google_error",
        message=lambda err: f"Google answered {err.status or 'an error'}: {err}",
        key=lambda err: err.status,
        variants={400: ErrorAnswer(400, "invalid_event", message=lambda err: f"Google refused the event: {err}")},
    ),
}


def every_answer() -> Iterator[ErrorAnswer]:
    """Every answer of the table, variants included."""
    for answer in ANSWERS.values():
        yield answer
        yield from answer.variants.values()


def init_app(app: Flask) -> None:
    """Register the table: one handler, for every error it names."""
    for kind in ANSWERS:
        app.register_error_handler(kind, handle)


def answer_for(err: Exception) -> ErrorAnswer:
    """The table's row for the error's class or the nearest of its bases."""
    for kind in type(err).__mro__:
        if kind in ANSWERS:
            answer = ANSWERS[kind]
            return answer.variants.get(answer.key(err), answer) if answer.key is not None else answer
    raise LookupError(f"no HTTP answer for {type(err).__name__}")


def error_body(err: Exception) -> dict[str, Any]:
    """The JSON body the API answers for `err`."""
    answer = answer_for(err)
    body: dict[str, Any] = {"error": answer.error, "message": answer.message(err)}
    field = getattr(err, "field", None) or answer.field
    if field is not None:
        body["field"] = field
    if answer.details is not None:
        body.update(answer.details(err))
    return body


def handle(err: Exception) -> Any:
    """The API's JSON answer for `err`, or the status's error page outside `/api`."""
    answer = answer_for(err)
    if is_api_path(request.path):
        resp = jsonify(error_body(err))
        resp.status_code = answer.status
    elif answer.plain_page:
        resp = current_app.make_response((answer.message(err) + "\n", answer.status))
    else:  # a page: its blueprint's own error page for that status
        return current_app.handle_http_exception(default_exceptions[answer.status](description=str(err)))
    if answer.headers is not None:
        resp.headers.update(answer.headers(err))
    return resp
