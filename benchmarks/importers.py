"""Importer scaling: one run of N epochs whose source gives per-epoch times without totals
(the case that was quadratic: every epoch summed the times of all epochs before it).

Writes a CSV sweep export (`run, batch_size, lr, epoch, train_loss, val_loss, val_acc,
epoch_time_s`: no `elapsed_s`) and a Ray Tune trial folder (`result.json` with
`time_this_iter_s` and no `time_total_s`) of `--rows` epochs each, then times
`batchlab import` on each into a fresh storage root: reading, `import_trials` (rows,
hashes, checks) and the Parquet writes. Prints a table and writes JSON (`--json`).

    python benchmarks/importers.py                       # 100,000 rows
    python benchmarks/importers.py --rows 20000 --json benchmarks/results/importers_20k.json

The code measured is whatever `warehouse` is first on sys.path (run it with PYTHONPATH set
to another checkout to measure that one).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/warehouse.py would shadow the `warehouse` package: the repository root (or
# whatever PYTHONPATH names first) comes first instead of this script's folder.
if os.environ.get("PYTHONPATH"):
    sys.path.pop(0)
else:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)


def _csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "batch_size", "lr", "epoch", "train_loss", "val_loss", "val_acc",
                    "epoch_time_s"])  # fmt: skip
        for e in range(1, rows + 1):
            w.writerow(["r0", 64, 0.1, e, 1.0 / e, 1.1 / e, 1 - 1.0 / (e + 1), 0.25])


def _ray_tune(folder: Path, rows: int) -> None:
    trial = folder / "trial_0"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"batch_size": 64, "lr": 0.1}))
    with (trial / "result.json").open("w") as fh:
        for e in range(1, rows + 1):
            r = {"training_iteration": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e,
                 "time_this_iter_s": 0.25, "trial_id": "t0"}  # fmt: skip
            fh.write(json.dumps(r) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="epochs of the one run")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    from batchlab.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="batchlab-import-bench-"))
    out = {"rows": args.rows, "sources": {}}
    try:
        _csv(work / "sweep.csv", args.rows)
        _ray_tune(work / "tune", args.rows)
        for source, path in (("csv", work / "sweep.csv"), ("ray-tune", work / "tune")):
            root = work / f"runs-{source}"
            t0 = time.perf_counter()
            rc = cli(["import", source, str(path), "--storage", str(root)])
            wall = time.perf_counter() - t0
            if rc != 0:
                print(f"import {source} exited {rc}", file=sys.stderr)
                return 1
            out["sources"][source] = {"seconds": round(wall, 2)}
            print(f"{source:9s} {args.rows:>9,} rows  {wall:7.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1_5_15min": list(os.getloadavg()),
    }
    print(f"load average (1, 5, 15 min): {out['machine']['load_average_1_5_15min']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
