"""`batchlab advise --dataset D --model M`: write and run the batch-size study, then advise
(docs/advise.md).

The study is a doubling ladder of batch sizes B0, 2 B0, 4 B0, ... run stage by stage through
the ordinary scheduler (`run_grid`), one grid file per stage written under the storage root
(`studies/experiment=<e>/stage-<k>-b<B>.yaml`, plus `study.json` with every decision), so
each stage is reproducible with `batchlab run FILE --storage ROOT` and a re-run skips every
stored trial (the decisions are pure functions of stored results, so they come out the
same):

1. stage 0: batch size B0 over a decade grid of lrs (`lr_grid`), `seeds` seeds, `epochs`
   epochs, no target. The target (unless given) is `target_factor` x the best validation
   error of B0 (the best lr's seed-mean of each trial's lowest validation error).
2. stage k: batch size B = 2 B_{k-1} at the lrs `bracket_lrs`: lr0 (B / B0)^p and
   lr_{k-1} (B / B_{k-1})^p for p in {0, 1/2, 1} (none, sqrt and linear scaling from the
   tuned small-batch lr and from the previous stage's best lr), each trial trained to the
   target (`target_val_error`) with at most as many steps as stage 0 ran and at most twice
   the steps the previous batch size took (`stage_epochs`).
3. the ladder stops (`stop_reason`) when the steps to the target fell by less than
   `min_gain` (20%) over the last doubling (diminishing returns), when the largest batch size
   did not reach the target at all, or at `max_batch_size`.
4. a timing probe per batch size (workers/timing.py), each a lone Ray task that reserves a
   whole node's CPUs (and one GPU on a GPU study) after every trial has finished, so no pack
   or trial shares the node while it times; stored in the `timings` table.

Pure functions (`bracket_lrs`, `derive_target`, `ladder_decision`) carry the logic and are
tested without Ray (tests/scheduler/test_advise_study.py).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
RULE_EXPONENTS = (0.0, 0.5, 1.0)  # none, sqrt, linear
MEASURE_OFF = {  # the study needs losses and validation error only: keep trials cheap
    "update_norms": False,
    "store_steps": False,
    "layers": False,
    "train_eval": False,
    "checkpoints": False,
}


class StudyFailed(Exception):
    """Trials of a stage failed: the ladder cannot decide on them (exit 4, like `run`)."""


@dataclass
class StudyOptions:
    """What `batchlab advise --dataset --model` runs (docs/advise.md, every default)."""

    dataset: str
    model: str
    experiment: str | None = None
    optimizer: str = "sgd"
    min_batch_size: int = 32
    max_batch_size: int = 1024
    seeds: int = 2
    lr_grid: tuple[float, ...] = LR_GRID
    epochs: int = 20  # stage 0
    max_epochs_cap: int = 2000
    budget_factor: float = 2.0
    target_factor: float = 1.1
    target_val_error: float | None = None
    min_gain: float = 0.2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    timing: bool = True
    timing_warmup: int = 10
    timing_steps: int = 30
    timing_repeats: int = 9

    def name(self) -> str:
        if self.experiment:
            return self.experiment
        raw = f"advise-{self.dataset}-{self.model}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-.")[:128]


@dataclass
class Study:
    """What the study did: its stages, target, why the ladder stopped, the timings."""

    experiment: str
    target_val_error: float | None = None
    target_source: str = ""
    lr0: float | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    timings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ pure logic (tested)


def _round3(x: float) -> float:
    return float(f"{x:.3g}")


def bracket_lrs(
    lr0: float, b0: int, b: int, prev_lr: float | None = None, prev_b: int | None = None
) -> list[float]:
    """The lrs tried at batch size `b`: lr0 (b/b0)^p and prev_lr (b/prev_b)^p for p in
    {0, 1/2, 1}, rounded to 3 significant digits, near-duplicates (within 5%) dropped,
    ascending."""
    cands = [lr0 * (b / b0) ** p for p in RULE_EXPONENTS]
    if prev_lr is not None and prev_b is not None:
        cands += [prev_lr * (b / prev_b) ** p for p in RULE_EXPONENTS]
    out: list[float] = []
    for c in sorted(_round3(c) for c in cands):
        if not out or c > out[-1] * 1.05:
            out.append(c)
    return out


def derive_target(best_val_error: float, factor: float = 1.1) -> float:
    """The default target: `factor` x the small batch's best validation error, rounded to
    4 digits, inside (0, 1)."""
    if not 0 <= best_val_error < 1 or not math.isfinite(best_val_error):
        raise ValueError(f"best validation error {best_val_error} is not in [0, 1)")
    t = round(max(best_val_error * factor, best_val_error + 1e-3), 4)
    return min(t, 0.999)


def ladder_decision(
    steps: dict[int, float], max_batch_size: int, min_gain: float = 0.2
) -> tuple[bool, str]:
    """(stop?, why) after the stages run so far: `steps` maps each batch size to its steps
    to the target at its best lr (NaN: not reached)."""
    bs = sorted(steps)
    last = bs[-1]
    if not math.isfinite(steps[last]):
        return True, f"batch size {last} did not reach the target at any lr tried"
    if len(bs) >= 2 and math.isfinite(steps[bs[-2]]):
        prev = bs[-2]
        gain = 1 - steps[last] / steps[prev]
        if gain < min_gain:
            return True, (
                f"diminishing returns: steps to target fell by {gain:.0%} from batch size "
                f"{prev} ({steps[prev]:.0f}) to {last} ({steps[last]:.0f}), less than "
                f"{min_gain:.0%} over the last doubling"
            )
    if last * 2 > max_batch_size:
        return True, f"the largest batch size allowed ({max_batch_size}) was reached"
    return False, ""


def stage_epochs(opts: StudyOptions, b: int, prev_steps: float, n_train: int) -> int:
    """The epoch budget of batch size `b`: at most as many steps as stage 0 ran (`epochs`
    x b / B0 epochs) and at most `budget_factor` x the steps the previous batch size took
    to the target (more steps than that is no speed-up worth finding), capped."""
    by_stage0 = math.ceil(opts.epochs * b / opts.min_batch_size)
    by_prev = math.ceil(opts.budget_factor * prev_steps * b / n_train)
    return max(1, min(opts.max_epochs_cap, by_stage0, by_prev))


# ------------------------------------------------------------------ grid files


def stage_grid(
    opts: StudyOptions, batch_size: int, lrs: list[float], epochs: int, target: float | None
) -> dict[str, Any]:
    """The grid.yaml data of one stage (lrs absolute: lr_scaling none, base = batch size)."""
    data: dict[str, Any] = {
        "experiment": opts.name(),
        "description": f"batchlab advise study: {opts.model} on {opts.dataset}, "
        f"batch size {batch_size}",
        "dataset": opts.dataset,
        "model": opts.model,
        "optimizer": opts.optimizer,
        "max_epochs": int(epochs),
        "base_batch_size": int(batch_size),
        "measure": dict(MEASURE_OFF),
        "grid": {
            "batch_size": [int(batch_size)],
            "lr": [float(x) for x in lrs],
            "lr_scaling": ["none"],
            "seed": list(range(opts.seeds)),
        },
        "resources": {
            "cpus_per_trial": opts.cpus_per_trial,
            "gpus_per_trial": opts.gpus_per_trial,
        },
    }
    if target is not None:
        data["target_val_error"] = float(target)
    if any(":" in x for x in (opts.dataset, opts.model)):
        data["code_dir"] = os.getcwd()  # ./file.py paths as the user typed them
    return data


def _write_grid(layout: Any, exp: str, name: str, data: dict[str, Any]) -> str:
    path = layout.study_file(exp, name)
    text = "# written by `batchlab advise --dataset ... --model ...` (docs/advise.md)\n"
    layout.put_bytes(path, (text + yaml.safe_dump(data, sort_keys=False)).encode())
    return path


def _run_stage(layout: Any, data: dict[str, Any], name: str, run: dict[str, Any], out) -> Any:
    from scheduler.runner import run_grid
    from scheduler.spec import parse_spec

    path = _write_grid(layout, data["experiment"], name, data)
    spec = parse_spec(data, path)
    if run.get("preflight"):
        from scheduler.preflight import preflight

        preflight(spec, layout.root)
        run["preflight"] = False
    print(f"-- {name}: {path}", file=out)
    report = run_grid(
        spec,
        layout.root,
        address=run.get("address"),
        num_cpus=run.get("num_cpus"),
        progress=False,
        out=out,
    )
    if report.cancelled:
        raise KeyboardInterrupt
    if failed := report.counts.get("failed", 0):
        raise StudyFailed(
            f"{name}: {failed} trial(s) failed (listed above); the ladder stops here. Run the "
            "same command again: stored trials are skipped and the failed ones retried"
        )
    return spec


# ------------------------------------------------------------------ reading results


def _best_val_error(layout: Any, exp: str, batch_size: int) -> tuple[float, float, int]:
    """(lr, seed-mean lowest validation error) of the best lr at `batch_size`, and the
    training set's size."""
    from warehouse.db import connect

    con = connect(layout)
    try:
        row = con.execute(
            """SELECT t.scaled_lr, avg(e.err) AS err, max(t.n_train) FROM trials t JOIN (
                   SELECT experiment, trial_id, min(1 - val_acc) AS err FROM epochs
                   GROUP BY ALL) e USING (experiment, trial_id)
               WHERE t.experiment = $e AND t.batch_size = $b AND t.status = 'completed'
               GROUP BY ALL ORDER BY err, t.scaled_lr LIMIT 1""",
            {"e": exp, "b": batch_size},
        ).fetchone()
    finally:
        con.close()
    if row is None or row[1] is None:
        raise RuntimeError(f"no completed trial at batch size {batch_size} in {exp}")
    return float(row[0]), float(row[1]), int(row[2])


