"""Grid throughput: a whole grid through batchlab (trial packs) vs one trial at a time.

The reference grid (issue 7): the seed-004 LeNet (conv3x3 32 - conv3x3 64 - maxpool - dropout
- FC128 - dropout - FC10) on MNIST (60,000 train / 10,000 validation images, 1x28x28, 10
classes), batch sizes 16 ... 1024, eight lrs log-spaced from 1e-3 to 1, two seeds: 112
trials of 2 epochs, validation after every epoch. In the same run, on the same device:

- baseline: what a user writes (and what a Ray Tune trainable runs per trial), one trial at a
  time: `DataLoader(TensorDataset, shuffle=True, pin_memory=True, num_workers=2)`,
  `torch.optim.SGD`, fp32, validation through a DataLoader after every epoch. A trial's time
  does not depend on its lr or seed, so one (lr, seed) is timed per batch size and multiplied
  by the trials per batch size (stated in the output). No Ray Tune overhead is added (Ray Tune
  costs ~0.14 s to ~11 s more per trial: ../shared/reference/PERFORMANCE.md), so the ratio is
  conservative.
- batchlab: the same grid as a GridSpec through `scheduler.runner.run_grid` on a local Ray
  instance with `resources.pack: true`, end to end and all timed: Ray start, planning, the GPU
  probe, packs, workers, every Parquet row, the DuckDB file. Measurement settings as a study
  runs them (update norms, per-step rows, per-layer distances) except the full-training-set
  evaluation (`measure.train_eval: false`: the baseline does not do it either) and the weight
  checkpoints.

Printed and written as JSON (`--json`): both wall times, aggregate training examples/s, the
ratio, GPU memory peaks, a model-FLOP-utilization estimate (FLOPs counted by
torch.utils.flop_counter on the model, against `--peak-tflops` or a table of fp32 peaks), and
the per-batch-size breakdown. The exit code is 0 whatever happens (errors are in the JSON).

Data: real MNIST from `--data-dir`, else `../shared/data` (next to the repo), else
$BATCHLAB_DATA_DIR / the batchlab cache (downloaded when a mirror is reachable). The
scheduler path needs the real files; if they cannot be had, the baseline runs on random
tensors of MNIST's shape (speed does not depend on pixel values) and batchlab is skipped.

    python benchmarks/grid_throughput.py                      # the reference grid (a GPU)
    python benchmarks/grid_throughput.py --tiny               # CPU smoke: digits, 8 trials
    python benchmarks/grid_throughput.py --batch-sizes 32 256 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/grid_throughput.py` puts benchmarks/ first on sys.path, and Ray hands the
# driver's sys.path to its workers, where benchmarks/warehouse.py would then shadow the
# `warehouse` package: drop this directory, put the repo root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REFERENCE = {
    "dataset": "mnist",
    "model": "lenet",
    "batch_sizes": [16, 32, 64, 128, 256, 512, 1024],
    "lrs": [float(x) for x in np.logspace(-3, 0, 8)],
    "seeds": [0, 1],
    "epochs": 2,
}
TINY = {
    "dataset": "digits",  # bundled with scikit-learn: no files, no network
    "model": "lenet",
    "batch_sizes": [32, 128],
    "lrs": [0.01, 0.1],
    "seeds": [0, 1],
    "epochs": 1,
}
# Dense fp32 (non-tensor-core) peaks, FLOP/s: the basis of the MFU estimate unless
# --peak-tflops is given (convolutions may run in TF32 on tensor cores: then MFU against
# this basis can exceed what the tensor-core peak would show).
FP32_PEAK = {"H200": 67e12, "H100 SXM": 67e12, "H100 PCIe": 51e12, "H100": 67e12, "A100": 19.5e12,
             "L4": 30.3e12, "A10": 31.2e12}  # fmt: skip


def find_data_dir(given: str | None, dataset: str) -> str | None:
    """Where `dataset`'s official files are looked for (the order of the docstring); None
    leaves it to $BATCHLAB_DATA_DIR and the cache (workers/downloads.py)."""
    if given:
        return str(Path(given).resolve())
    shared = ROOT.parent / "shared" / "data"
    if (shared / dataset).is_dir():
        return str(shared.resolve())
    return None


def load_data(dataset: str, data_dir: str | None):
    """(Dataset on the CPU, "real" | "random")."""
    import torch

    from workers.config import DatasetConfig
    from workers.data import Dataset, load_dataset

    try:
        return load_dataset(DatasetConfig(name=dataset), "cpu", data_dir), "real"
    except Exception as exc:
        print(
            f"could not load {dataset} ({type(exc).__name__}: {exc}); random tensors of MNIST's shape"
        )
        g = torch.Generator().manual_seed(0)
        return Dataset(
            "random-mnist-shape", torch.randn(60_000, 1, 28, 28, generator=g),
            torch.randint(0, 10, (60_000,), generator=g), torch.randn(10_000, 1, 28, 28, generator=g),
            torch.randint(0, 10, (10_000,), generator=g), 10, (1, 28, 28),
        ), "random"  # fmt: skip


def flops_per_example(model_name: str, data) -> tuple[float, float]:
    """(training FLOPs per example: forward + backward, forward FLOPs per example)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from workers.config import ModelConfig
    from workers.models import build_model

    model = build_model(ModelConfig(name=model_name), data.input_shape, data.num_classes)
    x, y = data.x_train[:8], data.y_train[:8]
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(x), y).backward()
    train = fc.get_total_flops() / 8
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return train, fc.get_total_flops() / 8


