"""Rules of the house (issue 25) over the whole tree, not one package at a time: no Python
module over 500 lines (source, tests, benchmarks, examples) and no private (underscore) name
imported from another module of the project's packages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("batchlab", "scheduler", "workers", "warehouse", "app")
FOLDERS = (*PACKAGES, "tests", "benchmarks", "examples", "deploy")
MAX_LINES = 500


def _modules(folders: tuple[str, ...]) -> list[Path]:
    return sorted(
        p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts
    )


def test_no_module_is_over_500_lines():
    long = {}
    for p in _modules(FOLDERS):
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            long[str(p.relative_to(ROOT))] = n
    assert long == {}


def test_no_private_name_is_imported_across_the_packages_modules():
    found = []
    for p in _modules(PACKAGES):
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert found == []
