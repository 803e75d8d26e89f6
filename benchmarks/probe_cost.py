"""Cost of each end-of-trial measurement relative to one training epoch.

Trains one trial for a few epochs, then times every probe (Keskar sharpness with both
solvers, Hessian power iteration, noise scale two-batch and exact) on the trained model,
and prints each probe's seconds and its ratio to the mean epoch time measured in the same
run. The ratio, not the absolute time, is the figure to quote.

    python benchmarks/probe_cost.py                       # MLP on MNIST-1D, CPU
    python benchmarks/probe_cost.py --model lenet --dataset mnist --data-dir ../shared/data
    python benchmarks/probe_cost.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from workers import probes
from workers.config import DatasetConfig, ModelConfig, TrialConfig
from workers.data import load_dataset
from workers.train import resolve_device, run_trial


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-examples", type=int, default=2048, help="probe evaluation subset")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    dev = resolve_device(args.device)
    cfg = TrialConfig(
        dataset=DatasetConfig(name=args.dataset),
        model=ModelConfig(name=args.model),
        batch_size=args.batch_size,
        lr=0.05,
        max_epochs=args.epochs,
    )
    data = load_dataset(cfg.dataset, dev, args.data_dir)
    model_holder: dict = {}

    # Train through the real worker; keep the trained model by rebuilding from its final state.
    class Keep:
        def save(self, name, state):
            model_holder[name] = state

        def load(self, name):
            return None

    result = run_trial(cfg, device=str(dev), data=data, checkpoints=Keep())
    epoch_s = statistics.mean(e["epoch_time_s"] for e in result.epochs)
    from workers.models import build_model

    model = build_model(cfg.model, data.input_shape, data.num_classes).to(dev)
    model.load_state_dict(model_holder["final"])
    n = min(args.n_examples, data.n_train)
    x, y = data.x_train[:n], data.y_train[:n]

    def timed(fn, **kw):
        t0 = time.perf_counter()
        res = fn(model, x, y, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0, res

    rows = []
    for name, fn, kw in [
        (
            "keskar_sharpness eps=1e-3 lbfgsb (10 it)",
            probes.keskar_sharpness,
            {"eps": 1e-3, "solver": "lbfgsb"},
        ),
        (
            "keskar_sharpness eps=1e-3 pga (10 it)",
            probes.keskar_sharpness,
            {"eps": 1e-3, "solver": "pga"},
        ),
        ("hessian_top_eig (<=100 it, tol 1e-3)", probes.hessian_top_eigenvalue, {}),
        ("noise_scale_two_batch (32/1024, 20)", probes.noise_scale_two_batch, {}),
        ("noise_scale_exact", probes.noise_scale_exact, {}),
    ]:
        s, res = timed(fn, **kw)
        rows.append({"probe": name, "seconds": s, "epochs_equivalent": s / epoch_s, "value": res.get("value"),
                     "iterations": res.get("iterations")})  # fmt: skip
    out = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "dataset": args.dataset, "model": args.model, "batch_size": args.batch_size,
        "n_train": data.n_train, "probe_examples": n, "epoch_time_s": epoch_s, "probes": rows,
    }  # fmt: skip
    print(f"{args.model} on {args.dataset}, batch {args.batch_size}, device {out['device']}")
    print(
        f"one training epoch ({data.n_train} examples): {epoch_s:.3f} s (mean of {len(result.epochs)})"
    )
    print(f"probes on {n} examples:")
    for r in rows:
        print(f"  {r['probe']:<42} {r['seconds']:8.3f} s = {r['epochs_equivalent']:6.2f} epochs")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
