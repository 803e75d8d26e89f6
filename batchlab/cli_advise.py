"""`batchlab advise`: which batch size to use, from an existing warehouse (docs/advise.md).

    batchlab advise [--experiment E] [--target-val-error X | --target-train-loss Y]
                    [--format table|json] [--demo] [--resamples N]

Per group of trials that differ only in batch size, lr and seed: steps, examples and
training seconds to the target at each batch size's best lr, the McCandlish fit and B_crit,
the 20%-overhead critical batch size, the lr rule the best lrs follow, and the batch sizes
with the least time and the fewest examples to the target, each with how sure it is
(warehouse/advice.py). Exit codes as docs/cli.md: 3 when the root holds no warehouse or not
the experiment."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("advise", help="which batch size to use: time and examples to a target")
    storage_arg(p)
    p.add_argument("--experiment", action="append", default=[], help="repeatable; default all")
    t = p.add_mutually_exclusive_group()
    t.add_argument(
        "--target-val-error",
        type=float,
        default=None,
        metavar="X",
        help="target: the first epoch with validation error <= X "
        "(default: the grid's target_val_error, trials.steps_to_target)",
    )
    t.add_argument(
        "--target-train-loss",
        type=float,
        default=None,
        metavar="Y",
        help="target: the first epoch with full training-set loss <= Y",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--demo", action="store_true", help="the committed demo warehouse")
    p.add_argument(
        "--step-times",
        choices=("auto", "probe", "trial"),
        default="auto",
        help="seconds per step behind 'least time': the timing probe's (timings table) or the "
        "trials' own; auto: the probe where every batch size has one",
    )
    s = p.add_argument_group(
        "a new study (docs/advise.md): run the batch-size ladder for a model and a data set"
    )
    s.add_argument("--dataset", default=None, help="a built-in name or ./file.py:loader")
    s.add_argument("--model", default=None, help="a built-in name or ./file.py:factory")
    s.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    s.add_argument("--min-batch-size", type=int, default=32, help="B0, the ladder's first (32)")
    s.add_argument("--max-batch-size", type=int, default=1024, help="the ladder's cap (1024)")
    s.add_argument("--seeds", type=int, default=2, help="seeds per setting (2)")
    s.add_argument("--epochs", type=int, default=20, help="epochs of the B0 stage (20)")
    s.add_argument(
        "--lr-grid",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        default=None,
        help="lrs of the B0 stage, comma-separated (0.01,0.03,0.1,0.3,1)",
    )
    s.add_argument(
        "--target-factor",
        type=float,
        default=1.1,
        help="default target: this x the best validation error of B0 (1.1)",
    )
    s.add_argument(
        "--min-gain",
        type=float,
        default=0.2,
        help="stop climbing when steps to target fell by less than this over a doubling (0.2)",
    )
    s.add_argument("--no-timing", action="store_true", help="no timing probe")
    s.add_argument("--address", default=None, help="Ray cluster (default: embedded local Ray)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray")
    p.add_argument(
        "--sharpness",
        choices=("loss", "error"),
        default=None,
        help="instead: rank the sharpness measures by how well they track the generalization "
        "gap (loss or error), Jiang et al.'s granulated Kendall tau (docs/science.md)",
    )


def _clean(v: Any) -> Any:
    """JSON-ready: NaN -> null, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:,.0f}"


def _ci(v: float, ci: list[float], digits: int = 3) -> str:
    if not all(math.isfinite(c) for c in ci):
        return _num(v, digits)
    return f"{_num(v, digits)} [{_num(ci[0], digits)}, {_num(ci[1], digits)}]"


def _p(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.2f}"


