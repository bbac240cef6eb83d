"""The README is part of the product: its configuration table and its commands must stay true."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from calsync.config import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MANUAL = [Path("README.md"), *sorted(path.relative_to(ROOT) for path in (ROOT / "docs").glob("*.md"))]


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(CALSYNC_[A-Z_]+)`", table, flags=re.M))
    expected = {env_name(f) for f in dataclasses.fields(Settings)}
    assert expected - documented == set(), "settings missing from the README"
    assert documented - expected == set(), "README documents settings that do not exist"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", quick_start)
    assert len(commands) == 2 and commands[0].endswith("calsync demo")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("document", MANUAL, ids=str)
def test_every_file_the_manual_names_exists(document: Path) -> None:
    named = set(re.findall(r"`((?:calsync|tests|alembic|static|docs)/[\w/.*-]+)`", (ROOT / document).read_text()))
    missing = {path for path in named if "*" not in path and not (ROOT / path).exists()}
    assert missing == set()
    folded = {path for path in named if "*" in path and not list(ROOT.glob(path))}
    assert folded == set()


@pytest.mark.parametrize("document", MANUAL, ids=str)
def test_every_link_of_the_manual_leads_to_a_file_and_a_heading(document: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / document).read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (ROOT / document).parent / path if path else ROOT / document
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert broken == []


def test_the_readme_is_a_manual_not_a_log() -> None:
    """Figures and their history live in docs/performance.md; the README keeps one short table."""
    assert len(README.splitlines()) < 700
    performance = README.split("## Performance", 1)[1].split("\n## ", 1)[0]
    assert len(performance.splitlines()) < 40
    figures = performance + (ROOT / "docs" / "performance.md").read_text()
    assert re.findall(r"\b(?:re-run|landing|last run|20\d\d-\d\d-\d\d)\b", figures) == []


def _anchors(markdown: Path) -> set[str]:
    """The fragment ids a Markdown renderer such as GitHub's gives the file's headings."""
    headings = re.findall(r"^#+ (.+)$", markdown.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
