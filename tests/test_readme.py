"""The README is part of the product: its configuration table and its commands must stay true."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from calsync.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(CALSYNC_[A-Z_]+)`", table, flags=re.M))
    expected = {"CALSYNC_" + f.name.upper() for f in dataclasses.fields(Settings)}
    assert expected - documented == set(), "settings missing from the README"
    assert documented - expected == set(), "README documents settings that do not exist"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", quick_start)
    assert len(commands) == 2 and commands[0].endswith("calsync demo")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_file_the_readme_names_exists() -> None:
    named = set(re.findall(r"`((?:calsync|tests|alembic|static)/[\w/.*-]+)`", README))
    missing = {path for path in named if "*" not in path and not (ROOT / path).exists()}
    assert missing == set()
    folded = {path for path in named if "*" in path and not list(ROOT.glob(path))}
    assert folded == set()
