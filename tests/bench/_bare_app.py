"""The baseline of bench_receiver: a Flask endpoint that only answers 200, under `calsync web`'s gunicorn settings.

It reuses CalsyncApplication (same bind, worker class, processes, threads, timeouts, logging) and only
swaps the WSGI app it loads, so the difference between the two servers is calsync's receiver itself.
"""

from __future__ import annotations

import argparse

from flask import Flask, Response

from calsync.config import Settings
from calsync.web.server import CalsyncApplication


def bare_app() -> Flask:
    app = Flask("bare")

    @app.post("/notifications")
    def notifications() -> Response:
        return Response("", status=200)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", status=200)

    return app


class BareApplication(CalsyncApplication):
    def load(self) -> Flask:
        return bare_app()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    a = p.parse_args()
    BareApplication(Settings(), host="127.0.0.1", port=a.port, workers=a.workers, threads=a.threads).run()
