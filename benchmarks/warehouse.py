"""Warehouse latency at the scale of a real study: every named query on the per-trial files,
then the compaction, then every named query on the compacted files.

Synthesizes a warehouse of `--trials` trials (default 10,000) x `--epochs` epochs (200:
2M `epochs` rows) with `--steps-per-trial` steps each (2,000: 20M `steps` rows), plus
`--layers` layer rows per epoch, 4 probe rows per trial and a few loss-landscape analyses,
one Parquet file per trial and table, exactly where `batchlab run` would put them (written
with pyarrow directly, in parallel, for speed). Then, on one DuckDB connection
(`warehouse.db.connect`, the app's settings: 2 threads, 2 GB):

  (a) every query of `warehouse.queries.NAMED_QUERIES` (plus `experiments` and
      `filter_options`) on the raw per-trial files,
  (b) the same after `warehouse.compact.compact`,
  (c) the compaction's wall time,

each query run once cold (first run on a fresh connection) and `--repeats` times warm
(median reported); the results before and after compaction are compared (they must be
equal). Targets on a 2-core machine: every query under 300 ms after compaction, under 3 s
before. Prints a table and writes JSON (`--json`).

    python benchmarks/warehouse.py                                   # full scale (long)
    python benchmarks/warehouse.py --trials 1000 --epochs 200 --steps-per-trial 2000
    python benchmarks/warehouse.py --trials 20 --epochs 5 --steps-per-trial 10 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from warehouse import queries  # noqa: E402
from warehouse.compact import compact  # noqa: E402
from warehouse.db import connect  # noqa: E402
from warehouse.layout import Layout  # noqa: E402
from warehouse.schemas import SCHEMA_VERSION, SCHEMAS, TRIAL_TABLES  # noqa: E402
from warehouse.summaries import AT_BEST, MEANS, summarize, summarize_epochs  # noqa: E402

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


# ---- measurement --------------------------------------------------------------------------


def named_queries() -> dict[str, Any]:
    """Every query to time: the registry (when present) plus the app's filterless ones."""
    registry = getattr(queries, "NAMED_QUERIES", None) or {
        n: getattr(queries, n) for n in ("curves", "trial_table")
    }
    out = {"experiments": lambda con, f: queries.experiments(con)}
    if hasattr(queries, "filter_options"):
        out["filter_options"] = lambda con, f: pd.DataFrame(
            {k: [len(v)] for k, v in queries.filter_options(con).items()}
        )
    out.update(registry)
    return out


