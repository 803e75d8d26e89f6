"""One prepared GPU check (issue 20): everything the project wants measured on a GPU, in one
call of at most 9 minutes on a bare GPU machine, every result under one output folder.

Parts, in order, each in its own subprocess with its own time limit (a part that hangs or
runs over is killed and recorded; the next one still runs), all limits inside `--budget-s`:

1. env: python, torch, CUDA, cuDNN, the GPU and its memory (refuses to go on without CUDA
   unless --tiny).
2. grid: `benchmarks/grid_throughput.py` on the reference grid (seed-004 LeNet on MNIST,
   batch sizes 16..1024, 8 lrs, 2 seeds, 2 epochs: 112 trials): the plain DataLoader loop and
   batchlab packs in the same run, examples/s, ratio, MFU, memory peaks
   -> grid_throughput.json.
3. probes: `benchmarks/probe_cost.py` (LeNet on MNIST): each end-of-trial probe's seconds and
   its ratio to one epoch -> probe_cost.json.
4. surface: one 51 x 51 loss surface of a LeNet (`workers.landscape.surface`, train and
   validation subsets of --surface-examples each) -> surface.json.
5. study: a small real-MNIST study through the real scheduler (`scheduler.runner.run_grid`,
   local Ray): seed-004 LeNet with Adam, batch sizes 16/32/64 x 2 seeds, --study-epochs
   epochs, default measurements + the Hessian probe, then `warehouse.compact.compact`
   -> study.json and the compacted warehouse in study/.
6. perf: the `performance:` switches (workers/perf.py) on the reference model, in-process:
   one lone LeNet trial (bs 64) and one pack of 8 (bs 64), 2 epochs on 10,000 MNIST examples,
   under the defaults, then tf32 + channels_last + cudnn_benchmark (lone and pack), then
   cuda_graphs (lone), then compile (lone, only when >= 35 s of the part are left): each
   run's epoch times, examples/s, memory peak, its final losses against the defaults', and
   its perf_json record (what was in effect, why not) -> perf.json, written after every run.

Finally gpu_check.json: every part's status, return code, seconds, and the headline numbers.
The exit code is 0 only when every part succeeded.

`--tiny` is the CPU rehearsal (CI: tests/benchmarks/test_gpu_check.py): the same parts and
files on scikit-learn's digits (no files, no network), a few trials and a 5 x 5 surface.

On the GPU machine (docs/packs.md, "The GPU check", has the whole command):
    source .device/activate.sh && python3 benchmarks/gpu_check.py --out "$OUT"
Here:
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Seconds per part on the GPU (the sum stays under 9 minutes with ~60 s for the set-up).
LIMITS = {"env": 25, "grid": 240, "probes": 40, "surface": 40, "study": 80, "perf": 55}


def data_dir() -> str | None:
    """Where the MNIST files are: the device bundle's (.device/data), else ../shared/data."""
    for d in (ROOT / ".device" / "data", ROOT.parent / "shared" / "data"):
        if (d / "mnist").is_dir():
            return str(d)
    return None


# ============================================================================ the parts
# Each runs in a child process: `python benchmarks/gpu_check.py --part NAME ...`.


def part_env(args) -> dict[str, Any]:
    import platform

    import torch

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "data_dir": data_dir(),
    }
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        out.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_free_gib": free / 2**30,
                "gpu_total_gib": total / 2**30,
                "capability": list(torch.cuda.get_device_capability(0)),
            }
        )
    import importlib

    missing = []
    for mod in (
        "ray",
        "duckdb",
        "pydantic",
        "yaml",
        "orjson",
        "tqdm",
        "pyarrow",
        "pandas",
        "scipy",
        "mnist1d",
    ):
        try:
            out[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError as exc:
            missing.append(f"{mod} ({exc})")
    if missing:  # the device bundle lacks them: docs/packs.md, "The GPU check"
        raise SystemExit(f"missing packages: {', '.join(missing)}")
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU check needs one (--tiny rehearses on CPU)")
    return out


def part_grid(args) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/grid_throughput.py"),
        "--json",
        str(Path(args.out) / "grid_throughput.json"),
    ]
    if args.tiny:  # the smallest rehearsal: 4 trials at one batch size
        cmd += ["--tiny", "--batch-sizes", "128", "--num-cpus", "1"]
    elif (d := data_dir()) is not None:
        cmd += ["--data-dir", d]
    subprocess.run(cmd, check=True, cwd=ROOT)
    res = json.loads((Path(args.out) / "grid_throughput.json").read_text())
    if res.get("errors"):
        raise RuntimeError("grid_throughput: " + res["errors"][0].strip().splitlines()[-1])
    return {k: res.get(k) for k in ("ratio", "device_name", "trials", "preset")} | {
        side: {
            k: res[side].get(k) for k in ("wall_time_s", "examples_per_s", "mfu", "peak_memory_mb")
        }
        for side in ("baseline", "batchlab")
        if side in res
    }


