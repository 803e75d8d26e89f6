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


@pytest.fixture(scope="session", autouse=True)
def private_app_cache(tmp_path_factory):
    """The app's disk cache (app/disk_cache.py) in a private folder, not the user's, and no
    background warm-up processes from the servers the browser tests start."""
    import os

    saved = {k: os.environ.get(k) for k in ("BATCHLAB_APP_CACHE", "BATCHLAB_APP_WARM")}
    os.environ["BATCHLAB_APP_CACHE"] = str(tmp_path_factory.mktemp("app-cache"))
    os.environ["BATCHLAB_APP_WARM"] = "0"
    yield os.environ["BATCHLAB_APP_CACHE"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _warehouses():
    spec = importlib.util.spec_from_file_location("warehouses", FIXTURES / "warehouses.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def custom_study_root(tmp_path_factory, data_cache) -> str:
    """A study of user code (examples/custom, trained by the worker task; about 30 s)."""
    return _warehouses().build_custom(tmp_path_factory.mktemp("wh-custom") / "runs")


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory) -> str:
    """10,000 trials shaped like benchmarks/warehouse.py's, as compacted parts (seconds)."""
    return _warehouses().build_bench(tmp_path_factory.mktemp("wh-bench") / "runs")


@pytest.fixture(scope="session")
def mixed_root(tmp_path_factory, custom_study_root) -> str:
    """Native, custom, CSV-imported and Ray-Tune-imported studies in one warehouse."""
    base = tmp_path_factory.mktemp("wh-mixed")
    return _warehouses().build_mixed(base / "runs", custom_study_root, base / "sources")


@pytest.fixture(scope="session")
def warehouse_root(request) -> str:
    """`demo`, `custom`, `bench` or `mixed` by name (indirect parametrization)."""
    name = request.param
    if name == "demo":
        return _warehouses().DEMO
    return request.getfixturevalue(
        {"custom": "custom_study_root", "bench": "bench_root", "mixed": "mixed_root"}[name]
    )