def same_result(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Equal up to row order and float rounding: a scan in another row order sums floats in
    another order (relative differences around 1e-13 in a std)."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    exact = [c for c in a.columns if not pd.api.types.is_float_dtype(a[c])]
    key = lambda d: d.astype({c: str for c in exact}).sort_values(exact or list(d.columns))  # noqa: E731
    a, b = key(a).reset_index(drop=True), key(b).reset_index(drop=True)
    if not a[exact].astype(str).equals(b[exact].astype(str)):
        return False
    floats = [c for c in a.columns if c not in exact]
    return all(
        np.allclose(
            a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True
        )
        for c in floats
    )


def time_queries(root: str, repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    con = connect(root, threads=2, memory_limit="2GB")
    connect_s = time.perf_counter() - t0
    print(f"  connect: {connect_s:.1f} s", flush=True)
    f = queries.Filters()
    out: dict[str, Any] = {"connect_s": connect_s, "queries": {}}
    for name, fn in named_queries().items():
        t = time.perf_counter()
        df = fn(con, f)
        cold = time.perf_counter() - t
        warm = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(con, f)
            warm.append(time.perf_counter() - t)
        out["queries"][name] = {
            "cold_s": cold,
            "median_s": statistics.median(warm) if warm else cold,
            "rows": len(df),
            "result": df,
        }
        print(
            f"  {name}: {cold * 1e3:.0f} ms cold, {out['queries'][name]['median_s'] * 1e3:.0f} ms warm",
            flush=True,
        )
    con.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=200, help="epochs rows per trial")
    ap.add_argument("--steps-per-trial", type=int, default=2_000, help="steps rows per trial")
    ap.add_argument("--layers", type=int, default=2, help="layers rows per trial and epoch")
    ap.add_argument("--experiments", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="warm runs per query (median)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="writers")
    ap.add_argument("--root", default=None, help="where to build it (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the synthesized root")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--only-synthesize", action="store_true", help="build the warehouse at --root and stop"
    )
    ap.add_argument(
        "--existing",
        action="store_true",
        help="measure the uncompacted warehouse at --root built by --only-synthesize",
    )
    args = ap.parse_args(argv)
    if (args.only_synthesize or args.existing) and not args.root:
        ap.error("--only-synthesize and --existing need --root")

    root = args.root or tempfile.mkdtemp(prefix="batchlab-bench-")
    scale_file = Path(root) / "bench-scale.json"
    if args.existing:
        if not scale_file.exists():
            ap.error(f"--existing: {scale_file} not found; build it with --only-synthesize")
        saved = json.loads(scale_file.read_text())
        for k in ("trials", "epochs", "steps_per_trial", "layers", "experiments"):
            setattr(args, k, saved[k])
    elif Path(root).exists() and any(Path(root).iterdir()):
        ap.error(f"--root {root} is not empty; give a new directory")
    try:
        if args.existing:
            synth = saved["synthesis"]
            print(f"measuring the warehouse synthesized at {root}: {saved}", flush=True)
        else:
            print(
                f"synthesizing {args.trials} trials x {args.epochs} epochs, "
                f"{args.steps_per_trial} steps, {args.layers} layers per epoch into {root} ...",
                flush=True,
            )
            synth = synthesize(
                root, args.trials, args.epochs, args.steps_per_trial, args.layers,
                args.experiments, args.workers,
            )  # fmt: skip
            print(f"  {synth['rows']:,} rows in {synth['files']:,} files, {synth['seconds']:.1f} s")
        if args.only_synthesize:
            scale_file.write_text(
                json.dumps(
                    {k: getattr(args, k) for k in
                     ("trials", "epochs", "steps_per_trial", "layers", "experiments")}
                    | {"synthesis": synth}
                )
            )  # fmt: skip
            return 0
        raw = time_queries(root, args.repeats)
        t = time.perf_counter()
        report = compact(root)
        compaction_s = time.perf_counter() - t
        print(report.summary().splitlines()[0])
        compacted = time_queries(root, args.repeats)
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)

    names = list(raw["queries"])
    same = {
        n: same_result(raw["queries"][n].pop("result"), compacted["queries"][n].pop("result"))
        for n in names
    }
    result = {
        "scale": {
            "trials": args.trials, "epochs_rows": args.trials * args.epochs,
            "steps_rows": args.trials * args.steps_per_trial,
            "layers_rows": args.trials * args.epochs * args.layers,
            "experiments": args.experiments,
        },
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(),
            # other work on the machine skews every number: the load average at the end
            "load_average_1_5_15min": os.getloadavg(),
            "python": platform.python_version(), "duckdb": __import__("duckdb").__version__,
            "pyarrow": pa.__version__,
        },
        "synthesis": synth,
        "raw": raw,
        "compaction": {"seconds": compaction_s, "files_in": report.files_in,
                       "rows_out": report.rows_out, "parts": sum(d.mode != "none" for d in report.dirs)},
        "compacted": compacted,
        "same_results": same,
        "targets": {"raw_s": 3.0, "compacted_s": 0.3},
        "repeats": args.repeats,
    }  # fmt: skip
    print(
        f"\nconnect: raw {raw['connect_s'] * 1e3:.0f} ms, compacted {compacted['connect_s'] * 1e3:.0f} ms"
    )
    print(f"compaction: {compaction_s:.1f} s for {report.files_in:,} files")
    print(
        f"\n{'query':32} {'raw cold':>9} {'raw med':>9} {'comp cold':>9} {'comp med':>9}  rows  same"
    )
    for n in names:
        r, c = raw["queries"][n], compacted["queries"][n]
        flag = "" if c["median_s"] < 0.3 and r["median_s"] < 3.0 else "  OVER TARGET"
        print(
            f"{n:32} {r['cold_s'] * 1e3:8.0f}ms {r['median_s'] * 1e3:8.0f}ms "
            f"{c['cold_s'] * 1e3:8.0f}ms {c['median_s'] * 1e3:8.0f}ms {c['rows']:5d}  "
            f"{'yes' if same[n] else 'NO'}{flag}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
