"""The cost of live rows (warehouse/live.py) per epoch, against the same trial without them.

Same run, alternating: one trial of the demo grid (`examples/quick.yaml`'s model and data,
its first batch size) trained by `workers.train.run_trial` in this process, as a Ray task
runs it, (a) without a live publisher, (b) with `LiveTrial` at its default interval (epochs
file at most every 2 s + status heartbeat) and (c) with every epoch published (interval 0, the
worst case), writing to a local storage root. Prints the median wall time of each variant,
the overhead per epoch and its share of the epoch time (target < 2%).

    python benchmarks/live_overhead.py [--epochs 10] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    import yaml

    from scheduler.spec import parse_spec
    from warehouse.layout import Layout
    from warehouse.live import LiveTrial, clear_trial
    from workers.data import load_dataset
    from workers.train import run_trial

    torch.set_num_threads(1)
    grid = yaml.safe_load((ROOT / "examples" / "quick.yaml").read_text())
    grid["max_epochs"] = args.epochs
    grid.pop("analyses", None)
    cfg = parse_spec(grid).trials()[0]
    data = load_dataset(cfg.dataset)
    layout = Layout.open(tempfile.mkdtemp(prefix="live-bench-"))

    def plain() -> None:
        run_trial(cfg, data=data)

    inside: dict[float, list[float]] = {}  # seconds spent in the live hook, per epoch

    def with_live(interval: float):
        def go() -> None:
            live = LiveTrial(
                layout, "bench", cfg.trial_id, max_epochs=cfg.max_epochs, interval_s=interval
            )

            def hook(row) -> None:
                t0 = time.perf_counter()
                live.epoch(row)
                inside.setdefault(interval, []).append(time.perf_counter() - t0)

            try:
                run_trial(cfg, data=data, on_epoch=hook)
            finally:
                live.close()
                clear_trial(layout, "bench", cfg.trial_id)

        return go

    variants = {
        "no_live": plain,
        "live_default": with_live(2.0),
        "live_every_epoch": with_live(0.0),
    }
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_epoch = med["no_live"] / args.epochs
    out = {
        "benchmark": "live_overhead",
        "trial": {
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "batch_size": cfg.batch_size,
            "epochs": args.epochs,
        },
        "repeats": args.repeats,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "load_avg_1m": os.getloadavg()[0],
        "seconds": times,
        "median_s": med,
        "epoch_s_without_live": per_epoch,
        "overhead_per_epoch_ms": {
            k: 1000 * (med[k] - med["no_live"]) / args.epochs
            for k in ("live_default", "live_every_epoch")
        },
        # Robust under load: the time the trial spends inside the live hook, per epoch
        # (mean over every epoch of every repeat, flushes included), against the epoch time.
        "hook_ms_per_epoch": {
            k: 1000 * statistics.fmean(inside[iv])
            for k, iv in (("live_default", 2.0), ("live_every_epoch", 0.0))
        },
        "hook_pct_of_epoch": {
            k: 100 * statistics.fmean(inside[iv]) / per_epoch
            for k, iv in (("live_default", 2.0), ("live_every_epoch", 0.0))
        },
        "overhead_pct_of_epoch": {
            k: 100 * (med[k] - med["no_live"]) / med["no_live"]
            for k in ("live_default", "live_every_epoch")
        },
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
