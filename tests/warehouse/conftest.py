"""Helpers of the warehouse infrastructure tests: fake trials written through the real
`warehouse.store.write_trial`, and per-column checksums of every view."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import duckdb
import pytest

from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS
from warehouse.store import write_rows, write_trial

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def fake_trial(
    layout: Layout,
    experiment: str,
    i: int,
    *,
    epochs: int = 3,
    steps: int = 8,
    probes: bool = True,
    value: float = 0.0,
    status: str = "completed",
) -> str:
    """Write trial number `i` (id `t0000i...`) with every trial table; returns its id."""
    tid = f"t{i:015d}"
    write_trial(
        layout,
        experiment,
        {
            "trial_id": tid,
            "config_hash": f"h{i}",
            "code_version": "test",
            "status": status,
            "batch_size": 32 * 2 ** (i % 4),
            "lr": 0.1,
            "lr_scaling": "none",
            "seed": i // 4,
            "dataset": "mnist1d",
            "model": "mlp",
            "best_val_loss": 1.0 / (i + 1) + value,
            "finished_at": T0 + dt.timedelta(minutes=i),
        },
        {
            "epochs": [
                {"epoch": e, "step": e * 10, "val_loss": value + i + e / 10, "train_loss": 0.5}
                for e in range(1, epochs + 1)
            ],
            "steps": [
                {"step": s, "epoch": 1 + s // 10, "update_norm": 0.01 * s + value}
                for s in range(1, steps + 1)
            ],
            "layers": [
                {"epoch": e, "layer": name, "numel": 10, "dist_from_init": e * 0.1 + value}
                for e in range(1, epochs + 1)
                for name in ("0.weight", "0.bias")
            ],
            "probes": [
                {"epoch": epochs, "probe": "hessian_top_eig", "value": 3.0 + value, "status": "ok"}
            ]
            if probes
            else [],
        },
    )
    return tid


def fake_analysis(layout: Layout, experiment: str, analysis_id: str, n: int = 5) -> None:
    write_rows(
        layout,
        "landscapes",
        experiment,
        analysis_id,
        [
            {"experiment": experiment, "analysis_id": analysis_id, "kind": "interpolate",
             "trial_id": "t0", "alpha": a / n, "split": "train", "loss": float(a)}
            for a in range(n)
        ],
    )  # fmt: skip
    write_rows(
        layout,
        "analyses",
        experiment,
        analysis_id,
        [{"experiment": experiment, "analysis_id": analysis_id, "kind": "interpolate",
          "status": "completed"}],
    )  # fmt: skip


def checksums(con: duckdb.DuckDBPyConnection, raw: bool = False) -> dict[str, tuple]:
    """Row count and an order-independent checksum of every column of every view."""
    out = {}
    for t, schema in SCHEMAS.items():
        view = f"{t}_raw" if raw else t
        cols = ", ".join(f"sum(hash({f.name}))" for f in schema)
        out[view] = con.execute(f"SELECT count(*), {cols} FROM {view}").fetchone()
    return out


@pytest.fixture
def fake() -> Callable[..., str]:
    return fake_trial


@pytest.fixture
def sums() -> Callable[..., dict[str, tuple]]:
    return checksums


def _small(root) -> Layout:
    layout = Layout.open(root)
    for i in range(12):
        fake_trial(layout, f"exp{i % 2}", i, probes=i % 3 != 0)
    fake_analysis(layout, "exp0", "interp-a")
    fake_analysis(layout, "exp1", "interp-b")
    return layout


@pytest.fixture
def small_warehouse(tmp_path) -> Layout:
    """12 trials in two experiments (every third without probes) and two analyses."""
    return _small(tmp_path / "runs")


@pytest.fixture(scope="module")
def shared_small_warehouse(tmp_path_factory) -> Layout:
    """The same as `small_warehouse`, built once per module: for tests that only read."""
    return _small(tmp_path_factory.mktemp("shared") / "runs")
