"""Keskar sharpness solver spread on real models: L-BFGS-B vs projected gradient ascent (PGA)
vs restarts, on MNIST-1D MLPs trained at a small and a large batch (issue 17).

Each run is a lower bound of the same box maximum (Metric 2.1); this measures how far apart
the bounds are: per trained model, the single-start values of both solvers, the kept
maximum over both solvers x (1 + restarts) starts, and each single run relative to it.

    python benchmarks/sharpness_solvers.py [--epochs 10] [--restarts 4] [--out PATH]

Writes JSON (default benchmarks/results/sharpness_solvers.json) with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from workers.config import TrialConfig
from workers.data import load_dataset
from workers.models import build_model
from workers.probes import keskar_sharpness, keskar_sharpness_max, probe_subset
from workers.train import run_trial


class _Keep:
    """CheckpointIO keeping the final weights in memory."""

    def __init__(self):
        self.files: dict = {}

    def save(self, name, state):
        self.files[name] = state

    def load(self, name):
        return self.files.get(name) if name != "resume" else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-3, 5e-4])
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--n-examples", type=int, default=1024)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="benchmarks/results/sharpness_solvers.json")
    a = ap.parse_args()
    t0 = time.time()
    data = load_dataset(TrialConfig().dataset)
    rows = []
    for bs in a.batch_sizes:
        for seed in a.seeds:
            cfg = TrialConfig.model_validate({
                "model": {"name": "mlp", "hidden": [256, 256]}, "batch_size": bs, "lr": 0.05,
                "seed": seed, "max_epochs": a.epochs, "measure": {"store_steps": False},
            })  # fmt: skip
            keep = _Keep()
            res = run_trial(cfg, data=data, checkpoints=keep)
            model = build_model(cfg.model, data.input_shape, data.num_classes)
            model.load_state_dict(keep.files["final"])
            xs, ys = probe_subset(data.x_train, data.y_train, a.n_examples, seed)
            for eps in a.eps:
                lb = keskar_sharpness(model, xs, ys, eps=eps, solver="lbfgsb", max_iter=a.max_iter)
                pga = keskar_sharpness(model, xs, ys, eps=eps, solver="pga", max_iter=a.max_iter)
                best = keskar_sharpness_max(model, xs, ys, eps=eps, solver="both",
                                            restarts=a.restarts, max_iter=a.max_iter, seed=seed)  # fmt: skip
                top = best["value"]
                rows.append({
                    "batch_size": bs, "seed": seed, "eps": eps,
                    "train_loss": res.summary["final_train_loss"],
                    "lbfgsb_zero": lb["value"], "pga_zero": pga["value"], "max": top,
                    "max_from": [best["solver"], best["start"]],
                    "lbfgsb_zero_over_max": lb["value"] / top,
                    "pga_zero_over_max": pga["value"] / top,
                    "pga_over_lbfgsb": pga["value"] / lb["value"],
                    "runs": [(r["solver"], r["start"], r["value"], r["iterations"])
                             for r in best["runs"]],
                    "seconds_single": lb["seconds"], "seconds_max": best["seconds"],
                })  # fmt: skip
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), flush=True)
    out = {
        "what": "Keskar sharpness (percent) of MNIST-1D MLP [256, 256] at the final weights, "
        "lr 0.05, plain SGD; lbfgsb/pga from y = 0 vs the max over both solvers x "
        f"(1 + {a.restarts}) starts",
        "args": vars(a),
        "rows": rows,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg": os.getloadavg(),
        },
        "wall_s": time.time() - t0,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
