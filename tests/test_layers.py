"""The architecture as a table of layers, and a walk of every import that holds the code to it.

An import may point down or sideways inside its layer, never up, and no packages import each
other round a circle (sideways imports inside a layer included). The emulator stands for Google: it
imports nothing else of calsync, and only the top layer (the CLI and the demo) starts it. Imports
under `if TYPE_CHECKING:` count too: a type that names a higher layer is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "calsync"

# Top to bottom. Each entry is a package or top-level module of calsync.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "__main__", "web", "cli", "demo"),
    ("work",),
    ("sync", "push", "webhooks", "accounts", "readmodels"),
    ("feed", "runtime"),
    ("store", "google"),
    ("config", "errors", "clock", "metrics", "wakeup", "humanize", "stopping"),
)
SEALED = ("emulator",)


def layer_of(part: str) -> int:
    for depth, parts in enumerate(LAYERS):
        if part in parts:
            return depth
    raise KeyError(part)


def part_of(module: str) -> str:
    """`calsync.sync.run` → `sync`; `calsync` → `__init__`."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    names = list(relative.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) for every calsync import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # `from calsync import sync` names a part; `from calsync import create_app` the package root
            if base == "calsync":
                found += [
                    (node.lineno, f"calsync.{alias.name}")
                    for alias in node.names
                    if (root / alias.name).is_dir() or (root / f"{alias.name}.py").exists()
                ]
    return [(line, name) for line, name in found if name == "calsync" or name.startswith("calsync.")]


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        own = part_of(module_name(path, root))
        for line, target in imports_of(path, root):
            other = part_of(target)
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            if own in SEALED and other != own:
                problems.append(f"{where} (the emulator is sealed)")
            elif other in SEALED and own not in SEALED and layer_of(own) > 0:
                problems.append(f"{where} (only the top layer runs the emulator)")
            elif other not in SEALED and layer_of(other) < layer_of(own):
                problems.append(f"{where} ({other} is above {own})")
    return problems


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Which parts each part imports (itself left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        own = part_of(module_name(path, root))
        targets = graph.setdefault(own, set())
        targets.update(part_of(target) for _, target in imports_of(path, root))
        targets.discard(own)
    return graph


def package_cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Every circle of imports between parts, each once, as its parts from the smallest name round."""
    graph = import_graph(root)
    cycles: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                cycles.add(tuple(path))
            elif nxt not in path and nxt > start:  # each circle found from its smallest part only
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return [list(cycle) for cycle in sorted(cycles)]


def test_every_part_of_calsync_has_a_layer() -> None:
    parts = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
    }
    named = {part for layer in LAYERS for part in layer} | set(SEALED)
    assert parts == named


def test_no_import_points_up_a_layer() -> None:
    assert upward_imports() == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    tree = tmp_path / "calsync"
    (tree / "store").mkdir(parents=True)
    (tree / "__init__.py").write_text("")
    (tree / "store" / "__init__.py").write_text("")
    (tree / "store" / "models.py").write_text("from calsync.sync.run import sync_calendar\n")
    (tree / "emulator").mkdir()
    (tree / "emulator" / "__init__.py").write_text("")
    (tree / "emulator" / "server.py").write_text("from ..errors import CalsyncError\n")
    (tree / "errors.py").write_text("import calsync.web.app\n")
    (tree / "sync").mkdir()
    (tree / "sync" / "__init__.py").write_text("")
    (tree / "sync" / "run.py").write_text("from calsync.emulator import Emulator\nfrom calsync import create_app\n")
    assert upward_imports(tree) == [
        "calsync/emulator/server.py:1 imports calsync.errors (the emulator is sealed)",
        "calsync/errors.py:1 imports calsync.web.app (web is above errors)",
        "calsync/store/models.py:1 imports calsync.sync.run (sync is above store)",
        "calsync/sync/run.py:1 imports calsync.emulator (only the top layer runs the emulator)",
        "calsync/sync/run.py:2 imports calsync (__init__ is above sync)",
    ]


def test_no_packages_import_each_other_round_a_circle() -> None:
    assert package_cycles() == []


def test_a_circle_between_packages_is_caught(tmp_path: Path) -> None:
    tree = tmp_path / "calsync"
    for part, imports in {
        "accounts": "from calsync.sync.run import sync_calendar\n",
        "sync": "from calsync.webhooks import outbox\n",
        "webhooks": "import calsync.accounts.connected\n",
        "feed": "from calsync.store import models\n",
        "store": "",
    }.items():
        (tree / part).mkdir(parents=True)
        (tree / part / "__init__.py").write_text("")
        (tree / part / "mod.py").write_text(imports)
    (tree / "__init__.py").write_text("")
    assert package_cycles(tree) == [["accounts", "sync", "webhooks"]]
    assert upward_imports(tree) == []  # sideways imports: only the circle test sees them


@pytest.mark.parametrize("part", [part for layer in LAYERS for part in layer])
def test_layers_name_only_real_parts(part: str) -> None:
    assert (PACKAGE / f"{part}.py").exists() or (PACKAGE / part / "__init__.py").exists()
