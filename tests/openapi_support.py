"""Every /api response made in the test suite is checked against the OpenAPI document.

The check listens to Flask's `request_finished` signal, so it sees the responses of every calsync
app the tests build, whether called through the test client or over HTTP from a live server
thread. openapi-core validates the status, headers, content type and body against the document; an
undocumented path or method may only be a JSON 404/405. Violations are kept here and fail the test
that made them (see the hooks in tests/conftest.py).
"""

from __future__ import annotations

import threading
from typing import Any

import jsonschema
from flask import Flask, Response, request, request_finished
from openapi_core import OpenAPI
from openapi_core.contrib.flask import FlaskOpenAPIRequest
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIResponse
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound

from calsync.web.app import is_api_path
from calsync.web.openapi import document


class ConformanceError(AssertionError):
    """An /api response that the OpenAPI document does not describe."""


class Conformance:
    def __init__(self) -> None:
        self.openapi = OpenAPI.from_dict(document())
        self._error_schema = document()["components"]["schemas"]["Error"]
        self._lock = threading.Lock()
        self._violations: list[str] = []
        self.checked = 0

    def start(self) -> None:
        request_finished.connect(self._on_response)

    def stop(self) -> None:
        request_finished.disconnect(self._on_response)

    def problem(self, response: Response) -> str | None:
        """What is wrong with this response to the current request, if anything."""
        try:
            self.openapi.validate_response(FlaskOpenAPIRequest(request), WerkzeugOpenAPIResponse(response))
        except (PathNotFound, OperationNotFound):
            if response.status_code in (404, 405) and response.is_json:
                try:
                    jsonschema.validate(response.get_json(), self._error_schema)
                    return None
                except jsonschema.ValidationError as err:
                    return f"undocumented operation answered a non-error body: {err.message}"
            return f"undocumented operation answered {response.status_code} {response.mimetype}"
        except OpenAPIError as err:
            cause = f" ({err.__cause__})" if err.__cause__ else ""
            return f"{type(err).__name__}: {err}{cause}"
        return None

    def take(self) -> list[str]:
        """The violations recorded since the last call (and forget them)."""
        with self._lock:
            found, self._violations = self._violations, []
        return found

    def check(self) -> None:
        """Raise ConformanceError for the violations recorded since the last call."""
        found = self.take()
        if found:
            raise ConformanceError("responses outside calsync/web/openapi.yaml:\n" + "\n".join(found))

    def _on_response(self, sender: Flask, response: Response, **extra: Any) -> None:
        if not is_api_path(request.path):
            return
        problem = self.problem(response)
        with self._lock:
            self.checked += 1
            if problem:
                self._violations.append(
                    f"{request.method} {request.full_path.rstrip('?')} → {response.status_code}: {problem}"
                )


CONFORMANCE = Conformance()
