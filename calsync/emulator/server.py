"""The Flask app (factory) and the threaded werkzeug server that runs it in a background thread."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from . import calendar_api, control, oauth
from .errors import ApiError

if TYPE_CHECKING:
    from .emulator import Emulator

_STATUS_REASONS = {400: "badRequest", 404: "notFound", 405: "httpMethodNotAllowed", 413: "uploadTooLarge"}


def create_app(emulator: Emulator) -> Flask:
    """Build the WSGI app serving OAuth, Calendar API v3 and the control API for ``emulator``."""
    app = Flask(__name__)
    app.config.update(JSON_SORT_KEYS=False)
    provider = cast("DefaultJSONProvider", app.json)  # Flask's default provider, typed as its base class
    provider.sort_keys = False
    provider.compact = True
    app.extensions["calsync_emulator"] = emulator
    app.register_blueprint(oauth.bp)
    app.register_blueprint(calendar_api.bp)
    app.register_blueprint(control.bp)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        response = jsonify(error.body())
        response.status_code = error.code
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        if request.path.startswith("/_emulator/"):
            return control.error_response(error.code or 500, error.description or error.name)
        code = error.code or 500
        return api_error(ApiError(code, _STATUS_REASONS.get(code, "badRequest"), error.name))

    @app.after_request
    def record(response: Response) -> Response:
        name = g.get("api_method")
        if name:
            emulator._record(
                name,
                request.method,
                request.path,
                request.args,
                g.get("calendar_id"),
                g.get("user"),
                response.status_code,
            )
        return response

    return app


class ServerThread(threading.Thread):
    """Serve an app with werkzeug's threaded server (a thread per connection) until ``shutdown``."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        super().__init__(name="emulator-http", daemon=True)
        self.server: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.port = self.server.server_port

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        """Stop accepting requests and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    """HTTP/1.1 responses without a log line per request (werkzeug closes each connection)."""

    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None
