"""calsync: Google Calendar push-sync worker with a diff log of every change."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from calsync.config import Settings
    from calsync.runtime import Runtime


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    """The Flask application factory; nothing is built at import."""
    from calsync.web.app import build_app

    return build_app(settings, runtime=runtime)
