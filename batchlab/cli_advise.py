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
        head = ("batch", "best lr", "steps", "examples", "train s", "reached", "P(fast)", "P(few)")
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
        out.append("recommendation:")
        for label, pick, col, unit in (
            ("least training time", a["fastest"], "time_s", " s"),
            ("fewest examples", a["fewest_examples"], "examples", " examples"),
        ):
            if pick is None:
                out.append(f"  {label}: no batch size reached the target")
                continue
            packed = col == "time_s" and any(r["packed"] for r in a["table"])
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
    layout = require_warehouse(storage, args.experiment)
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
            con, Filters(experiment=tuple(args.experiment)), target, n_resamples=args.resamples
        )
    finally:
        con.close()
    if args.format == "json":
        print(json.dumps(_clean(res), indent=2))
    else:
        print(format_advice(res))
    return 0


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
