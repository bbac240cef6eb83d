"""Assembles the Flask app: settings, runtime, blueprints, JSON errors."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from calsync.config import Settings
from calsync.runtime import Runtime
from calsync.store.jsontext import printable
from calsync.store.keyfiles import read_or_create
from calsync.store.locations import resource_dir
from calsync.web import MAX_BODY_BYTES, receiver

STATIC = resource_dir("static")
JSON_DEPTH = 32  # levels of arrays and objects a request body may nest
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SESSION_KEY_FILE = "secret.key"


def build_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    runtime = runtime or Runtime.create(settings)
    app = Flask(
        "calsync",
        static_folder=str(STATIC),
        static_url_path="/static",
        template_folder=str(TEMPLATES),
        instance_path=str(settings.instance_path),
    )
    app.json = _JSONProvider(app)
    # An event's text may hold a lone surrogate (JSON allows it; UTF-8 has no form for it): escaped
    # where a page shows it, so the page still renders.
    app.jinja_env.finalize = _displayable
    app.config["SECRET_KEY"] = session_secret(settings)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = settings.public_url.startswith("https://")
    app.extensions["calsync"] = runtime

    from calsync.web import (
        accounts_api,
        api,
        consent,
        dashboard,
        errors,
        events_api,
        health,
        metrics,
        openapi,
        operator_login,
        webhooks_api,
    )
    from calsync.web.api_token import api_http_error

    for module in (
        health,
        consent,
        api,
        events_api,
        accounts_api,
        operator_login,
        dashboard,
        webhooks_api,
        metrics,
        openapi,
    ):
        app.register_blueprint(module.bp)
    app.register_error_handler(HTTPException, api_http_error)
    errors.init_app(app)
    app.register_error_handler(OperationalError, _database_unavailable)
    app.register_error_handler(InterfaceError, _database_unavailable)
    app.register_error_handler(PoolTimeout, _database_unavailable)
    for endpoint, view in list(app.view_functions.items()):
        if endpoint != "static":
            app.view_functions[endpoint] = _retried_on_lost_connection(view)
    app.before_request(_refuse_nul)
    app.wsgi_app = receiver.mount(app, runtime)  # type: ignore[method-assign]
    if settings.trusted_proxies:
        # Outermost, so that every part (the sign-in throttle, the receiver) sees the real client.
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    return app


class _JSONProvider(DefaultJSONProvider):
    """Flask's JSON, but a body nested deeper than `JSON_DEPTH` is malformed (a 400): calsync's bodies
    are a few levels deep, and deeper ones reached code that walks them recursively (a RecursionError,
    a 500), as the decoder itself does past about a thousand levels."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            value = super().loads(s, **kwargs)
        except RecursionError as err:
            raise ValueError("JSON nested too deeply") from err
        if _depth_over(value, JSON_DEPTH):
            raise ValueError(f"JSON nested deeper than {JSON_DEPTH} levels")
        return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit`, found without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _retried_on_lost_connection(view: Callable[..., Any]) -> Callable[..., Any]:
    """A read that met a connection the database had dropped (killed backend, restart) runs once
    more: the pool has thrown away every connection as old as the lost one, so it gets a fresh one.
    Writes are not repeated: one that fails so answers 503 and the client decides."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except DBAPIError as err:
            if not err.connection_invalidated or request.method not in ("GET", "HEAD"):
                raise
            return view(*args, **kwargs)

    return wrapper


def _database_unavailable(err: DBAPIError | PoolTimeout) -> Any:
    """The database cannot answer (down, restarting, locked past its timeout, disk full), or every
    connection of the process's pool stayed busy past its wait: 503, never 500."""
    from calsync.web import errors

    why = err.orig if isinstance(err, DBAPIError) else err
    current_app.logger.warning("database unavailable for %s %s: %s", request.method, request.path, why)
    return errors.handle(errors.DatabaseUnavailable("the database cannot answer now; retry shortly"))


def _refuse_nul() -> Any:
    """Refuse a NUL byte anywhere in the request line or headers before any handler: PostgreSQL
    raised a 500 on `/api/webhooks/%00`. Under /api the refusal is the API's JSON error."""
    if receiver.has_nul(request.environ):
        if is_api_path(request.path):
            from calsync.web.api_token import json_error

            return json_error(400, "bad_request", receiver.NUL_REFUSED.strip())
        return receiver.NUL_REFUSED, 400
    return None


def _displayable(value: Any) -> Any:
    if type(value) is str and not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return printable(value)
    return value


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def runtime() -> Runtime:
    """The Runtime of the app handling the current request."""
    return current_app.extensions["calsync"]  # type: ignore[no-any-return]


def session_secret(settings: Settings) -> str:
    """CALSYNC_SECRET_KEY, or else a per-installation session key kept in the instance folder."""
    if settings.secret_key:
        return str(settings.secret_key)
    key, _ = read_or_create(settings.instance_path / SESSION_KEY_FILE, lambda: secrets.token_urlsafe(32).encode())
    return key.decode()
