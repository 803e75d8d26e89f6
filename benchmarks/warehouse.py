"""Warehouse latency at the scale of a real study: every named query on the per-trial files,
then the compaction, then every named query on the compacted files.

Synthesizes a warehouse of `--trials` trials (default 10,000) x `--epochs` epochs (200:
2M `epochs` rows) with `--steps-per-trial` steps each (2,000: 20M `steps` rows), plus
`--layers` layer rows per epoch, 4 probe rows per trial and a few loss-landscape analyses,
one Parquet file per trial and table, exactly where `batchlab run` would put them (written
with pyarrow directly, in parallel, for speed: benchmarks/warehouse_synth.py). Then, on one
DuckDB connection (`warehouse.db.connect`, the app's settings: 2 threads, 2 GB):

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
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.warehouse_synth import synthesize  # noqa: E402
from warehouse import queries  # noqa: E402
from warehouse.compact import compact  # noqa: E402
from warehouse.db import connect  # noqa: E402

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
