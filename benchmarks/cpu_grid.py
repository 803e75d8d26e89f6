"""The CPU grid of issue 20, end to end, four ways in one run: plain loop, batchlab lone,
batchlab packs (the default `resources.pack: auto`), Ray Tune.

Grid (../shared/reference/PERFORMANCE.md): MLP 40-128-128-10 on MNIST-1D (4,000 train /
1,000 validation), batch sizes 16, 32, 64, 128, 256, lrs 0.01, 0.03, 0.1, 0.3, seeds 0, 1:
40 trials x 10 epochs, plain SGD, validation after every epoch.

- plain: what a user writes, one trial after another in this process: TensorDataset +
  DataLoader(shuffle=True), torch.optim.SGD, validation through a DataLoader each epoch.
  Every trial is run (nothing extrapolated); no rows are stored.
- batchlab lone / packs: the grid as a GridSpec through `scheduler.runner.run_grid` on a
  fresh local Ray instance, timed from before Ray starts to the DuckDB file: every
  measurement batchlab records by default is on (per-step rows with update and gradient
  norms, per-layer distances, the full-training-set evaluation each epoch, init/final weight
  checkpoints, per-epoch resume checkpoints, live rows); `pack: false` and the default.
- Ray Tune (when installed): `tune.grid_search` over the same axes, 1 CPU per trial, the data
  passed with `tune.with_parameters`, each trial the plain loop's trial with one
  `tune.report` per epoch; timed from `ray.init` to the results.

The JSON (`--json`, default benchmarks/results/grid_throughput_cpu.json) holds each wall
time, the ratios against the plain loop and Ray Tune measured in this run, the machine
(CPUs, memory, load average before and after each part) and the versions.

    python benchmarks/cpu_grid.py                       # the grid above, ~5 minutes on 2 cores
    python benchmarks/cpu_grid.py --tiny                # 4 trials x 2 epochs (a smoke run)
    python benchmarks/cpu_grid.py --only packs plain    # a subset
    python benchmarks/cpu_grid.py --profile             # torch.profiler over the bs-16 pack
    python benchmarks/cpu_grid.py --only plain packs --epochs 50 --json out.json  # longer trials
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GRID = {
    "batch_size": [16, 32, 64, 128, 256],
    "lr": [0.01, 0.03, 0.1, 0.3],
    "seed": [0, 1],
    "epochs": 10,
    "hidden": [128, 128],
}
TINY = {"batch_size": [32, 64], "lr": [0.1], "seed": [0, 1], "epochs": 2, "hidden": [32]}
PARTS = ("plain", "packs", "lone", "tune")  # the run order (the JSON is rewritten after each)


def machine() -> dict[str, Any]:
    mem = None
    with contextlib.suppress(ValueError, OSError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"host": platform.node(), "cpu_count": os.cpu_count(), "memory_gib": mem,
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}  # fmt: skip


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def trials(grid: dict) -> list[tuple[int, float, int]]:
    return [(b, lr, s) for b in grid["batch_size"] for lr in grid["lr"] for s in grid["seed"]]


# ============================================================================ plain loop


def plain_trial(data, hidden, bs: int, lr: float, seed: int, epochs: int, report=None) -> float:
    """One trial as a user writes it; returns the last validation loss."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = data.x_train.shape[1]
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, data.num_classes))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=bs, shuffle=True)
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=1000)
    val_loss = math.nan
    for epoch in range(epochs):
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for x, y in val:
                out = model(x)
                total += F.cross_entropy(out, y, reduction="sum").item()
                correct += int((out.argmax(1) == y).sum())
        val_loss = total / len(data.y_val)
        if report is not None:
            report({"epoch": epoch + 1, "val_loss": val_loss, "val_acc": correct / len(data.y_val)})
    return val_loss


def run_plain(grid: dict, data) -> dict[str, Any]:
    t0 = time.perf_counter()
    losses = [
        plain_trial(data, grid["hidden"], b, lr, s, grid["epochs"]) for b, lr, s in trials(grid)
    ]
    return {"wall_time_s": time.perf_counter() - t0, "trials": len(losses),
            "finite_final_val_loss": sum(math.isfinite(v) for v in losses)}  # fmt: skip


# ============================================================================ batchlab


