"""An installed wheel, not only a checkout, finds its migration scripts and the dashboard's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calsync.store.locations import SOURCE_ROOT, resource_dir

# Run by the wheel's own copy of calsync: migrate a new database, then fetch a static file.
_PROBE = """
import json, sys
from sqlalchemy import inspect
import calsync
from calsync.config import Settings
from calsync.store.db import make_engine
from calsync.store.migrate import upgrade
from calsync.store.locations import resource_dir
from calsync.web.app import build_app
from pathlib import Path
engine = make_engine(sys.argv[1])
upgrade(engine)
settings = Settings(database_url=sys.argv[1], instance_path=Path(sys.argv[2]), secret_key="k")
css = build_app(settings).test_client().get("/static/calsync.css")
print(json.dumps({"package": calsync.__file__, "alembic": str(resource_dir("alembic")),
                  "tables": sorted(inspect(engine).get_table_names()), "css": [css.status_code, len(css.data)]}))
"""


def test_a_checkout_uses_the_folders_beside_the_package() -> None:
    assert resource_dir("alembic") == SOURCE_ROOT / "alembic"
    assert resource_dir("static") == SOURCE_ROOT / "static"


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_migrates_and_serves_its_static_files(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip first uninstalls the editable calsync this very test runs from.
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            "--prefix",
            str(prefix),
            str(SOURCE_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    site = next(prefix.glob("lib/python*/site-packages"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, f"sqlite:///{tmp_path / 'w.db'}", str(tmp_path / "inst")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["package"].startswith(str(site))  # the installed copy ran, not this checkout
    assert seen["alembic"] == str(prefix / "share" / "calsync" / "alembic")
    assert {"accounts", "calendars", "changes", "alembic_version"} <= set(seen["tables"])
    assert seen["css"] == [200, (SOURCE_ROOT / "static" / "calsync.css").stat().st_size]
