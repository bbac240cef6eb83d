"""One table from calsync's errors to the API's HTTP answers, registered once on the app.

Every view raises the domain's own error and this table says what it answers: the status and a
stable `error` code, in the JSON shape `openapi.yaml` promises (`{"error", "message"}`, plus the
`field` an error names, plus what `details` adds). Outside `/api` the same status is the page's own
error page. A refused request field is always `bad_request` with its `field`, whichever part of
calsync refused it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import default_exceptions

from calsync.errors import (
    CursorExpired,
    InvalidConnectSession,
    InvalidSubscription,
    NotFoundError,
    UnsafeURLError,
    VerificationFailed,
)
from calsync.readmodels.reads import AmbiguousCalendar
from calsync.web.app import is_api_path

BAD_REQUEST = "bad_request"


class BadParameter(ValueError):
    """A query parameter or body value a view refused; the message names it."""


@dataclass(frozen=True)
class ErrorAnswer:
    """What one kind of error answers under `/api`."""

    status: int
    error: str
    field: str | None = None  # the field it always concerns; errors with a `field` attribute name their own
    details: Callable[[Any], dict[str, Any]] | None = None  # further keys of the JSON body


ANSWERS: dict[type[Exception], ErrorAnswer] = {
    BadParameter: ErrorAnswer(400, BAD_REQUEST),
    InvalidConnectSession: ErrorAnswer(400, BAD_REQUEST),
    InvalidSubscription: ErrorAnswer(400, BAD_REQUEST),
    AmbiguousCalendar: ErrorAnswer(400, "ambiguous_calendar"),
    UnsafeURLError: ErrorAnswer(400, "unsafe_url", field="url"),
    VerificationFailed: ErrorAnswer(422, "verification_failed", field="url"),
    NotFoundError: ErrorAnswer(404, "not_found"),
    CursorExpired: ErrorAnswer(410, "cursor_expired", details=lambda err: {"oldest_seq": err.oldest_seq}),
}


def init_app(app: Flask) -> None:
    """Register the table: one handler, for every error it names."""
    for kind in ANSWERS:
        app.register_error_handler(kind, handle)


def answer_for(err: Exception) -> ErrorAnswer:
    """The table's row for the error's class or the nearest of its bases."""
    for kind in type(err).__mro__:
        if kind in ANSWERS:
            return ANSWERS[kind]
    raise LookupError(f"no HTTP answer for {type(err).__name__}")


def error_body(err: Exception) -> dict[str, Any]:
    """The JSON body the API answers for `err`."""
    answer = answer_for(err)
    body: dict[str, Any] = {"error": answer.error, "message": str(err)}
    field = getattr(err, "field", None) or answer.field
    if field is not None:
        body["field"] = field
    if answer.details is not None:
        body.update(answer.details(err))
    return body


def handle(err: Exception) -> Any:
    """The API's JSON answer for `err`, or the status's error page outside `/api`."""
    answer = answer_for(err)
    if not is_api_path(request.path):  # a page: its blueprint's own error page for that status
        return current_app.handle_http_exception(default_exceptions[answer.status](description=str(err)))
    resp = jsonify(error_body(err))
    resp.status_code = answer.status
    return resp