def spec_data(grid: dict, pack: bool | None) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpus_per_trial": 1}
    if pack is not None:
        resources["pack"] = pack
    return {
        "experiment": "cpu-grid",
        "dataset": {"name": "mnist1d"},
        "model": {"name": "mlp", "hidden": grid["hidden"]},
        "optimizer": {"name": "sgd"},
        "max_epochs": grid["epochs"],
        "grid": {k: grid[k] for k in ("batch_size", "lr", "seed")},
        "resources": resources,  # measure: the defaults, every one on
    }


def run_batchlab(grid: dict, pack: bool | None, num_cpus: int, keep: str | None) -> dict[str, Any]:
    import ray

    from scheduler.runner import run_grid
    from scheduler.spec import parse_spec
    from warehouse.db import connect

    spec = parse_spec(spec_data(grid, pack))
    root = keep or tempfile.mkdtemp(prefix="batchlab-cpu-grid-")
    if ray.is_initialized():
        ray.shutdown()
    log = io.StringIO()
    began = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    report = run_grid(spec, root, num_cpus=num_cpus, progress=False, out=log)
    wall = time.perf_counter() - t0
    ray.shutdown()
    con = connect(root)
    q = """SELECT count(*), sum(steps_run), max(pack_size), count(DISTINCT pack_id),
                  sum(train_time_s) FROM trials"""
    n, steps, max_pack, packs, train_s = con.execute(q).fetchone()
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("epochs", "steps", "layers")}  # fmt: skip
    evals = con.execute("SELECT count(*) FROM epochs WHERE isfinite(train_loss_eval)").fetchone()
    # Where the wall time goes: before the first trial (or pack) started training in a
    # worker (Ray start, worker processes, imports, data), the trials, and after the last.
    first, last = con.execute("SELECT min(started_at), max(finished_at) FROM trials").fetchone()
    phases = {
        "startup_s": (first - began).total_seconds(),
        "trials_s": (last - first).total_seconds(),
        "tail_s": wall - (last - began).total_seconds(),
    }
    con.close()
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "wall_time_s": wall, "counts": report.counts, "trials": n, "steps_run": steps,
        "max_pack_size": max_pack, "packs": packs, "sum_train_time_s": train_s,
        "phases": phases, "rows": counts, "epochs_with_train_eval": evals[0],
        "resources": spec.resources.model_dump(),
        "measure": spec.measure.model_dump(), "log": log.getvalue(),
    }  # fmt: skip


# ============================================================================ Ray Tune


def run_tune(grid: dict, data, num_cpus: int) -> dict[str, Any]:
    import ray
    from ray import tune

    def trainable(config, data=None):
        import torch

        torch.set_num_threads(1)
        plain_trial(data, grid["hidden"], config["batch_size"], config["lr"], config["seed"],
                    grid["epochs"], report=tune.report)  # fmt: skip

    if ray.is_initialized():
        ray.shutdown()
    storage = tempfile.mkdtemp(prefix="tune-cpu-grid-")
    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": 1}),
        param_space={k: tune.grid_search(grid[k]) for k in ("batch_size", "lr", "seed")},
        run_config=tune.RunConfig(storage_path=storage, name="cpu-grid", verbose=0),
    )
    results = tuner.fit()
    wall = time.perf_counter() - t0
    errors = sum(1 for r in results if r.error)
    ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    return {"wall_time_s": wall, "trials": len(results), "errors": errors}


# ============================================================================ profile


def step_times(grid: dict, reps: int = 30) -> list[dict[str, Any]]:
    """Seconds per optimizer step of a pack's `_Stack.step` (forward, backward, update,
    update norm), single-threaded, for packs of 8 and of 1 at each batch size: the best of
    5 repetitions of `reps` steps."""
    import copy

    import torch
    from torch.func import stack_module_state

    from scheduler.spec import parse_spec
    from workers.data import load_dataset
    from workers.models import build_model
    from workers.pack import _Stack
    from workers.packnet import make_pack_net

    cfg = parse_spec(spec_data(grid, None)).trials()[0]
    data = load_dataset(cfg.dataset)
    out = []
    for bs in grid["batch_size"]:
        for P in (8, 1):
            c = cfg.model_copy(update={"batch_size": bs})
            model = build_model(c.model, data.input_shape, data.num_classes)
            net = make_pack_net(model)
            params, bufs = stack_module_state([copy.deepcopy(model) for _ in range(P)])
            flat = torch.cat([params[k].detach().reshape(P, -1) for k in net.param_names], 1)
            st = _Stack(net, [c] * P, flat, [bufs[k] for k in net.buffer_names])
            g = torch.Generator().manual_seed(0)
            idx = torch.stack([torch.randperm(data.n_train, generator=g)[:bs] for _ in range(P)])
            x, y, neg = net.gather(data.x_train, idx), data.y_train[idx], torch.full((P, 1), -0.01)
            for _ in range(5):
                st.step(x, y, neg, None, True)
            best = math.inf
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    st.step(x, y, neg, None, True)
                best = min(best, (time.perf_counter() - t0) / reps)
            out.append({"batch_size": bs, "members": P, "ms_per_step": 1e3 * best,
                        "ms_per_member_step": 1e3 * best / P})  # fmt: skip
            print(f"  bs {bs:4d}, pack of {P}: {1e3 * best:7.2f} ms/step "
                  f"({1e3 * best / P:6.2f} ms per member)", flush=True)  # fmt: skip
    return out


