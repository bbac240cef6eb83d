"""The Flask app (factory) and the threaded HTTP server that runs it in a background thread."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast

from cheroot import wsgi
from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from . import calendar_api, control, oauth
from .errors import ApiError

if TYPE_CHECKING:
    from .emulator import Emulator

KEPT_CONNECTIONS = 1000  # idle kept-alive connections held open at once
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
    """Serve an app in a background thread until ``shutdown``, keeping connections alive as Google does.

    A client of Google reuses its connections (calsync's writes share kept-alive ones), and a
    connection Google has closed while it sat idle is what such a client meets again. werkzeug's
    development server closed every connection after one response, so neither was ever exercised.
    cheroot keeps HTTP/1.1 connections open, idle ones without holding a thread, and closes a
    connection idle for ``keep_alive`` seconds (looked at every half second). Its ``threads`` answer
    requests at once; more wait their turn (werkzeug started a thread per connection), so there are
    more than the benchmarks' and the tests' clients ever send at one time.
    """

    def __init__(self, app: Flask, host: str, port: int, *, keep_alive: int, threads: int = 64) -> None:
        super().__init__(name="emulator-http", daemon=True)
        self.server = wsgi.Server((host, port), app, numthreads=threads, timeout=keep_alive, shutdown_timeout=1)
        # cheroot answers `Connection: close` once 10 idle connections are kept; Google keeps many more.
        self.server.keep_alive_conn_limit = KEPT_CONNECTIONS
        self.server.prepare()  # bound and listening now, so the port is known before the thread runs
        self.port = int(self.server.bind_addr[1])

    def run(self) -> None:
        self.server.serve()

    def shutdown(self) -> None:
        """Stop accepting requests and close the socket."""
        self.server.stop()
        self.join(timeout=5)
