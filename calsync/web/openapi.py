"""`GET /api/openapi.json`: the OpenAPI 3.1 description of the API, kept by hand in openapi.yaml.

The YAML file is the one source: this view serves it as JSON, the tests validate every API
response against it, and clients are generated from it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, jsonify

DOCUMENT = Path(__file__).resolve().parent / "openapi.yaml"

bp = Blueprint("openapi", __name__, url_prefix="/api")


@functools.cache
def document() -> dict[str, Any]:
    """The parsed document (read once per process)."""
    with DOCUMENT.open(encoding="utf-8") as file:
        loaded: dict[str, Any] = yaml.safe_load(file)
    return loaded


@bp.get("/openapi.json")
def openapi_json() -> Any:
    return jsonify(document())