def _tuned_steps(layout: Any, exp: str, target: float) -> dict[int, dict[str, Any]]:
    """Per batch size: the advisor's best lr and steps to `target` (NaN: not reached)."""
    from warehouse.advice import Target, advise
    from warehouse.db import connect
    from warehouse.queries import Filters

    con = connect(layout)
    try:
        res = advise(
            con,
            Filters(experiment=(exp,)),
            Target("val_error", target),
            n_resamples=0,
            step_times="trial",
        )
    finally:
        con.close()
    out: dict[int, dict[str, Any]] = {}
    for a in res:
        for r in a["table"]:
            out[int(r["batch_size"])] = {"lr": r["best_lr"], "steps": float(r["steps"])}
    return out


# ------------------------------------------------------------------ timing tasks


def _timing_task(cfg: Any, device: str, threads: int, kw: dict[str, Any]) -> dict[str, Any]:
    from workers.timing import time_steps

    return time_steps(cfg, device=device, threads=threads, **kw)


def _stored_timings(layout: Any, exp: str) -> set[str]:
    """The timing ids stored for `exp` (per-key files or compacted parts alike)."""
    from warehouse.db import connect

    con = connect(layout)
    try:
        rows = con.execute("SELECT timing_id FROM timings WHERE experiment = $e", {"e": exp})
        return {r[0] for r in rows.fetchall()}
    finally:
        con.close()


