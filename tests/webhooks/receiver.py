"""A real webhook subscriber for tests: a threaded werkzeug server on loopback that records every
request and answers per a script (status, headers, body, delay), and answers Strava-style
hub.challenge verifications in a chosen way."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    args: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records requests; POSTs get the scripted answers in order, then `default`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.default = Answer()
        # How the hub.challenge GET is answered: echo | wrong | status:<n> | sleep:<s> | redirect
        self.verify_mode = "echo"
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/hook"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._script.extend(answers)

    def posts(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def verifications(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and "hub.challenge" in r.args]

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        record = Recorded(request.method, request.path, dict(request.args), dict(request.headers), request.get_data())
        with self._lock:
            self.requests.append(record)
        if request.method == "GET" and "hub.challenge" in request.args:
            response = self._verification(request)
        elif request.path == "/moved":
            response = Response("moved here", status=200)
        else:
            with self._lock:
                answer = self._script.popleft() if self._script else self.default
            if answer.delay:
                time.sleep(answer.delay)
            response = Response(answer.body, status=answer.status, headers=answer.headers)
        return response(environ, start_response)

    def _verification(self, request: Request) -> Response:
        mode, _, arg = self.verify_mode.partition(":")
        challenge = request.args["hub.challenge"]
        if mode == "wrong":
            return Response(json.dumps({"hub.challenge": challenge + "x"}), mimetype="application/json")
        if mode == "status":
            return Response(json.dumps({"hub.challenge": challenge}), status=int(arg), mimetype="application/json")
        if mode == "redirect":
            return Response("", status=302, headers={"Location": self.base + "/moved"})
        if mode == "sleep":
            time.sleep(float(arg))
        return Response(json.dumps({"hub.challenge": challenge}), mimetype="application/json")
