"""docs/design.md's concept map stays true to the code: every module it names exists, every module is named,
imports follow its layers, the import graph has no cycle, and a module over 400 lines is one it justifies."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "itkm_lightning"
DESIGN = (ROOT / "docs" / "design.md").read_text()
MAP = DESIGN[DESIGN.index("## Concept map"):DESIGN.index("### Long modules")]
LONG = DESIGN[DESIGN.index("### Long modules"):DESIGN.index("### What is still written by hand")]
MAX_LINES = 400


@functools.cache
def modules() -> dict[str, Path]:
    """``path/under/package.py`` -> file, package ``__init__`` files left out (they only re-export)."""
    return {p.relative_to(PACKAGE).as_posix(): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"}


@functools.cache
def layers() -> dict[str, int]:
    """Each module named in the map -> the index of its group (the bold headings, top to bottom)."""
    groups = re.split(r"\n\*\*[^*\n]+\*\*", MAP)[1:]
    assert len(groups) >= 5, "the concept map lost its layer headings"
    named = {}
    for i, group in enumerate(groups):
        for row in group.splitlines():
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            if row.startswith("|") and len(cells) == 2:  # | concept | module(s) |: only the module column counts
                named.update({name: i for name in re.findall(r"`([\w/]+\.py)`", cells[1])})
    return named


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
    """The project modules ``path`` imports, at any depth (function-level imports are dependencies too)."""
    found = set()
    known = modules()
    package_dir = path.parent.relative_to(PACKAGE).parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package upwards
                base = list(package_dir[: len(package_dir) - node.level + 1]) + (node.module or "").split(".")
            elif node.module and node.module.startswith("itkm_lightning"):
                base = node.module.split(".")[1:]
            else:
                continue
            names = [[*base, alias.name] for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.startswith("itkm_lightning.")]
        else:
            continue
        for parts in names:
            parts = [p for p in parts if p]
            if parts and "/".join(parts) + ".py" in known:
                found.add("/".join(parts) + ".py")
            elif parts and (PACKAGE / "/".join(parts)).is_dir():
                found.add("/".join(parts) + "/__init__.py")
    return frozenset(found)


def test_every_module_named_in_the_map_exists():
    missing = sorted(set(layers()) - set(modules()))
    assert not missing, f"docs/design.md names modules that do not exist: {missing}"


def test_every_module_is_in_the_map():
    unnamed = sorted(set(modules()) - set(layers()))
    assert not unnamed, f"modules missing from docs/design.md's concept map: {unnamed}"


def test_imports_follow_the_layers():
    layer = layers()
    upward = []
    for name, path in modules().items():
        for target in imported_modules(path):
            if target in layer and layer[target] > layer[name]:
                upward.append(f"{name} -> {target}")
    assert not upward, f"imports against the layers of docs/design.md: {upward}"


@pytest.mark.parametrize("low", ["clustering", "evaluation", "data", "models", "synthetic"])
def test_computations_never_import_the_training_stages(low):
    """The stages sit on top of clustering and evaluation (and data, models), never under them."""
    above = ("stages/", "callbacks/", "pipeline.py", "cli.py", "trainer_setup.py", "fit_config.py", "command.py",
             "tools/", "pretrain/")
    offenders = [f"{name} -> {target}" for name, path in modules().items() if name.startswith(low + "/")
                 for target in imported_modules(path) if target.startswith(above)]
    assert not offenders


def test_the_import_graph_has_no_cycle():
    graph = {name: {t for t in imported_modules(path) if t in modules() and t != name}
             for name, path in modules().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles}"


def test_long_modules_are_justified():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()
            if len(path.read_text().splitlines()) > MAX_LINES}
    unjustified = {name: n for name, n in long.items() if f"`{name}`" not in LONG}
    assert not unjustified, f"over {MAX_LINES} lines without a reason in docs/design.md 'Long modules': {unjustified}"


def test_the_parsers_read_real_rows_and_imports():
    """Guards the guards: the map parser finds the layers in order, the import reader finds real imports."""
    assert "stages/stage3.py" in layers() and "errors.py" in layers()
    assert layers()["errors.py"] < layers()["clustering/blocks.py"] < layers()["stages/stage1.py"] < layers()["cli.py"]
    assert "clustering/blocks.py" in imported_modules(PACKAGE / "callbacks" / "pseudo_labels.py")
