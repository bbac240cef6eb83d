"""Authorisation of the operator API: `Authorization: Bearer <CALSYNC_API_TOKEN>`.

`CALSYNC_API_TOKEN` may hold several comma-separated tokens, so a new one can be handed out before
the old one is removed. Each is compared in constant time, and all of them every time, so neither
the answer nor its timing says which one (or how much of one) matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

from flask import Response, jsonify, request
from werkzeug.exceptions import HTTPException

from calsync.web.app import is_api_path, runtime
from calsync.web.errors import Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


def api_token_ok() -> bool:
    return bearer_matches(runtime().settings.api_tokens)


def bearer_matches(expected: Sequence[str]) -> bool:
    """Whether the request's bearer token is one of `expected`, each compared in constant time."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not expected or scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    matches = [hmac.compare_digest(given, str(candidate).encode()) for candidate in expected]
    return any(matches)


def require_api_token(view: F) -> F:
    """401 with a JSON error unless the bearer token matches (compared in constant time)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not api_token_ok():
            if not runtime().settings.api_tokens:
                message = "the API is disabled: set CALSYNC_API_TOKEN"
            else:
                message = "missing or wrong bearer token"
            raise Unauthorized(message)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def json_error(status: int, error: str, message: str) -> Response:
    resp = jsonify(error=error, message=message)
    resp.status_code = status
    return resp


def api_http_error(err: HTTPException) -> Any:
    """Under /api, werkzeug's own errors (unknown path, wrong method, body too large) are JSON errors
    too; elsewhere they keep their HTML page."""
    if not is_api_path(request.path):
        return err
    code = err.code or 500
    name = "internal_error" if code >= 500 else (err.name or "error").lower().replace(" ", "_")
    resp = json_error(code, name, err.description or err.name or "error")
    for header, value in err.get_headers():
        if header.lower() not in {"content-type", "content-length"}:
            resp.headers[header] = value
    return resp