def part_probes(args) -> dict[str, Any]:
    path = Path(args.out) / "probe_cost.json"
    if args.tiny:
        cmd = [
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--n-examples",
            "256",
            "--device",
            "cpu",
        ]
    else:
        cmd = ["--dataset", "mnist", "--model", "lenet", "--epochs", "1", "--device", "cuda"]
        if (d := data_dir()) is not None:
            cmd += ["--data-dir", d]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/probe_cost.py"), *cmd, "--json", str(path)],
        check=True,
        cwd=ROOT,
        env=env,
    )
    return json.loads(path.read_text())


def part_surface(args) -> dict[str, Any]:
    import torch

    from workers.config import DatasetConfig, ModelConfig
    from workers.data import load_dataset
    from workers.landscape import surface
    from workers.models import build_model
    from workers.train import resolve_device

    dev = resolve_device("cpu" if args.tiny else "cuda")
    name = "digits" if args.tiny else "mnist"
    data = load_dataset(DatasetConfig(name=name), str(dev), None if args.tiny else data_dir())
    n = args.surface_examples
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="lenet"), data.input_shape, data.num_classes).to(dev)
    split = {"train": (data.x_train[:n], data.y_train[:n]), "val": (data.x_val[:n], data.y_val[:n])}
    points = 5 if args.tiny else 51
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    rows = surface(model, model.state_dict(), split, seed=0, n_points=points)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t0
    n_ex = sum(int(v[0].shape[0]) for v in split.values())
    return {
        "n_points": points,
        "points": points * points,
        "rows": len(rows),
        "seconds": wall,
        "examples_per_split": {k: int(v[0].shape[0]) for k, v in split.items()},
        "example_forwards_per_s": points * points * n_ex / wall,
        "device": str(dev),
        "peak_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20
        if dev.type == "cuda"
        else None,
    }


def part_study(args) -> dict[str, Any]:
    import ray

    from scheduler.runner import run_grid
    from scheduler.spec import parse_spec
    from warehouse.compact import compact
    from warehouse.db import connect, write_duckdb_file
    from warehouse.layout import Layout

    root = Path(args.out) / "study"
    spec = {
        "experiment": "gpu-check-seed004",
        "description": "seed-004 LeNet, Adam, bs 16/32/64 x 2 seeds (gpu_check.py)",
        "dataset": {"name": "digits" if args.tiny else "mnist"},
        "model": {"name": "lenet"},
        "optimizer": {"name": "adam"},
        "max_epochs": 1 if args.tiny else args.study_epochs,
        "grid": {
            "batch_size": [32, 64] if args.tiny else [16, 32, 64],
            "lr": [0.001],
            "seed": [0] if args.tiny else [0, 1],
        },
        "measure": {
            "hessian": {
                "max_iter": 5 if args.tiny else 20,
                "n_examples": 256 if args.tiny else 2048,
            }
        },
        "resources": {
            "cpus_per_trial": 1,
            "gpus_per_trial": 0.0 if args.tiny else 0.25,
            "device": "cpu" if args.tiny else "cuda",
        },
    }
    if not args.tiny and (d := data_dir()) is not None:
        spec["data_dir"] = d
    t0 = time.perf_counter()
    report = run_grid(parse_spec(spec), str(root), num_cpus=os.cpu_count(), progress=False)
    wall = time.perf_counter() - t0
    ray.shutdown()
    t1 = time.perf_counter()
    compacted = compact(str(root))
    write_duckdb_file(Layout.open(str(root)))  # the DuckDB file over the compacted files
    compact_s = time.perf_counter() - t1
    con = connect(str(root))
    q = """SELECT batch_size, seed, status, pack_size, epochs_run, best_val_acc, train_time_s,
                  peak_memory_mb, device_name FROM trials ORDER BY batch_size, seed"""
    cols = [c.strip().split()[-1] for c in q.split("FROM")[0].removeprefix("SELECT").split(",")]
    trials = [dict(zip(cols, r, strict=True)) for r in con.execute(q).fetchall()]
    probes = con.execute("SELECT count(*) FROM probes").fetchone()[0]
    con.close()
    if report.counts.get("failed"):
        raise RuntimeError(f"study: failed trials {report.counts}: {report.results[:2]}")
    return {
        "wall_time_s": wall,
        "counts": report.counts,
        "trials": trials,
        "probe_rows": probes,
        "compact_s": compact_s,
        "compacted": str(compacted)[:2000],
        "root": str(root),
    }