def profile(grid: dict, rows: int) -> None:
    """Step times, then torch.profiler over the smallest-batch pack (the longest one)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from scheduler.spec import parse_spec
    from workers.data import load_dataset
    from workers.pack import run_pack

    torch.set_num_threads(1)  # as a pack's worker on a 2-core machine (one pack per core)
    print(f"load average {load()}; step times (1 thread):")
    step_times(grid)
    spec = parse_spec(spec_data({**grid, "batch_size": grid["batch_size"][:1]}, None))
    cfgs = spec.trials()
    data = load_dataset(cfgs[0].dataset)
    run_pack(cfgs[:2], data=data)  # warm-up
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run_pack(cfgs, data=data)
        wall = time.perf_counter() - t0
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(
        f"pack of {len(cfgs)} at batch size {cfgs[0].batch_size}: {wall:.2f} s under the profiler"
    )


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="4 trials x 2 epochs")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 10)")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--packs-setting", choices=["default", "true"], default="default",
                    help="resources.pack of the packs part: the default (auto) or true")  # fmt: skip
    ap.add_argument("--keep-storage", default=None, help="keep the packs' warehouse here")
    ap.add_argument("--profile", action="store_true", help="profile the bs-16 pack and exit")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/grid_throughput_cpu.json"))
    args = ap.parse_args(argv)
    grid = dict(TINY if args.tiny else GRID)
    if args.epochs:
        grid["epochs"] = args.epochs
    if args.profile:
        profile(grid, 25)
        return 0

    import torch

    from scheduler.runner import code_version
    from workers.config import DatasetConfig
    from workers.data import load_dataset

    out: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": "python benchmarks/cpu_grid.py " + " ".join(argv or sys.argv[1:]),
        "grid": grid, "trials": len(trials(grid)), "machine": machine(),
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "code_version": code_version(), "num_cpus": args.num_cpus, "load_average": {},
    }  # fmt: skip
    data = load_dataset(DatasetConfig(name="mnist1d"))
    for part in PARTS:
        if part not in args.only:
            continue
        if part == "tune":
            try:
                import ray.tune  # noqa: F401
            except ImportError as exc:
                out["tune"] = {"skipped": f"ray[tune] not installed: {exc}"}
                continue
        out["load_average"][f"before_{part}"] = load()
        print(f"{part} ...", flush=True)
        if part == "plain":
            r = run_plain(grid, data)
        elif part == "tune":
            r = run_tune(grid, data, args.num_cpus)
        else:
            pack = False if part == "lone" else (True if args.packs_setting == "true" else None)
            r = run_batchlab(grid, pack, args.num_cpus, args.keep_storage if pack is None else None)
        out[part] = r
        phases = "".join(f", {k} {v:.1f}" for k, v in r.get("phases", {}).items())
        print(f"{part}: {r['wall_time_s']:.1f} s{phases}", flush=True)
        _finish(out, args.json)
    return _finish(out, args.json, final=True)


def _finish(out: dict[str, Any], path: str, final: bool = False) -> int:
    """Ratios and the JSON so far (rewritten after every part: a cut-short run keeps its
    finished parts)."""
    out["load_average"]["after"] = load()
    ratios = {}
    for base in ("plain", "tune"):
        for part in ("lone", "packs"):
            if base in out and part in out and "wall_time_s" in out[base]:
                ratios[f"{part}_vs_{base}"] = out[base]["wall_time_s"] / out[part]["wall_time_s"]
    out["speedup"] = ratios
    out["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat() if final else None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str))
    if not final:
        return 0
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}x")
    print(f"load average {out['load_average']}")
    print(f"results written to {path}")
    bad = [p for p in ("lone", "packs") if p in out and out[p]["counts"].get("failed")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