# ============================================================================ baseline


def baseline_trial(data, model_name: str, bs: int, lr: float, seed: int, epochs: int, dev) -> dict:
    """One trial as a user writes it: DataLoader + torch.optim.SGD, fp32, validation each
    epoch. Times the whole trial (model, loaders and their workers included)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from workers.config import ModelConfig
    from workers.models import build_model

    pin = dev.type == "cuda"
    if pin:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=model_name), data.input_shape, data.num_classes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=bs, shuffle=True,
                       pin_memory=pin, num_workers=2)  # fmt: skip
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=1024, pin_memory=pin,
                     num_workers=2)  # fmt: skip
    val_loss = math.nan
    for _ in range(epochs):
        model.train()
        for x, y in train:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        total = torch.zeros((), device=dev)
        with torch.no_grad():
            for x, y in val:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                total += F.cross_entropy(model(x), y, reduction="sum")
        val_loss = total.item() / data.n_val  # the one sync per epoch a user has anyway
    if pin:
        torch.cuda.synchronize(dev)
    return {"time_s": time.perf_counter() - t0, "final_val_loss": val_loss}


def run_baseline(grid: dict, data, dev, trials_per_bs: int) -> dict[str, Any]:
    import torch

    if dev.type == "cuda":  # CUDA context and cuDNN warm-up outside the timings
        torch.zeros(1, device=dev)
        baseline_trial(_subset(data, 4096), grid["model"], 256, 0.01, 0, 1, dev)
        torch.cuda.reset_peak_memory_stats(dev)
    lr = grid["lrs"][len(grid["lrs"]) // 2]
    per_bs = {}
    for bs in grid["batch_sizes"]:
        r = baseline_trial(data, grid["model"], bs, lr, grid["seeds"][0], grid["epochs"], dev)
        per_bs[bs] = {
            "trial_time_s": r["time_s"],
            "bucket_time_s": r["time_s"] * trials_per_bs,
            "final_val_loss": r["final_val_loss"],
            "timed_lr": lr,
        }
        print(
            f"  baseline bs {bs:5d}: {r['time_s']:8.2f} s per trial (x {trials_per_bs})", flush=True
        )
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"per_batch_size": per_bs, "peak_memory_mb": peak,
            "wall_time_s": sum(v["bucket_time_s"] for v in per_bs.values())}  # fmt: skip


def _subset(data, n: int):
    from workers.data import Dataset

    return Dataset(data.name, data.x_train[:n], data.y_train[:n], data.x_val[:n], data.y_val[:n],
                   data.num_classes, data.input_shape)  # fmt: skip


# ============================================================================ batchlab


def run_batchlab(grid: dict, args, dev, data_dir: str | None) -> dict[str, Any]:
    """The grid through run_grid (packs on), end to end; then read back from the warehouse."""
    import ray

    from scheduler.runner import run_grid
    from scheduler.spec import parse_spec
    from warehouse.db import connect

    resources: dict[str, Any] = {
        "pack": True, "cpus_per_trial": 1, "device": dev.type, "resume_checkpoints": False,
        "gpus_per_trial": args.gpus_per_trial if dev.type == "cuda" else 0.0,
    }  # fmt: skip
    if args.max_pack_size:
        resources["max_pack_size"] = args.max_pack_size
    spec_data = {
        "experiment": "grid-throughput",
        "dataset": {"name": grid["dataset"]},
        "model": {"name": grid["model"]},
        "optimizer": {"name": "sgd"},
        "max_epochs": grid["epochs"],
        "measure": {"checkpoints": False, "train_eval": False},
        "grid": {"batch_size": grid["batch_sizes"], "lr": grid["lrs"], "seed": grid["seeds"]},
        "resources": resources,
    }
    if data_dir:
        spec_data["data_dir"] = data_dir
    spec = parse_spec(spec_data)
    root = args.storage or tempfile.mkdtemp(prefix="batchlab-grid-throughput-")
    log = io.StringIO()
    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    report = run_grid(spec, root, num_cpus=args.num_cpus, progress=False, out=log)
    wall = time.perf_counter() - t0
    ray.shutdown()
    print("  " + log.getvalue().strip().replace("\n", "\n  "))
    con = connect(root)
    per_bs = {}
    q = """
        WITH packs AS (
            SELECT batch_size, pack_id, any_value(pack_size) AS members,
                   max(train_time_s) AS train_s, max(wall_time_s) AS wall_s,
                   sum(epochs_run * n_train) AS examples, max(peak_memory_mb) AS peak_mb
            FROM trials GROUP BY ALL)
        SELECT batch_size, count(*) AS packs, sum(members) AS trials, sum(train_s),
               sum(wall_s), sum(examples), max(peak_mb), list(members ORDER BY members)
        FROM packs GROUP BY ALL ORDER BY batch_size
    """
    for bs, packs, trials, train_s, wall_s, examples, peak, sizes in con.execute(q).fetchall():
        per_bs[int(bs)] = {
            "packs": int(packs), "pack_sizes": [int(s) for s in sizes], "trials": int(trials),
            "train_time_s": train_s, "worker_wall_time_s": wall_s, "examples": int(examples),
            "examples_per_s": examples / train_s if train_s else None, "peak_memory_mb": peak,
        }  # fmt: skip
    statuses = dict(con.execute("SELECT status, count(*) FROM trials GROUP BY ALL").fetchall())
    examples = con.execute("SELECT sum(epochs_run * n_train) FROM trials").fetchone()[0] or 0
    val_examples = con.execute("SELECT sum(epochs_run * n_val) FROM trials").fetchone()[0] or 0
    peak = con.execute("SELECT max(peak_memory_mb) FROM trials").fetchone()[0]
    device_name = con.execute("SELECT any_value(device_name) FROM trials").fetchone()[0]
    con.close()
    if not args.storage and not args.keep_storage:
        shutil.rmtree(root, ignore_errors=True)
    failed = [r for r in report.results if r.get("status") == "failed"]
    return {
        "wall_time_s": wall,
        "counts": report.counts,
        "failed": failed[:5],
        "statuses": statuses,
        "train_examples": int(examples),
        "val_examples": int(val_examples),
        "peak_memory_mb": peak if peak is None or not math.isnan(peak) else None,
        "device_name": device_name,
        "per_batch_size": per_bs,
        "storage": root if (args.storage or args.keep_storage) else None,
        "log": log.getvalue(),
    }


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tiny", action="store_true", help="CPU smoke preset: digits, 8 trials, 1 epoch"
    )
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--data-dir", default=None, help="directory holding mnist/ (official files)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--gpus-per-trial", type=float, default=1 / 32,
                    help="GPU share per trial: a pack of 16 asks for 16x this (at most 1 GPU)")  # fmt: skip
    ap.add_argument("--max-pack-size", type=int, default=None)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s basis of MFU")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-batchlab", action="store_true")
    ap.add_argument("--storage", default=None, help="keep the warehouse here (default: a temp dir)")
    ap.add_argument("--keep-storage", action="store_true")
    ap.add_argument("--json", default="grid_throughput.json", help="where to write the results")
    args = ap.parse_args(argv)

    out: dict[str, Any] = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(), "errors": []}
    try:
        _run(args, out)
    except Exception:  # exit 0 always: the error is part of the result
        out["errors"].append(traceback.format_exc())
        print(traceback.format_exc(), file=sys.stderr)
    out["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
    try:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"results written to {args.json}")
    except OSError as exc:
        print(f"could not write {args.json}: {exc}", file=sys.stderr)
    return 0


def _run(args, out: dict[str, Any]) -> None:
    import torch

    from scheduler.runner import code_version
    from workers.train import resolve_device

    grid = dict(TINY if args.tiny else REFERENCE)
    if args.batch_sizes:
        grid["batch_sizes"] = args.batch_sizes
    if args.epochs:
        grid["epochs"] = args.epochs
    dev = resolve_device("cpu" if args.tiny and args.device == "auto" else args.device)
    if args.num_cpus is None:
        args.num_cpus = 2 if args.tiny else os.cpu_count()
    trials_per_bs = len(grid["lrs"]) * len(grid["seeds"])
    n_trials = trials_per_bs * len(grid["batch_sizes"])
    data_dir = (
        find_data_dir(args.data_dir, grid["dataset"]) if grid["dataset"] != "digits" else None
    )
    data, kind = load_data(grid["dataset"], data_dir)
    out.update({
        "preset": "tiny" if args.tiny else "reference", "grid": grid, "trials": n_trials,
        "trials_per_batch_size": trials_per_bs, "data": kind, "data_dir": data_dir,
        "n_train": data.n_train, "n_val": data.n_val, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch_version": torch.__version__, "code_version": code_version(), "host": platform.node(),
        "cpu_count": os.cpu_count(), "gpus_per_trial": args.gpus_per_trial if dev.type == "cuda" else 0,
        "baseline_method": f"DataLoader(shuffle, pin_memory, 2 workers) + torch.optim.SGD, fp32, one "
        f"trial at a time; one (lr, seed) timed per batch size x {trials_per_bs}",
    })  # fmt: skip
    print(f"grid: {n_trials} trials ({grid['model']} on {grid['dataset']} [{kind}], batch sizes "
          f"{grid['batch_sizes']}, {len(grid['lrs'])} lrs, {len(grid['seeds'])} seeds, "
          f"{grid['epochs']} epochs) on {out['device_name']}", flush=True)  # fmt: skip
    train_flops, fwd_flops = flops_per_example(grid["model"], data)
    examples = n_trials * grid["epochs"] * data.n_train
    total_flops = n_trials * grid["epochs"] * (data.n_train * train_flops + data.n_val * fwd_flops)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and dev.type == "cuda":
        peak = next((v for k, v in FP32_PEAK.items() if k in out["device_name"]), None)
    out["flops"] = {"train_per_example": train_flops, "forward_per_example": fwd_flops,
                    "grid_total": total_flops, "peak_flops_per_s": peak,
                    "peak_basis": "--peak-tflops" if args.peak_tflops else "dense fp32 table"}  # fmt: skip

    def summarize(wall: float) -> dict[str, Any]:
        return {"examples_per_s": examples / wall,
                "mfu": total_flops / wall / peak if peak else None}  # fmt: skip

    if not args.skip_baseline:
        print("baseline:", flush=True)
        base = run_baseline(grid, data, dev, trials_per_bs)
        base.update(summarize(base["wall_time_s"]))
        out["baseline"] = base
    if not args.skip_batchlab:
        if kind != "real":
            out["errors"].append(f"batchlab skipped: no {grid['dataset']} files (see --data-dir)")
        else:
            print("batchlab:", flush=True)
            del data
            bl = run_batchlab(grid, args, dev, data_dir)
            bl.update(summarize(bl["wall_time_s"]))
            out["batchlab"] = bl
            if bl["counts"].get("completed", 0) + bl["counts"].get("diverged", 0) < n_trials:
                out["errors"].append(f"batchlab: not every trial finished: {bl['counts']}; "
                                     f"first failures: {bl['failed']}")  # fmt: skip
    if "baseline" in out and "batchlab" in out:
        out["ratio"] = out["baseline"]["wall_time_s"] / out["batchlab"]["wall_time_s"]
        for bs, b in out["batchlab"]["per_batch_size"].items():
            base_bs = out["baseline"]["per_batch_size"].get(bs)
            if base_bs and b["train_time_s"]:
                b["ratio_vs_baseline"] = base_bs["bucket_time_s"] / b["train_time_s"]
    _print(out)


def _print(out: dict[str, Any]) -> None:
    base, bl = out.get("baseline"), out.get("batchlab")
    print()
    print(f"{'batch':>6} | {'baseline s':>11} | {'batchlab train s':>16} | {'packs':>9} | "
          f"{'batchlab ex/s':>13} | {'ratio':>6}")  # fmt: skip
    for bs in out["grid"]["batch_sizes"]:
        b = base["per_batch_size"].get(bs, {}) if base else {}
        p = bl["per_batch_size"].get(bs, {}) if bl else {}
        print(f"{bs:>6} | {b.get('bucket_time_s', math.nan):>11.1f} | "
              f"{p.get('train_time_s') or math.nan:>16.1f} | {p.get('pack_sizes', '-')!s:>9} | "
              f"{p.get('examples_per_s') or math.nan:>13,.0f} | {p.get('ratio_vs_baseline', math.nan):>6.1f}")  # fmt: skip
    for name, r in (("baseline", base), ("batchlab", bl)):
        if r:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            peak = f"{r['peak_memory_mb']:,.0f} MiB" if r.get("peak_memory_mb") else "n/a"
            print(f"{name:>9}: wall {r['wall_time_s']:9.1f} s, {r['examples_per_s']:>11,.0f} training "
                  f"examples/s, GPU memory peak {peak}, MFU {mfu}")  # fmt: skip
    if "ratio" in out:
        print(f"    ratio: batchlab is {out['ratio']:.1f}x the baseline's speed "
              f"({out['device_name']}, {out['preset']} grid, {out['trials']} trials)")  # fmt: skip
    for e in out["errors"]:
        print("error:", e.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
