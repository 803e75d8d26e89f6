"""The synthetic warehouse of benchmarks/warehouse.py: `synthesize` writes `n_trials` trials
(epochs, steps, layers and probe rows, and the trial summary) as one Parquet file per trial
and table, exactly where `batchlab run` would put them (with pyarrow directly, in parallel
processes), plus a few loss-landscape analyses per experiment.

Imported by benchmarks/warehouse.py, which puts the repository root on sys.path first (the
`warehouse` package imported here).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.layout import Layout
from warehouse.schemas import SCHEMA_VERSION, SCHEMAS, TRIAL_TABLES
from warehouse.summaries import AT_BEST, MEANS, summarize, summarize_epochs

BATCH_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
SCALINGS = ("none", "linear", "sqrt")
N_TRAIN, N_VAL = 60_000, 10_000
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


# ---- synthesis ----------------------------------------------------------------------------


def _trial_config(i: int, n_experiments: int) -> dict[str, Any]:
    combos = len(BATCH_SIZES) * len(LRS) * len(SCALINGS)
    c = i % combos
    return {
        "experiment": f"bench-{i % n_experiments}",
        "batch_size": BATCH_SIZES[c % len(BATCH_SIZES)],
        "lr": LRS[(c // len(BATCH_SIZES)) % len(LRS)],
        "lr_scaling": SCALINGS[c // (len(BATCH_SIZES) * len(LRS))],
        "seed": i // combos,
        "trial_id": hashlib.sha256(f"bench-trial-{i}".encode()).hexdigest()[:16],
    }


def _col(n: int, value: Any, type_: pa.DataType) -> pa.Array:
    return pa.array([value] * n, type=type_) if n < 64 else pa.repeat(pa.scalar(value, type_), n)


def _table(name: str, key: dict[str, Any], n: int, cols: dict[str, Any]) -> pa.Table:
    """A table of `name`'s schema: key columns repeated, `cols` as given, the rest NULL."""
    schema = SCHEMAS[name]
    arrays = []
    for f in schema:
        if f.name in cols:
            arrays.append(pa.array(cols[f.name], type=f.type))
        elif f.name in key:
            arrays.append(_col(n, key[f.name], f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_trial(
    layout: Layout, i: int, n_exp: int, n_epochs: int, n_steps: int, n_layers: int
) -> int:
    """Write one synthetic trial's files (one per table); returns the rows written."""
    cfg = _trial_config(i, n_exp)
    rng = np.random.default_rng(i)
    exp, tid, bs = cfg["experiment"], cfg["trial_id"], cfg["batch_size"]
    scale = {"none": 1.0, "linear": bs / 32, "sqrt": math.sqrt(bs / 32)}[cfg["lr_scaling"]]
    scaled_lr = cfg["lr"] * scale
    diverged = scaled_lr > 8.0
    spe = max(1, n_steps // n_epochs)
    key = {
        "experiment": exp,
        "trial_id": tid,
        "config_hash": tid * 4,
        "code_version": "0.1.0+gbench",
    }
    ep = np.arange(1, n_epochs + 1)
    gap = 0.02 * math.log2(bs / 16)  # larger batches generalize a bit worse
    train = 2.3 * np.exp(-ep / (0.1 * n_epochs + 1)) + 0.05 + rng.normal(0, 0.005, n_epochs)
    val = train + gap + 0.03 + rng.normal(0, 0.005, n_epochs)
    dist = np.sqrt(ep) * (1 + 0.1 * math.log2(bs)) * (1 + rng.normal(0, 0.02))
    epoch_time = 0.5 * spe / math.sqrt(bs) + rng.uniform(0, 0.01, n_epochs)
    upd = np.exp(rng.normal(math.log(scaled_lr), 0.3, max(n_steps, 1)))[:n_steps]
    best = int(np.argmin(val))
    layout.fs.create_dir(layout.table_dir("trials", exp), recursive=True)
    tables = {
        "epochs": _table(
            "epochs",
            key,
            n_epochs,
            {
                "epoch": ep,
                "step": ep * spe,
                "examples_seen": np.minimum(ep * spe * bs, ep * N_TRAIN),
                "lr": np.full(n_epochs, scaled_lr),
                "train_loss": train * 1.05,
                "train_loss_eval": train,
                "train_acc_eval": 1 - train / 2.5,
                "val_loss": val,
                "val_acc": 1 - val / 2.5,
                "dist_from_init": dist,
                "epoch_distance": np.diff(dist, prepend=0.0),
                "update_norm_p10": np.full(n_epochs, scaled_lr * 0.6),
                "update_norm_median": np.full(n_epochs, scaled_lr),
                "update_norm_p90": np.full(n_epochs, scaled_lr * 1.5),
                "update_norm_mean": np.full(n_epochs, scaled_lr * 1.05),
                "update_norm_max": np.full(n_epochs, scaled_lr * 3),
                "grad_norm_p10": np.full(n_epochs, 0.5),
                "grad_norm_median": np.full(n_epochs, 1.0),
                "grad_norm_p90": np.full(n_epochs, 1.5),
                "grad_norm_mean": np.full(n_epochs, 1.05),
                "grad_norm_max": np.full(n_epochs, 3.0),
                "epoch_time_s": epoch_time,
                "elapsed_s": np.cumsum(epoch_time),
                "examples_per_s": spe * bs / epoch_time,
            },
        ),
        "steps": _table(
            "steps",
            key,
            n_steps,
            {
                "step": np.arange(1, n_steps + 1),
                "epoch": np.arange(n_steps) // spe + 1,
                "lr": np.full(n_steps, scaled_lr),
                "update_norm": upd,
                "grad_norm": upd / scaled_lr,
                "batch_loss": rng.gamma(4.0, 0.1, n_steps),
            },
        ),
        "layers": _table(
            "layers",
            key,
            n_epochs * n_layers,
            {
                "epoch": np.repeat(ep, n_layers),
                "layer": [f"{j // 2}.{'weight' if j % 2 == 0 else 'bias'}" for j in range(n_layers)]
                * n_epochs,
                "numel": np.tile(np.arange(1, n_layers + 1) * 1000, n_epochs),
                "dist_from_init": np.repeat(dist, n_layers) / n_layers,
                "rel_dist_from_init": np.repeat(dist, n_layers) / 50,
                "param_norm": np.full(n_epochs * n_layers, 10.0),
            },
        ),
        "probes": _table(
            "probes",
            key,
            4,
            {
                "epoch": [n_epochs] * 4,
                "probe": [
                    "keskar_sharpness",
                    "keskar_sharpness",
                    "hessian_top_eig",
                    "noise_scale_two_batch",
                ],
                "value": [0.5 * math.log2(bs), 0.3 * math.log2(bs), 10 + bs / 100, 300.0 + bs],
                "status": ["ok"] * 4,
                "seconds": [1.0, 1.0, 2.0, 0.5],
                "n_examples": [2048] * 4,
                "settings_json": ['{"eps": 0.001}', '{"eps": 0.0005}', '{"tol": 0.001}', "{}"],
            },
        ),
    }
    summary = {
        "status": "diverged" if diverged else "completed",
        "stop_reason": "diverged" if diverged else "max_epochs",
        "dataset": "mnist",
        "model": "mlp",
        "batchnorm": False,
        "optimizer": "sgd",
        "momentum": 0.9,
        "batch_size": bs,
        "lr": cfg["lr"],
        "scaled_lr": scaled_lr,
        "lr_scaling": cfg["lr_scaling"],
        "base_batch_size": 32,
        "warmup_epochs": 0.0,
        "seed": cfg["seed"],
        "max_epochs": n_epochs,
        "n_train": N_TRAIN,
        "n_val": N_VAL,
        "steps_per_epoch": spe,
        "epochs_run": n_epochs,
        "steps_run": n_steps,
        "best_val_loss": float(val[best]),
        "best_val_acc": float(1 - val[best] / 2.5),
        "best_epoch": best + 1,
        "best_step": (best + 1) * spe,
        "steps_to_target": int(200 + 20000 / bs) if not diverged else -1,
        "diverged_step": 7 if diverged else -1,
        "final_train_loss": float(train[-1]),
        "final_val_loss": float(val[-1]),
        "final_dist_from_init": float(dist[-1]),
        "train_time_s": float(epoch_time.sum()),
        "wall_time_s": float(epoch_time.sum() * 1.3),
        "peak_memory_mb": float("nan"),
        "resumed_from_epoch": 0,
        "attempt": 1,
        "pack_size": 1,
        "data_parallel_workers": 1,
        "config_json": json.dumps(cfg, sort_keys=True),
        "batchlab_version": "0.1.0",
        "torch_version": "2.13.0",
        "python_version": platform.python_version(),
        "host": "bench",
        "node_id": "",
        "device": "cpu",
        "device_name": "synthetic",
        "started_at": T0 + dt.timedelta(minutes=i),
        "finished_at": T0 + dt.timedelta(minutes=i + 1),
        "schema_version": SCHEMA_VERSION,
        # The summaries `write_trial` derives (warehouse/summaries.py).
        **summarize({"update_norm": upd, "grad_norm": upd / scaled_lr}),
        **summarize_epochs(
            ep,
            {c: tables["epochs"].column(c).to_numpy() for c in (*AT_BEST, *MEANS)},
            best + 1,
        ),
    }
    tables["trials"] = _table("trials", key, 1, {k: [v] for k, v in summary.items()})
    rows = 0
    for name in (*(t for t in TRIAL_TABLES if t in tables), "trials"):  # trials last: the commit
        path = layout.table_file(name, exp, tid)
        layout.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(tables[name], path, compression="zstd")
        rows += len(tables[name])
    return rows


def _write_chunk(root: str, lo: int, hi: int, n_exp: int, e: int, s: int, nl: int) -> int:
    layout = Layout.open(root)
    return sum(_write_trial(layout, i, n_exp, e, s, nl) for i in range(lo, hi))


def _write_landscapes(layout: Layout, n_exp: int, n_trials: int) -> None:
    """Per experiment: 1-D interpolations (2 splits x 51 alphas) between small- and
    large-batch trials, and 2-D surfaces (21 x 21) around a few trials."""
    from warehouse.store import write_rows

    for x in range(n_exp):
        exp = f"bench-{x}"
        ids = [_trial_config(i, n_exp)["trial_id"] for i in range(x, min(n_trials, 40), n_exp)]
        for a in range(0, len(ids) - 1, 2):
            rows = [
                {"experiment": exp, "analysis_id": f"interp-{a}", "kind": "interpolate",
                 "trial_id": ids[a], "trial_id_b": ids[a + 1], "alpha": al, "split": sp,
                 "loss": 0.1 + 4 * (al - 0.5) ** 2, "acc": 0.9}
                for sp in ("train", "val") for al in np.linspace(-0.5, 1.5, 51)
            ]  # fmt: skip
            write_rows(layout, "landscapes", exp, f"interp-{a}", rows)
        for a in range(min(3, len(ids))):
            grid = np.linspace(-1, 1, 21)
            rows = [
                {"experiment": exp, "analysis_id": f"surface-{a}", "kind": "surface",
                 "trial_id": ids[a], "alpha": al, "beta": be, "split": "train",
                 "loss": 0.1 + al**2 + be**2, "acc": 0.9}
                for al in grid for be in grid
            ]  # fmt: skip
            write_rows(layout, "landscapes", exp, f"surface-{a}", rows)


def synthesize(
    root: str, n_trials: int, n_epochs: int, n_steps: int, n_layers: int, n_exp: int, workers: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    chunk = max(1, math.ceil(n_trials / (workers * 8)))
    bounds = [(lo, min(n_trials, lo + chunk)) for lo in range(0, n_trials, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futs = [
                pool.submit(_write_chunk, root, lo, hi, n_exp, n_epochs, n_steps, n_layers)
                for lo, hi in bounds
            ]
            rows = sum(f.result() for f in futs)
    else:
        rows = sum(
            _write_chunk(root, lo, hi, n_exp, n_epochs, n_steps, n_layers) for lo, hi in bounds
        )
    _write_landscapes(Layout.open(root), n_exp, n_trials)
    files = (len(TRIAL_TABLES) + 1 - ("metrics" in TRIAL_TABLES)) * n_trials  # no user metrics
    return {"rows": rows, "files": files, "seconds": time.perf_counter() - t0}
