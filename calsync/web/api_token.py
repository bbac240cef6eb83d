"""Authorisation of the operator API: `Authorization: Bearer <CALSYNC_API_TOKEN>`."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Response, jsonify, request

from calsync.web.app import runtime

F = TypeVar("F", bound=Callable[..., Any])


def api_token_ok() -> bool:
    expected = runtime().settings.api_token
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not expected or scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), str(expected).encode())


def require_api_token(view: F) -> F:
    """401 with a JSON error unless the bearer token matches (compared in constant time)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not api_token_ok():
            if not runtime().settings.api_token:
                message = "the API is disabled: set CALSYNC_API_TOKEN"
            else:
                message = "missing or wrong bearer token"
            resp = jsonify(error="unauthorized", message=message)
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Bearer realm="calsync"'
            return resp
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def json_error(status: int, error: str, message: str) -> Response:
    resp = jsonify(error=error, message=message)
    resp.status_code = status
    return resp
