"""Shared fixtures: a local Ray instance (2 CPUs), storage roots, a tiny finished grid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BATCHLAB_SHARED", REPO.parent / "shared"))

# Keep every test's generated data (MNIST-1D cache) inside the test session.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _hypothesis_profiles() -> None:
    """Property tests that cannot fail by chance (tests/README.md): the `ci` profile draws
    the same examples on every run (derandomize, no example database) and is the default,
    always under $CI; HYPOTHESIS_PROFILE=dev draws fresh examples (and replays the failures
    it saved in .hypothesis/), to look for new bugs during development."""
    try:
        from hypothesis import settings
    except ImportError:  # the test extras are not installed: no property tests either
        return
    settings.register_profile("ci", derandomize=True, database=None, deadline=None)
    settings.register_profile("dev", derandomize=False, deadline=None)
    name = "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "ci")
    settings.load_profile(name)


_hypothesis_profiles()


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data-cache")
    os.environ["BATCHLAB_DATA_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_local(data_cache):
    """One local Ray instance for the session (2 CPUs, like CI)."""
    import ray

    from scheduler.runner import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def storage(tmp_path) -> str:
    return str(tmp_path / "runs")


TINY_GRID = {
    "experiment": "tiny",
    "dataset": "mnist1d",
    "model": {"name": "mlp", "hidden": [32]},
    "max_epochs": 3,
    "grid": {"batch_size": [64, 256], "lr": [0.05], "seed": [0, 1]},
    "resources": {"cpus_per_trial": 1},
}


@pytest.fixture(scope="session")
def tiny_warehouse(tmp_path_factory, ray_local) -> str:
    """A storage root holding the finished TINY_GRID (4 trials x 3 epochs), built once."""
    from scheduler.runner import run_grid
    from scheduler.spec import parse_spec

    root = str(tmp_path_factory.mktemp("tiny-warehouse") / "runs")
    report = run_grid(parse_spec(TINY_GRID), root, progress=False)
    assert report.counts["completed"] == 4, report.results
    return root