# The settings of the perf part, in order; the lone-only ones do not apply to packs.
PERF_SETTINGS: list[tuple[str, dict[str, Any], bool]] = [
    ("default", {}, True),
    ("tf32+channels_last+cudnn_benchmark",
     {"tf32": True, "channels_last": True, "cudnn_benchmark": True}, True),
    ("cuda_graphs", {"cuda_graphs": True}, False),
    ("compile", {"compile": True}, False),
]  # fmt: skip
PERF_COMPILE_MIN_S = 35.0  # compile (inductor, cold cache) is tried only with this much left


def part_perf(args) -> dict[str, Any]:
    import torch

    from workers.config import DatasetConfig, TrialConfig
    from workers.data import Dataset, load_dataset
    from workers.pack import run_pack
    from workers.train import resolve_device, run_trial

    t_part = time.perf_counter()
    dev = resolve_device("cpu" if args.tiny else "cuda")
    name = "digits" if args.tiny else "mnist"
    full = load_dataset(DatasetConfig(name=name), str(dev), None if args.tiny else data_dir())
    n, n_val = (256, 128) if args.tiny else (10_000, 2_000)
    data = Dataset(name, full.x_train[:n], full.y_train[:n], full.x_val[:n_val],
                   full.y_val[:n_val], full.num_classes, full.input_shape)  # fmt: skip
    del full
    base = {
        "dataset": {"name": name}, "model": {"name": "lenet"}, "batch_size": 64, "max_epochs": 2,
        "lr": 0.01, "measure": {"layers": False, "checkpoints": False, "train_eval": False},
    }  # fmt: skip
    lrs = [0.01, 0.1] if args.tiny else [float(10**e) for e in range(-3, 1)] * 2
    seeds = [0] * len(lrs) if args.tiny else [0] * 4 + [1] * 4
    out: dict[str, Any] = {"device": str(dev), "n_train": n, "n_val": n_val,
                           "model": "lenet", "batch_size": 64, "epochs": 2,
                           "pack_size": len(lrs), "runs": {}}  # fmt: skip
    path = Path(args.out) / "perf.json"

    def measure(results) -> dict[str, Any]:
        r0 = results[0]
        ep = [e["epoch_time_s"] for e in r0.epochs]
        return {
            "status": [r.status for r in results],
            "epoch_time_s": ep,
            "examples_per_s_last_epoch": len(results) * n / ep[-1] if ep else None,
            "peak_memory_mb": r0.summary.get("peak_memory_mb"),
            "val_loss": [r.epochs[-1]["val_loss"] if r.epochs else None for r in results],
            "perf": json.loads(r0.summary.get("perf_json") or "{}"),
            "error": next((r.error[-800:] for r in results if r.error), None),
        }

    # Warm-up: CUDA context, cuDNN handles and the data on the device are paid here once.
    run_trial(TrialConfig.model_validate({**base, "max_epochs": 1}), device=str(dev), data=data)
    for label, settings, packs in PERF_SETTINGS:
        left = args.limit_s - (time.perf_counter() - t_part)
        if label == "compile" and (args.tiny or left < PERF_COMPILE_MIN_S):
            why = "--tiny (a CPU compile takes minutes)" if args.tiny else f"{left:.0f} s left"
            out["runs"][label] = {"skipped": why}
            continue
        cfg = {**base, "performance": settings}
        t0 = time.perf_counter()
        rec = {"lone": measure([run_trial(TrialConfig.model_validate(cfg), device=str(dev),
                                          data=data)])}  # fmt: skip
        if packs:
            cfgs = [TrialConfig.model_validate({**cfg, "lr": lr, "seed": sd})
                    for lr, sd in zip(lrs, seeds, strict=True)]  # fmt: skip
            rec["pack"] = measure(run_pack(cfgs, device=str(dev), data=data))
        rec["seconds"] = time.perf_counter() - t0
        out["runs"][label] = rec
        path.write_text(json.dumps(out, indent=2, default=str))  # partial results survive a kill
    ref = out["runs"]["default"]
    for rec in out["runs"].values():
        for kind in ("lone", "pack"):
            if kind in rec and rec[kind]["val_loss"] and ref[kind]["val_loss"]:
                rec[kind]["max_abs_val_loss_diff_vs_default"] = max(
                    abs(a - b) for a, b in zip(rec[kind]["val_loss"], ref[kind]["val_loss"],
                                               strict=True) if a is not None and b is not None
                )  # fmt: skip
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


