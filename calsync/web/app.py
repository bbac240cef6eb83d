"""Assembles the Flask app: settings, runtime, blueprints, JSON errors."""

from __future__ import annotations

import secrets
from pathlib import Path

from flask import Flask, Request, current_app, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from calsync.config import Settings
from calsync.runtime import Runtime

STATIC = Path(__file__).resolve().parent.parent.parent / "static"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def build_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    runtime = runtime or Runtime.create(settings)
    app = Flask("calsync", static_folder=str(STATIC), static_url_path="/static",
                template_folder=str(TEMPLATES), instance_path=str(settings.instance_path))
    app.config["SECRET_KEY"] = settings.secret_key or _instance_secret(settings.instance_path)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = settings.public_url.startswith("https://")
    app.extensions["calsync"] = runtime
    app.session_interface = _SessionInterface()

    from calsync.web import admin_auth, api, auth, dashboard, health, metrics, receiver, webhooks_api

    for module in (health, auth, api, admin_auth, dashboard, receiver, webhooks_api, metrics):
        app.register_blueprint(module.bp)
    app.before_request(_refuse_nul)
    return app


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, not opened for Google's notifications: they carry no cookie and
    need no session, and building the signer on each of them was a measurable part of the receiver."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path == "/notifications":
            return None  # Flask uses a NullSession, which is never saved
        return super().open_session(app, request)


def _refuse_nul() -> tuple[str, int] | None:
    """A NUL byte is never valid in a path, a parameter or a header, and PostgreSQL cannot even compare
    text with one (it raised a 500 on `/api/webhooks/%00`): refuse such requests before any handler.
    It runs on every notification, so it reads the WSGI environ, where the path and headers are
    already decoded, rather than werkzeug's views of them; parameters can only carry one as %00."""
    environ = request.environ
    if "%00" in environ.get("QUERY_STRING", "") or any("\x00" in v for v in environ.values() if type(v) is str):
        return "bad request: NUL byte in the request line or headers\n", 400
    return None


def runtime() -> Runtime:
    """The Runtime of the app handling the current request."""
    return current_app.extensions["calsync"]  # type: ignore[no-any-return]


def _instance_secret(folder: Path) -> str:
    """A per-installation session key kept in the instance folder when none is configured."""
    path = folder / "secret.key"
    if path.exists():
        return path.read_text().strip()
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key
