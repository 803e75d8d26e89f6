"""Fixtures of the app tests: the hand-made fixture warehouse and an empty root."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app"
FIXTURES = REPO / "tests" / "fixtures"


def load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "synthetic_warehouse", FIXTURES / "synthetic_warehouse.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> str:
    """The synthetic warehouse (experiments support / contradict / sparse)."""
    return load_fixture_module().build(tmp_path_factory.mktemp("app-fixture") / "runs")


@pytest.fixture(scope="session")
def empty_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("app-empty") / "runs")