PARTS = {
    "env": part_env,
    "grid": part_grid,
    "probes": part_probes,
    "surface": part_surface,
    "study": part_study,
    "perf": part_perf,
}


# ============================================================================ driver


def run_part(name: str, args, limit: float) -> dict[str, Any]:
    """`name` in a child process, killed after `limit` seconds; its JSON and status."""
    out = Path(args.out)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--part",
        name,
        "--out",
        str(out),
        "--surface-examples",
        str(args.surface_examples),
        "--study-epochs",
        str(args.study_epochs),
        "--limit-s",
        str(limit),
    ] + (["--tiny"] if args.tiny else [])
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    with log.open("w") as fh:
        try:
            rc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=limit, cwd=ROOT
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    rec: dict[str, Any] = {
        "rc": rc,
        "seconds": time.perf_counter() - t0,
        "limit_s": limit,
        "log": log.name,
    }
    path = out / f"{name}.json"
    if path.exists() and name not in ("grid", "probes"):
        rec["result"] = json.loads(path.read_text())
    elif (out / f"{name}.result.json").exists():
        rec["result"] = json.loads((out / f"{name}.result.json").read_text())
    rec["status"] = "ok" if rc == 0 else "failed"
    if rc != 0:
        rec["tail"] = log.read_text()[-1500:]
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="output folder")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal on digits")
    ap.add_argument("--budget-s", type=float, default=480.0, help="all parts together")
    ap.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    ap.add_argument("--surface-examples", type=int, default=10_000, help="per split")
    ap.add_argument("--study-epochs", type=int, default=3)
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--limit-s", type=float, default=600.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny and args.surface_examples == 10_000:
        args.surface_examples = 256
    if args.tiny and args.budget_s == 480.0:  # a CPU (a shared 2-core box) is much slower
        args.budget_s = 3000.0
    if args.part:  # a child: one part, its result as JSON
        res = PARTS[args.part](args)
        name = (
            f"{args.part}.result.json" if args.part in ("grid", "probes") else f"{args.part}.json"
        )
        (out / name).write_text(json.dumps(res, indent=2, default=str))
        return 0
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"tiny": args.tiny, "budget_s": args.budget_s, "parts": {}}
    for name in args.only:
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 10:
            summary["parts"][name] = {"status": "skipped", "why": "out of budget"}
            continue
        limit = min(LIMITS[name] * (8 if args.tiny else 1), left)
        print(f"[gpu_check] {name} (limit {limit:.0f} s) ...", flush=True)
        rec = run_part(name, args, limit)
        summary["parts"][name] = rec
        print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']:.1f} s", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
        if name == "env" and rec["status"] != "ok":
            break  # no CUDA / broken environment: nothing else can run
    summary["seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    ok = all(p.get("status") == "ok" for p in summary["parts"].values())
    print(f"[gpu_check] {'all parts ok' if ok else 'some parts failed'}; {out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
