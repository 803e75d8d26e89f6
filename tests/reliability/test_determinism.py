"""Determinism as a contract: a trial's numbers depend on its config only (issue 24).

One small grid (8 tiny MLPs on all of mnist1d in 2 shape groups, packed) runs through the
real scheduler on the session's local Ray (2 CPUs). Then the same trial ids run again in
other combinations:

- the bs-64 quarter alone (one pack of 2 on 2 CPUs: it used to get 2 torch threads, the
  full grid's packs 1 each; mnist1d's normalization, a reduction over 160,000 values, then
  gave other inputs in their last bits, and every number after them differed);
- the bs-128 half in packs of at most 2 (every member beside other partners);
- the bs-64 half with its pack's worker SIGKILLed at the end of epoch 2 (the pack task is
  re-executed by Ray and every member resumes from its epoch-1 checkpoint);
- a pair of them through `batchlab run --num-cpus 1` (a subprocess with its own embedded
  Ray of 1 CPU);
- a lone pair (`pack: false`) through Ray, against the same trials run in this process.

Every numeric result of the epochs, steps, layers and trials rows (times, memory and
attempt counters excepted) must be bit-identical, on CPU, for the same trial id. The number
of values compared is printed (`pytest -s`) and asserted to be what the grid implies.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

from scheduler.runner import run_grid
from scheduler.spec import parse_spec
from scheduler.tasks import execute_trial
from tests.reliability.helpers import REPO, write_grid
from warehouse.db import connect
from warehouse.schemas import SCHEMAS

# Columns that measure time, memory or the machine, or count attempts: not results.
NOT_RESULTS = {
    "epoch_time_s",
    "elapsed_s",
    "examples_per_s",
    "eval_time_s",
    "probe_time_s",
    "rss_mb",
    "gpu_memory_peak_mb",
    "gpu_utilization_pct",
    "train_time_s",
    "wall_time_s",
    "peak_memory_mb",
    "resumed_from_epoch",
    "attempt",
    "pack_size",
    "schema_version",
    "at_best_elapsed_s",
    "mean_epoch_time_s",
    "mean_examples_per_s",
}
TABLES = ("trials", "epochs", "steps", "layers")
KEYS = {"trials": (), "epochs": ("epoch",), "steps": ("step",), "layers": ("epoch", "layer")}
EPOCHS = 3
N_TRAIN = 4000  # mnist1d, all of it: normalized over 160,000 values (threads used to matter)

GRID: dict[str, Any] = {
    "experiment": "det",
    "dataset": {"name": "mnist1d"},
    "model": {"name": "mlp", "hidden": [8]},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "max_epochs": EPOCHS,
    "measure": {"layers": True, "store_steps": True, "update_norms": True, "train_eval": False},
    "grid": {"batch_size": [64, 128], "lr": [0.05, 0.1], "seed": [0, 1]},
    "resources": {"cpus_per_trial": 1, "pack": "auto"},
}


def _grid(experiment: str, **over: Any) -> dict[str, Any]:
    g = copy.deepcopy(GRID)
    g["experiment"] = experiment
    for k, v in over.items():
        g[k] = {**g[k], **v} if isinstance(v, dict) and isinstance(g.get(k), dict) else v
    return g


def _columns(table: str) -> list[str]:
    numeric = ("int64", "double", "list<item: int64>")
    return [
        f.name
        for f in SCHEMAS[table]
        if str(f.type) in numeric and f.name not in NOT_RESULTS and f.name != "trial_id"
    ]


def results(root: str, experiment: str) -> dict[str, dict[str, dict[tuple, tuple]]]:
    """{table: {trial_id: {row key: the row's result values}}} of one experiment."""
    con = connect(root)
    out: dict[str, dict[str, dict[tuple, tuple]]] = {}
    for table in TABLES:
        cols = _columns(table)
        names = [*KEYS[table], *cols]
        q = f"SELECT trial_id, {', '.join(names)} FROM {table} WHERE experiment = ?"
        by_trial: dict[str, dict[tuple, tuple]] = {}
        for row in con.execute(q, [experiment]).fetchall():
            k = len(KEYS[table])
            rows = by_trial.setdefault(row[0], {})
            assert row[1 : 1 + k] not in rows, f"duplicate {table} row {row[: 1 + k]}"
            rows[row[1 : 1 + k]] = tuple(row[1 + k :])
        out[table] = by_trial
    return out


def compare(ref: dict, got: dict, what: str) -> int:
    """Every row of `got` equals `ref`'s for the same trial id, bit for bit; returns the
    number of values compared."""
    n = 0
    for table in TABLES:
        assert got[table], f"{what}: no {table} rows"
        for tid, rows in got[table].items():
            assert rows.keys() == ref[table][tid].keys(), f"{what}: {table} rows of {tid}"
            for key, values in rows.items():
                want = ref[table][tid][key]
                same = [
                    a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
                    for a, b in zip(values, want, strict=True)
                ]
                bad = [c for c, ok in zip(_columns(table), same, strict=True) if not ok]
                assert not bad, f"{what}: {table} {tid} {key}: {bad} differ: {values} vs {want}"
                n += len(values)
    return n


@pytest.mark.slow
def test_same_trial_same_numbers_in_any_grid_pack_cpu_count_or_resume(
    ray_local, tmp_path, monkeypatch, ray_tmp
):
    root = str(tmp_path / "runs")
    t0, took = time.perf_counter(), {}
    full = parse_spec(_grid("det-full"))
    report = run_grid(full, root, progress=False)
    assert report.counts["completed"] == 8, report.results
    ref = results(root, "det-full")
    assert len(ref["trials"]) == 8
    ids64 = {t.trial_id for t in full.trials() if t.batch_size == 64}
    compared: dict[str, int] = {}
    took["full grid"] = time.perf_counter() - t0

    def run(name: str, grid: dict[str, Any], n: int) -> None:
        t = time.perf_counter()
        report = run_grid(parse_spec(grid), root, progress=False)
        assert report.counts["completed"] == n, report.results
        compared[name] = compare(ref, results(root, grid["experiment"]), name)
        took[name] = time.perf_counter() - t

    # The bs-64 quarter alone: one pack of 2 on 2 CPUs (it used to get 2 threads, the full
    # grid's packs 1 each).
    run("bs-64 quarter", _grid("det-q", grid={"batch_size": [64], "lr": [0.05]}), 2)
    # The bs-128 half in packs of at most 2: other partners than in the full grid.
    run("packs of 2", _grid("det-p", grid={"batch_size": [128]}, resources={"max_pack_size": 2}), 4)

    # The bs-64 pack's worker SIGKILLed at the end of epoch 2 of its first attempt: Ray
    # re-executes the pack task and all 4 members resume from their epoch-1 checkpoints.
    victim = sorted(ids64)[0]
    plan = {victim: {"KILL_AT_EPOCH": "2", "KILL_ATTEMPTS": "1"}}
    monkeypatch.setenv("BATCHLAB_FAULT_PLAN", json.dumps(plan))
    run("killed and resumed", _grid("det-k", grid={"batch_size": [64]}), 4)
    monkeypatch.delenv("BATCHLAB_FAULT_PLAN")
    resumed = (
        connect(root)
        .execute(
            "SELECT trial_id, attempt, resumed_from_epoch FROM trials WHERE experiment = 'det-k'"
        )
        .fetchall()
    )
    assert {tuple(r) for r in resumed} == {(tid, 2, 1) for tid in ids64}, resumed

    # A pair through `batchlab run --num-cpus 1`: its own embedded Ray with 1 CPU.
    t = time.perf_counter()
    one_cpu = _grid("det-full", grid={"batch_size": [128], "lr": [0.1]})
    root1 = str(tmp_path / "runs-1cpu")
    grid_file = str(write_grid(tmp_path / "g.yaml", one_cpu))
    cmd = [sys.executable, "-m", "batchlab.cli", "run", grid_file, "--storage", root1]
    cmd += ["--num-cpus", "1", "--no-progress"]
    env = _env(ray_tmp)
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env, start_new_session=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    compared["1 CPU"] = compare(ref, results(root1, "det-full"), "1 CPU")
    took["1 CPU"] = time.perf_counter() - t

    # Lone trials (pack: false) through Ray against the same trials run in this process.
    t = time.perf_counter()
    lone = _grid("det-lone", grid={"batch_size": [128], "lr": [0.05]}, resources={"pack": False})
    ref_root = str(tmp_path / "ref")
    threads = torch.get_num_threads()
    try:
        for cfg in parse_spec(lone).trials():
            execute_trial(
                cfg.model_dump_json(),
                "det-lone",
                ref_root,
                code_version="ref",
                device="cpu",
                num_threads=1,
            )
    finally:
        torch.set_num_threads(threads)
    report = run_grid(parse_spec(lone), root, progress=False)
    assert report.counts["completed"] == 2, report.results
    lone_ref = results(ref_root, "det-lone")
    compared["lone"] = compare(lone_ref, results(root, "det-lone"), "lone")
    took["lone"] = time.perf_counter() - t

    # The provenance says each ran on the same threads (perf_json.torch_threads): a trial's
    # threads come from cpus_per_trial only, never from the CPUs or packs beside it.
    for where in (root, root1, ref_root):
        rows = connect(where).execute("SELECT trial_id, perf_json FROM trials").fetchall()
        assert {json.loads(p)["torch_threads"] for _, p in rows} == {1}, (where, rows)

    total = sum(compared.values())
    print(f"\nbit-for-bit comparisons: {total} values {compared}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in took.items()))
    v64, v128 = values_per_trial(64), values_per_trial(128)
    assert compared == {
        "bs-64 quarter": 2 * v64,
        "packs of 2": 4 * v128,
        "killed and resumed": 4 * v64,
        "1 CPU": 2 * v128,
        "lone": 2 * v128,
    }


def values_per_trial(batch_size: int) -> int:
    """Result values one trial of GRID writes: rows per table x result columns."""
    rows = {
        "trials": 1,
        "epochs": EPOCHS,
        "steps": EPOCHS * math.ceil(N_TRAIN / batch_size),
        "layers": EPOCHS * 4,  # mlp [8]: two weights, two biases
    }
    return sum(len(_columns(t)) * n for t, n in rows.items())


def _env(ray_tmp: str) -> dict[str, str]:
    """The driver's environment: its own Ray (as a user's `batchlab run`), no faults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHLAB_FAULT_")}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)
    return {**env, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