def _whole_node_cpus() -> float:
    from scheduler.ray_backend import alive_node_table

    cpus = [n["Resources"].get("CPU", 0.0) for n in alive_node_table()]
    return max(cpus) if cpus else 1.0


def run_timings(
    layout: Any, specs: list[Any], opts: StudyOptions, run: dict[str, Any], out
) -> list[dict[str, Any]]:
    """One timing probe per stage's batch size, one at a time, each a Ray task reserving a
    whole node's CPUs; rows already stored (same timing_id) are skipped."""
    import scheduler.ray_backend as ray_backend
    from scheduler.ray_setup import init_ray
    from scheduler.versions import code_version
    from warehouse.store import write_rows
    from workers.timing import timing_id

    init_ray(run.get("address"), run.get("num_cpus"))
    node_cpus = _whole_node_cpus()
    device = "cuda" if opts.gpus_per_trial > 0 else "cpu"
    threads = max(1, int(opts.cpus_per_trial))
    kw = {"warmup": opts.timing_warmup, "steps": opts.timing_steps, "repeats": opts.timing_repeats}
    stored = _stored_timings(layout, opts.name())
    rows = []
    for spec in specs:
        cfg = spec.trials()[0]
        tid = timing_id(cfg, device, threads)
        if tid in stored:
            print(f"   timing of batch size {cfg.batch_size}: stored ({tid})", file=out)
            continue
        task = ray_backend.remote(
            _timing_task, num_cpus=node_cpus, num_gpus=1 if device == "cuda" else 0, max_retries=1
        )
        spec_kw = {**kw, "data_dir": getattr(spec, "data_dir", None)}  # e.g. MNIST files
        row = ray_backend.get(task.remote(cfg, device, threads, spec_kw))  # one at a time: nothing
        # else of this run is on the node
        row.update(
            experiment=spec.experiment,
            ray_num_cpus=node_cpus,
            code_version=code_version(),
            measured_at=dt.datetime.now(dt.timezone.utc),
        )
        write_rows(layout, "timings", spec.experiment, row["timing_id"], [row])
        print(
            f"   timing of batch size {cfg.batch_size}: {row['s_per_step'] * 1e3:.3g} ms/step "
            f"(IQR {row['s_per_step_iqr'] * 1e3:.2g} ms, load {row['load1_before']:.2f} -> "
            f"{row['load1_after']:.2f}, {row['torch_threads']} thread(s), {node_cpus:g} CPUs "
            "reserved)",
            file=out,
        )
        rows.append(row)
    return rows


