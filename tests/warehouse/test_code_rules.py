"""Rules of the warehouse and app code (issue 25): no module over 500 lines, and no private
(underscore) name imported across modules, neither `from m import _x` nor `m._x` on an
imported module of the project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("warehouse", "app")
OURS = ("warehouse", "app", "workers", "scheduler", "batchlab")
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_module_over_500_lines(pkg):
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: split by responsibility: {long}"


def test_no_private_names_imported_across_modules():
    found = []
    for p in _modules():
        tree = ast.parse(p.read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {
                    a.asname or a.name.split(".")[0]
                    for a in node.names
                    if a.name.split(".")[0] in OURS
                }
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in OURS:
                for a in node.names:
                    if _private(a.name):
                        found.append(f"{p.relative_to(REPO)}:{node.lineno} {a.name}")
                    modules.add(a.asname or a.name)  # a name that may be a module
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
            ):
                found.append(f"{p.relative_to(REPO)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, f"private names used across modules: {found}"
