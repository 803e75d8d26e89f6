"""Per-trial scheduling overhead of `run_grid` on the embedded local Ray.

Runs N tiny trials (an MLP with 4 hidden units on 64 `digits` examples, one epoch, every
measurement switched off) through `scheduler.runner.run_grid`, checks the exact row
counts, then runs a sample of the same trials in this process with
`scheduler.tasks.execute_trial` (no Ray: the same training and the same Parquet writes).
Reports, per trial, in milliseconds:

- `slot_ms`: wall time x parallel slots / N: the slot-time one trial costs through Ray;
- `in_task_ms`: mean time of `execute_trial` inside the Ray worker (training, writes;
  each worker's first trial also pays its imports: `in_task_median_ms` is the steady state);
- `in_worker_train_ms`: mean `wall_time_s` of the `trials` rows (run_trial alone);
- `ray_overhead_ms` = slot_ms - in_task_ms: what Ray and the driver loop add per trial
  (dispatch, argument and result transfer, `ray.wait`, idle slots);
- `in_process_ms`: execute_trial in this process, one after another (no Ray, no second
  process competing for the 2 cores): the floor for the same work.

Ray start-up is timed separately and not counted. On a shared machine every figure moves
with the load: the load average is recorded with the results. The CI test
(tests/reliability/test_load.py) runs a smaller grid; the 2,000-trial figure comes from here.

    python benchmarks/scheduling_overhead.py                     # 2,000 trials, 2 CPUs
    python benchmarks/scheduling_overhead.py --trials 300 --json out.json
"""

from __future__ import annotations

import argparse
import io
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

# Run as a script, Python puts benchmarks/ first on sys.path, and benchmarks/warehouse.py
# would shadow the `warehouse` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

DEFAULT_JSON = _HERE / "results" / "scheduling_overhead.json"


def tiny_grid(n_trials: int, experiment: str = "load") -> dict[str, Any]:
    """A grid of `n_trials` of the cheapest trial there is (seeds 0..n-1)."""
    return {
        "experiment": experiment,
        "dataset": {"name": "digits", "n_train": 64},
        "model": {"name": "mlp", "hidden": [4]},
        "max_epochs": 1,
        "measure": {
            "update_norms": False,
            "store_steps": False,
            "layers": False,
            "train_eval": False,
            "checkpoints": False,
        },
        "resources": {"cpus_per_trial": 1, "resume_checkpoints": False},
        "grid": {"batch_size": [32], "lr": [0.1], "seed": list(range(n_trials))},
    }


def timed_execute_trial(*args, **kwargs):
    """`scheduler.tasks.execute_trial` plus its own duration (`task_s`), for the workers.
    It looks the real function up in the worker, where nothing is patched."""
    import importlib

    t0 = time.perf_counter()
    rec = importlib.import_module("scheduler.tasks").execute_trial(*args, **kwargs)
    return {**rec, "task_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument(
        "--in-process", type=int, default=100, help="trials run in-process for the baseline"
    )
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    args = ap.parse_args(argv)

    import ray

    from scheduler.runner import init_ray, run_grid
    from scheduler.spec import parse_spec
    from scheduler.tasks import execute_trial
    from warehouse.db import connect

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    spec = parse_spec(tiny_grid(args.trials))
    work = Path(tempfile.mkdtemp(prefix="batchlab-overhead-"))
    try:
        t0 = time.perf_counter()
        init_ray(num_cpus=args.num_cpus)
        ray_start_s = time.perf_counter() - t0
        slots = int(ray.cluster_resources().get("CPU", 1))

        import scheduler.tasks

        # run_grid ships scheduler.tasks.execute_trial to its tasks: ship the timed one.
        scheduler.tasks.execute_trial = timed_execute_trial
        try:
            t0 = time.perf_counter()
            report = run_grid(spec, str(work / "ray"), progress=False, out=io.StringIO())
            wall_s = time.perf_counter() - t0
        finally:
            scheduler.tasks.execute_trial = execute_trial
        ray.shutdown()
        in_task_s = sum(r["task_s"] for r in report.results)
        in_task_median_s = statistics.median(r["task_s"] for r in report.results)

        con = connect(str(work / "ray"))
        n, completed, in_worker_s = con.execute(
            "SELECT count(*), count(*) FILTER (status = 'completed'), sum(wall_time_s) FROM trials"
        ).fetchone()
        epochs = con.execute("SELECT count(*) FROM epochs").fetchone()[0]
        assert n == args.trials and completed == args.trials, (n, completed, report.counts)
        assert epochs == args.trials, epochs  # one epoch row per trial, nothing duplicated

        # Baseline: the same trials, in this process, warm (the first one pays the imports).
        sample = spec.trials()[: max(2, args.in_process)]
        root = str(work / "in-process")
        execute_trial(sample[0].model_dump_json(), "load", root, code_version="bench",
                      device="cpu", resume=False, num_threads=1)  # fmt: skip
        t0 = time.perf_counter()
        for t in sample[1:]:
            execute_trial(t.model_dump_json(), "load", root, code_version="bench",
                          device="cpu", resume=False, num_threads=1)  # fmt: skip
        in_process_ms = (time.perf_counter() - t0) / (len(sample) - 1) * 1e3
    finally:
        shutil.rmtree(work, ignore_errors=True)

    slot_ms = wall_s * slots / args.trials * 1e3
    in_task_ms = in_task_s / args.trials * 1e3
    out = {
        "trials": args.trials,
        "slots": slots,
        "ray_start_s": round(ray_start_s, 2),
        "wall_s": round(wall_s, 2),
        "trials_per_s": round(args.trials / wall_s, 1),
        "slot_ms": round(slot_ms, 1),
        "in_task_ms": round(in_task_ms, 1),
        "in_task_median_ms": round(in_task_median_s * 1e3, 1),
        "in_worker_train_ms": round(in_worker_s / args.trials * 1e3, 1),
        "ray_overhead_ms": round(slot_ms - in_task_ms, 1),
        "in_process_ms": round(in_process_ms, 1),
        "rows": {"trials": n, "epochs": epochs},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "hardware": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "python": platform.python_version(),
        "ray": ray.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_runs": 1,
    }
    print(
        f"{args.trials} tiny trials on {slots} Ray CPU slots: {wall_s:.1f} s "
        f"({out['trials_per_s']} trials/s; Ray start-up {ray_start_s:.1f} s not counted; "
        f"load average {out['load_average_1min']})\n"
        f"  per trial: {slot_ms:.1f} ms of slot time = {in_task_ms:.1f} ms in the task "
        f"(of which {out['in_worker_train_ms']} ms training) + {slot_ms - in_task_ms:.1f} ms "
        f"Ray and driver overhead (median task {out['in_task_median_ms']} ms: the mean "
        f"includes each worker's first trial, which imports torch)\n"
        f"  the same trial in-process, one after another: {in_process_ms:.1f} ms"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