def format_advice(advice: list[dict[str, Any]]) -> str:
    """The table + short recommendation of every group."""
    out = []
    for a in advice:
        g = a["group"]
        conf = round(a["bootstrap"]["confidence"] * 100)
        out.append(
            f"== {g['experiment']}: {g['model']} on {g['dataset']}, {g['optimizer']}, "
            f"batchnorm {g['batchnorm']}, lr rule {g['lr_scaling']}, {g['workers']} worker(s)"
        )
        out.append(f"target: {a['target']}; {a['n_trials']} trials; intervals {conf}% bootstrap")
        probe = a.get("time_source") == "probe"
        secs = "probe s" if probe else "train s"
        head = ("batch", "best lr", "steps", "examples", secs, "reached", "P(fast)", "P(few)")
        rows = [head]
        for r in a["table"]:
            rows.append(
                (
                    str(r["batch_size"]) + ("*" if r["packed"] else ""),
                    _num(r["best_lr"]),
                    _ci(r["steps"], r["steps_ci"]),
                    _ci(r["examples"], r["examples_ci"]),
                    _ci(r["time_s"], r["time_s_ci"]),
                    f"{r['n_reached']}/{r['n_seeds']}",
                    _p(r["p_fastest"]),
                    _p(r["p_fewest_examples"]),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        out += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        if any(r["packed"] for r in a["table"]):
            out.append("* packed: training seconds are the whole pack's")
        fit = a["fit"]
        valid = fit.get("valid_fraction", math.nan)
        share = f"; a fit in {_p(valid)} of the replicates" if math.isfinite(valid) else ""
        out.append(
            f"McCandlish fit S = S_min + E_min/B over {fit['n_batch_sizes']} batch sizes: "
            f"S_min {_ci(fit['s_min'], fit['s_min_ci'])}, "
            f"E_min {_ci(fit['e_min'], fit['e_min_ci'])}, R^2 {_num(fit['r2'])}"
        )
        if math.isfinite(fit["b_crit"]):
            out.append(f"B_crit = E_min/S_min: {_ci(fit['b_crit'], fit['b_crit_ci'])}{share}")
        else:
            out.append(f"B_crit = E_min/S_min: undefined (needs S_min, E_min > 0){share}")
        c = a["cbs20"]
        bound = " (no batch size of the grid reaches it: a lower bound)" if c["censored"] else ""
        out.append(
            f"20%-overhead critical batch size (examples 1.2x the smallest batch's): "
            f"{_ci(c['cbs'], c['ci'])}{bound}"
        )
        r = a["lr_rule"]
        if r.get("closest"):
            inside = ", ".join(r["rules_in_ci"]) or "none of none/sqrt/linear"
            out.append(
                f"best lr ~ B^slope: slope {_ci(r['slope'], r['ci'], 2)} -> closest rule "
                f"{r['closest']} (within the interval: {inside})"
            )
        if probe:
            t = a["timings"]
            loads = ", ".join(f"{x['load1_before']:.2f}" for x in t)
            ms = ", ".join(f"{x['batch_size']}: {x['s_per_step'] * 1e3:.3g}" for x in t)
            out.append(
                f"seconds = steps x the timing probe's median s/step (timings table; ms/step "
                f"{ms}; {t[0]['device_name'] or t[0]['device']}, {t[0]['torch_threads']} "
                f"thread(s), {t[0]['ray_num_cpus']:g} CPUs reserved, load {loads})"
            )
        else:
            out.append(
                "seconds = steps x the trials' own train_time_s / steps_run (no timing probe "
                "for every batch size: `batchlab advise --dataset D --model M` measures one)"
            )
        out.append("recommendation:")
        for label, pick, col, unit in (
            ("least wall time" if probe else "least training time", a["fastest"], "time_s", " s"),
            ("fewest examples", a["fewest_examples"], "examples", " examples"),
        ):
            if pick is None:
                out.append(f"  {label}: no batch size reached the target")
                continue
            packed = col == "time_s" and any(r["packed"] for r in a["table"]) and not probe
            out.append(
                f"  {label}: batch size {pick['batch_size']} at lr {_num(pick['best_lr'])}, "
                f"{_ci(pick[col], pick[col + '_ci'])}{unit}, best in "
                f"{_p(pick['p_best'])} of the bootstrap replicates"
                + (" (packed trials' seconds: not a lone trial's, see the note)" if packed else "")
            )
        out += [f"  note: {f}" for f in a["flags"]]
        out.append("")
    return "\n".join(out) if out else "no trials"


def cmd_advise(args: argparse.Namespace) -> int:
    from batchlab.cli import EXAMPLES, require_warehouse
    from warehouse.advice import Target, advise
    from warehouse.db import connect
    from warehouse.queries import Filters

    storage = str(EXAMPLES / "results") if args.demo else args.storage
    if args.dataset or args.model:
        from scheduler.advise_study import StudyFailed

        try:
            study = _study(args)
        except StudyFailed as exc:
            import sys

            from batchlab.cli import EXIT_TRIALS_FAILED

            print(f"error: {exc}", file=sys.stderr)
            return EXIT_TRIALS_FAILED
        args.experiment = [study.experiment]
        args.target_val_error = study.target_val_error
    layout = require_warehouse(storage, args.experiment)
    if args.target_val_error is None and args.target_train_loss is None:
        args.target_val_error = _study_target(layout, args.experiment)
    if args.target_val_error is not None:
        target = Target("val_error", args.target_val_error)
    elif args.target_train_loss is not None:
        target = Target("train_loss", args.target_train_loss)
    else:
        target = Target()
    con = connect(layout)
    if args.sharpness:
        return _rank(con, args)
    try:
        res = advise(
            con,
            Filters(experiment=tuple(args.experiment)),
            target,
            n_resamples=args.resamples,
            step_times=args.step_times,
        )
    finally:
        con.close()
    if args.format == "json":
        print(json.dumps(_clean(res), indent=2))
    else:
        print(format_advice(res))
    return 0


def _study_target(layout: Any, experiments: list[str]) -> float | None:
    """The target of a stored `advise --dataset` study (its study.json) when the one
    experiment asked for is such a study: its stage 0 ran without a stored target."""
    if len(experiments) != 1:
        return None
    raw = layout.get_bytes(layout.study_file(experiments[0], "study.json"))
    target = json.loads(raw).get("target_val_error") if raw else None
    if target is not None:
        import sys

        print(f"target: the study's, validation error <= {target:g} (study.json)", file=sys.stderr)
    return target


def _study(args: argparse.Namespace) -> Any:
    """Run (or resume) the study of --dataset / --model (scheduler/advise_study.py)."""
    import sys

    from scheduler.advise_study import LR_GRID, StudyOptions, run_study

    if not (args.dataset and args.model):
        raise ValueError("a new study needs both --dataset and --model")
    if args.demo or args.sharpness or len(args.experiment) > 1 or args.target_train_loss:
        raise ValueError(
            "--dataset/--model run a study: not with --demo, --sharpness, "
            "--target-train-loss or several --experiment"
        )
    opts = StudyOptions(
        dataset=args.dataset,
        model=args.model,
        experiment=args.experiment[0] if args.experiment else None,
        optimizer=args.optimizer,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        seeds=args.seeds,
        lr_grid=args.lr_grid or LR_GRID,
        epochs=args.epochs,
        target_factor=args.target_factor,
        target_val_error=args.target_val_error,
        min_gain=args.min_gain,
        timing=not args.no_timing,
    )
    # the study's progress on stderr: stdout is the advice (a table or JSON)
    st = run_study(opts, args.storage, address=args.address, num_cpus=args.num_cpus, out=sys.stderr)
    print(
        f"study {st.experiment}: batch sizes "
        f"{', '.join(str(s['batch_size']) for s in st.stages)}; target validation error "
        f"<= {st.target_val_error:g} ({st.target_source}); ladder stopped: {st.stop_reason}"
        + "".join(f"; {n}" for n in st.notes),
        file=sys.stderr,
    )
    return st


def _rank(con: Any, args: argparse.Namespace) -> int:
    from warehouse.measures import measure_ranking
    from warehouse.queries import Filters

    try:
        df = measure_ranking(con, Filters(experiment=tuple(args.experiment)), gap=args.sharpness)
    finally:
        con.close()
    if args.format == "json":
        print(json.dumps(_clean(df.to_dict(orient="records")), indent=2))
        return 0
    if df.empty:
        print("no sharpness probes with a generalization gap in the selection")
        return 0
    cols = ["measure", "granulated_tau", "overall_tau", "n_trials", "axes"]
    cols += [c for c in df.columns if c.endswith("_tau") and c not in cols and df[c].notna().any()]
    print(f"sharpness measures vs the generalization gap ({args.sharpness}), best first:")
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print("lr_over_batch_size is a baseline, not a sharpness: a measure worth having beats it")
    return 0
