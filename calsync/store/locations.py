"""Where the migration scripts (`alembic/`) and the dashboard's files (`static/`) are.

They live beside the package in the source tree, which is where a checkout and an editable install
find them. A wheel cannot put top-level folders beside the package, so it carries them as data files
(`share/calsync/…`, see pyproject.toml); the installed distribution's file list says where those went,
whatever the install's prefix or scheme (venv, --user, --prefix).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def resource_dir(name: str) -> Path:
    """The folder `name` ("alembic" or "static"): from the source tree, else from the installed wheel."""
    source = SOURCE_ROOT / name
    if source.is_dir():
        return source
    try:
        files = distribution("calsync").files or []
    except PackageNotFoundError:
        return source
    for recorded in files:
        parts = recorded.parts
        if len(parts) >= 4 and parts[-4:-1] == ("share", "calsync", name):
            return Path(str(recorded.locate())).resolve().parent
    return source  # missing: the error that follows names the expected place