# ------------------------------------------------------------------ the study


def run_study(
    opts: StudyOptions,
    root: str | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    out=None,
) -> Study:
    """Run (or resume) the study of `opts` under `root` (module docstring)."""
    from warehouse.layout import Layout

    out = sys.stdout if out is None else out
    if opts.min_batch_size < 1 or opts.max_batch_size < opts.min_batch_size:
        raise ValueError("batch sizes: need 1 <= --min-batch-size <= --max-batch-size")
    if opts.seeds < 1 or opts.epochs < 1 or not opts.lr_grid:
        raise ValueError("need at least one seed, one epoch and one lr")
    layout = Layout.open(root)
    exp = opts.name()
    st = Study(exp)
    run = {"address": address, "num_cpus": num_cpus, "preflight": True}
    b0 = opts.min_batch_size
    data = stage_grid(opts, b0, sorted(opts.lr_grid), opts.epochs, None)
    specs = [_run_stage(layout, data, f"stage-0-b{b0}.yaml", run, out)]
    lr_err, err0, n_train = _best_val_error(layout, exp, b0)
    if opts.target_val_error is not None:
        st.target_val_error = opts.target_val_error
        st.target_source = "given (--target-val-error)"
    else:
        st.target_val_error = derive_target(err0, opts.target_factor)
        st.target_source = (
            f"{opts.target_factor:g} x the best validation error of batch size {b0} "
            f"({err0:.4f} at lr {lr_err:g}, the mean over {opts.seeds} seed(s) of each "
            "trial's lowest)"
        )
    print(f"target: validation error <= {st.target_val_error:g} ({st.target_source})", file=out)
    tuned = _tuned_steps(layout, exp, st.target_val_error)
    if tuned.get(b0, {}).get("lr") is not None:  # the bracket's base: fewest steps at B0
        lr0 = st.lr0 = float(tuned[b0]["lr"])
    st.stages.append(
        {
            "batch_size": b0,
            "lrs": sorted(opts.lr_grid),
            "epochs": opts.epochs,
            **tuned.get(b0, {"lr": None, "steps": math.nan}),
        }
    )
    lr0 = st.lr0 if st.lr0 is not None else lr_err
    if lr0 in (min(opts.lr_grid), max(opts.lr_grid)) and len(opts.lr_grid) > 1:
        st.notes.append(f"the best lr of batch size {b0} ({lr0:g}) is at the edge of --lr-grid")
    stop, why = ladder_decision(
        {b0: tuned.get(b0, {}).get("steps", math.nan)}, opts.max_batch_size, opts.min_gain
    )
    b, k = b0, 0
    while not stop:
        prev_b, prev_lr = b, tuned[b]["lr"]
        b, k = 2 * b, k + 1
        lrs = bracket_lrs(lr0, b0, b, prev_lr, prev_b)
        epochs = stage_epochs(opts, b, tuned[prev_b]["steps"], n_train)
        data = stage_grid(opts, b, lrs, epochs, st.target_val_error)
        specs.append(_run_stage(layout, data, f"stage-{k}-b{b}.yaml", run, out))
        tuned = _tuned_steps(layout, exp, st.target_val_error)
        cur = tuned.get(b, {"lr": None, "steps": math.nan})
        st.stages.append({"batch_size": b, "lrs": lrs, "epochs": epochs, **cur})
        steps = {s["batch_size"]: s["steps"] for s in st.stages}
        stop, why = ladder_decision(steps, opts.max_batch_size, opts.min_gain)
        print(
            f"   batch size {b}: best lr {cur['lr']}, steps to target {cur['steps']:.0f}", file=out
        )
    st.stop_reason = why
    print(f"ladder stopped: {why}", file=out)
    if opts.timing:
        st.timings = run_timings(layout, specs, opts, run, out)
    else:
        st.notes.append("no timing probe (--no-timing): seconds are the trials' own")
    record = {
        **asdict(st),
        "options": asdict(opts),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    record["timings"] = [r["timing_id"] for r in st.timings]
    layout.put_bytes(
        layout.study_file(exp, "study.json"),
        json.dumps(record, indent=2, default=str).encode(),
    )
    from warehouse.db import write_duckdb_file

    write_duckdb_file(layout)  # the timings in batchlab.duckdb's views too
    return st
