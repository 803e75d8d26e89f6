"""The advisor's answer as text and tables, shared by the app's "Choose a batch size" page
(app/views/choose.py) and the report's "Which batch size should I use?" section
(`report_section`, warehouse/report.py).

- `suggest_target(con, f)`: the grid's stored target when a selected trial has one; else a
  validation-error target every batch size reaches with every seed of at least one lr:
  1.1 x the loosest batch size's best validation error (per lr the worst seed's best error,
  per batch size its best lr), the largest over the groups;
- `group_label`, `answer_lines` (the answer in sentences), `table_frame` (per batch size);
- `report_section(con, f)`: Markdown lines of the answer per group, B_simple over training,
  the sharpness measures' verdicts on F-11 / F-15 / F-29 and their Kendall ranking.

Pure DuckDB + pandas: no torch, no Ray, no Streamlit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from warehouse.advice import GROUP, Target, advise
from warehouse.b_simple import b_simple_by_epoch, b_simple_trend
from warehouse.capture import selection_cte
from warehouse.measures import BASELINE, measure_ranking
from warehouse.queries import Filters
from warehouse.sharpness_verdicts import (
    agreement,
    eos_prediction,
    measure_label,
    measure_verdicts,
)

TARGET_MARGIN = 1.1
REPORT_RESAMPLES = 200  # the report's bootstrap (seeded: the report stays reproducible)

# What produces each missing piece (the page and the report say it).
HOW = {
    "target": "set `target_val_error` in grid.yaml, or pick a target here "
    "(`batchlab advise --target-val-error X`)",
    "timing": "`batchlab advise --dataset D --model M` runs the lone timing probe "
    "(workers/timing.py) for every batch size",
    "noise": "enable `measure.noise_scale` with `measure.probe_every_epochs: N` in grid.yaml "
    "(`batchlab advise --dataset D --model M` does)",
    "measures": "enable `measure.hessian`, `measure.batch_sharpness`, "
    "`measure.adaptive_sharpness` and `measure.sharpness` in grid.yaml",
}


def suggest_target(con: duckdb.DuckDBPyConnection, f: Filters) -> Target:
    """The target the page and the report start from (module docstring)."""
    sel, params = selection_cte(f)
    cfg = ", ".join(f"s.{c}" for c in GROUP)
    row = con.execute(
        f"""
        WITH {sel},
        trial AS (
            SELECT {cfg}, s.batch_size, s.scaled_lr, s.seed, min(1.0 - e.val_acc) AS err
            FROM sel s JOIN epochs_raw e USING (experiment, trial_id)
            WHERE isfinite(e.val_acc) GROUP BY ALL
        ),
        cell AS (SELECT * EXCLUDE (seed, err), max(err) AS err FROM trial GROUP BY ALL),
        best AS (SELECT * EXCLUDE (scaled_lr, err), min(err) AS err FROM cell GROUP BY ALL),
        loosest AS (SELECT {", ".join(GROUP)}, max(err) AS err FROM best GROUP BY ALL)
        SELECT (SELECT count(*) FROM sel WHERE steps_to_target >= 0),
               (SELECT max(err) FROM loosest)
        """,
        params,
    ).fetchone()
    stored, err = row if row else (0, None)
    if stored or err is None or not math.isfinite(err):
        return Target()
    value = min(TARGET_MARGIN * float(err), 1.0)
    return Target("val_error", float(f"{value:.3g}"))


def group_label(group: dict[str, Any]) -> str:
    """'demo: mlp on digits, sgd, lr rule none' (batchnorm and workers when they matter)."""
    out = f"{group['experiment']}: {group['model']} on {group['dataset']}, {group['optimizer']}"
    out += f", lr rule {group['lr_scaling']}"
    if group.get("batchnorm"):
        out += ", batchnorm"
    if group.get("workers") not in (None, 1):
        out += f", {group['workers']} workers"
    return out


def num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"


def ci(v: Any, lo_hi: list[float] | None, digits: int = 3) -> str:
    lo, hi = (lo_hi or [math.nan, math.nan])[:2]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return num(v, digits)
    return f"{num(v, digits)} [{num(lo, digits)}, {num(hi, digits)}]"


def pct(p: Any) -> str:
    return "-" if p is None or not math.isfinite(float(p)) else f"{float(p):.0%}"


def has_answer(a: dict[str, Any]) -> bool:
    return a["fewest_examples"] is not None


def answer_lines(a: dict[str, Any]) -> list[str]:
    """The answer of one group of `advise` in sentences (Markdown)."""
    if not has_answer(a):
        return [f"No batch size reached the target ({a['target']}): {HOW['target']}."]
    probe = a["time_source"] == "probe"
    out = []
    fast, few = a["fastest"], a["fewest_examples"]
    by_b = {r["batch_size"]: r for r in a["table"]}

    def seeds(b: int) -> str:
        r = by_b[b]
        return f"{r['n_reached']} of {r['n_seeds']} seeds reached it"

    if fast is not None:
        what = "least wall time on this hardware" if probe else "least training time"
        src = (
            "lone timing probe"
            if probe
            else "the trials' own seconds per step; no lone timing: " + HOW["timing"]
        )
        out.append(
            f"**Fastest ({what}): batch size {fast['batch_size']}** at lr "
            f"{num(fast['best_lr'])}: {ci(fast['time_s'], fast['time_s_ci'])} s to the target "
            f"({seeds(fast['batch_size'])}), fastest in {pct(fast['p_best'])} of the bootstrap "
            f"replicates ({src})."
        )
    out.append(
        f"**Fewest examples: batch size {few['batch_size']}** at lr {num(few['best_lr'])}: "
        f"{ci(few['examples'], few['examples_ci'])} examples ({seeds(few['batch_size'])}), "
        f"fewest in {pct(few['p_best'])} of the replicates."
    )
    r = a["lr_rule"]
    if r.get("closest"):
        lo, hi = r["ci"]
        inside = (
            "rules inside the interval: " + (", ".join(r["rules_in_ci"]) or "none of the three")
            if math.isfinite(lo) and math.isfinite(hi)
            else "no t interval"
        )
        own = any(x.startswith("one lr per batch size") for x in a["flags"])
        out.append(
            f"**lr rule: {r['closest']}** (best lr ~ B^slope, slope {ci(r['slope'], r['ci'], 2)}; "
            f"bootstrap {ci(r['slope'], r.get('bootstrap_ci'), 2)}; {inside})"
            + (": the grid's own rule (one lr per batch size), not a finding." if own else ".")
        )
    fit, c = a["fit"], a["cbs20"]
    bc = (
        f"B_crit = E_min / S_min = {ci(fit['b_crit'], fit['b_crit_ci'])}"
        if math.isfinite(fit["b_crit"])
        else "B_crit undefined (needs S_min, E_min > 0)"
    )
    out.append(
        f"McCandlish fit S = S_min + E_min / B over {fit['n_batch_sizes']} batch sizes: "
        f"S_min {ci(fit['s_min'], fit['s_min_ci'])} steps, E_min "
        f"{ci(fit['e_min'], fit['e_min_ci'])} examples, R^2 {num(fit['r2'])}; {bc}; "
        f"20%-overhead critical batch size {ci(c['cbs'], c['ci'])}"
        + (" (a lower bound: no batch size of the grid reaches it)" if c["censored"] else "")
        + "."
    )
    return out


def table_frame(a: dict[str, Any]) -> pd.DataFrame:
    """Per batch size: best lr, steps / examples / seconds to the target with intervals,
    seeds that reached it, and the bootstrap's P(fastest), P(fewest examples)."""
    rows = []
    for r in a["table"]:
        rows.append(
            {
                "batch size": f"{r['batch_size']}{'*' if r['packed'] else ''}",
                "best lr": num(r["best_lr"]),
                "steps": ci(r["steps"], r["steps_ci"]),
                "examples": ci(r["examples"], r["examples_ci"]),
                "seconds": ci(r["time_s"], r["time_s_ci"]),
                "reached": f"{r['n_reached']}/{r['n_seeds']}",
                "P(fastest)": pct(r["p_fastest"]),
                "P(fewest examples)": pct(r["p_fewest_examples"]),
            }
        )
    return pd.DataFrame(rows)


def fit_curve(a: dict[str, Any], n: int = 60) -> pd.DataFrame:
    """The McCandlish curve S = S_min + E_min / B over the group's batch sizes (log-spaced)."""
    fit = a["fit"]
    bs = [r["batch_size"] for r in a["table"]]
    if not (bs and math.isfinite(fit["s_min"]) and math.isfinite(fit["e_min"])):
        return pd.DataFrame(columns=["batch_size", "steps"])
    b = np.geomspace(min(bs), max(bs), n)
    s = fit["s_min"] + fit["e_min"] / b
    return pd.DataFrame({"batch_size": b, "steps": s})[s > 0]


def points_frame(a: dict[str, Any]) -> pd.DataFrame:
    """Per batch size that reached the target: steps with their interval (for a chart)."""
    rows = [
        {
            "batch_size": r["batch_size"],
            "steps": r["steps"],
            "steps_lo": r["steps_ci"][0],
            "steps_hi": r["steps_ci"][1],
            "best_lr": r["best_lr"],
            "examples": r["examples"],
        }
        for r in a["table"]
        if r["steps"] is not None and math.isfinite(r["steps"])
    ]
    return pd.DataFrame(
        rows, columns=["batch_size", "steps", "steps_lo", "steps_hi", "best_lr", "examples"]
    )


def _md(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(df: pd.DataFrame) -> list[str]:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_md(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return out


def experiments(con: duckdb.DuckDBPyConnection, f: Filters) -> list[str]:
    """The experiments of the selection (completed trials), sorted."""
    sel, params = selection_cte(f)
    rows = con.execute(f"WITH {sel} SELECT DISTINCT experiment FROM sel ORDER BY 1", params)
    return [r[0] for r in rows.fetchall()]


def target_note(target: Target) -> str:
    if target.kind == "stored":
        return target.describe()
    return (
        f"{target.describe()} (no trial has a stored target: {TARGET_MARGIN:g} x the loosest "
        "batch size's best validation error reached by every seed of one lr, the largest over "
        "the experiment's groups)"
    )


def advice_section(con: duckdb.DuckDBPyConnection, f: Filters) -> list[str]:
    """'## Which batch size should I use?': per experiment, its target (`suggest_target`),
    then the answer and its table per group."""
    out = ["## Which batch size should I use?", ""]
    out.append(
        f"From `batchlab advise` (docs/advise.md), one target per experiment; "
        f"{REPORT_RESAMPLES} bootstrap resamples over seeds (seed 0). Steps, examples and "
        "seconds are at each batch size's best lr; * packed trials (their seconds are the "
        "pack's)."
    )
    out.append("")
    exps = experiments(con, f)
    if not exps:
        return [*out, "No trials in the selection.", ""]
    for e in exps:
        fe = dataclasses.replace(f, experiment=(e,))
        target = suggest_target(con, fe)
        res = advise(con, fe, target, n_resamples=REPORT_RESAMPLES, seed=0)
        out += [f"### {_md(e)}", "", f"Target: {_md(target_note(target))}.", ""]
        for a in res:
            if not has_answer(a):
                out += [f"- {_md(group_label(a['group']))}: no batch size reached the target.", ""]
                continue
            out += [f"**{_md(group_label(a['group']))}**", ""]
            out += [f"- {x}" for x in answer_lines(a)]
            out += ["", *_table(table_frame(a)), ""]
            out += [f"Note: {_md(x)}." for x in a["flags"]]
            out.append("")
    out += b_simple_lines(con, f)
    return out


def b_simple_lines(con: duckdb.DuckDBPyConnection, f: Filters) -> list[str]:
    """B_simple at several points of training, per setting and batch size (Markdown)."""
    trend = b_simple_trend(b_simple_by_epoch(con, f))
    out = ["**B_simple over training** (McCandlish et al.'s gradient noise scale, examples).", ""]
    if trend.empty:
        return [*out, f"No noise-scale probes in the selection: {HOW['noise']}.", ""]
    over = trend[trend["n_epochs"] > 1]
    if over.empty:
        out.append(
            "Measured at one point of training only (the end): "
            "set `measure.probe_every_epochs` to see it rise."
        )
    df = trend.assign(
        setting=[
            f"{r.experiment} / {r.model} on {r.dataset} / {r.lr_scaling} lr {r.lr:g}"
            for r in trend.itertuples()
        ]
    )
    df = pd.DataFrame(
        {
            "setting": df["setting"],
            "batch size": df["batch_size"],
            "epochs probed": df["n_epochs"],
            "first (epoch)": [
                f"{num(v)} ({e})"
                for v, e in zip(df["b_simple_first"], df["first_epoch"], strict=True)
            ],
            "last (epoch)": [
                f"{num(v)} ({e})"
                for v, e in zip(df["b_simple_last"], df["last_epoch"], strict=True)
            ],
            "last / first": [num(v, 2) for v in df["ratio"]],
        }
    )
    return [*out, *_table(df), ""]


def measures_section(con: duckdb.DuckDBPyConnection, f: Filters) -> list[str]:
    """'## Sharpness measures': F-11 / F-15 / F-29 per measure, which agree, what the 2/lr
    bound predicts, and the measures ranked by granulated Kendall tau."""
    out = ["## F-11, F-15, F-29 on each sharpness measure", ""]
    table = measure_verdicts(con, f)
    if table.empty:
        return [*out, f"No sharpness probes in the selection: {HOW['measures']}.", ""]
    out.append(
        "Each finding's own test (same groups, convergence rule and Holm adjustment) with the "
        "measure in place of the one it names (F-11 / F-15: Keskar; F-29: lambda_max)."
    )
    out.append("")
    show = table[["id", "label", "verdict", "supported", "contradicted", "undecided"]]
    out += _table(show.rename(columns={"label": "measure"}))
    out.append("")
    out += [f"- **{k}**: {_md(v)}" for k, v in agreement(table).items()]
    pred = eos_prediction(con, f)
    out += ["", "What the 2/lr bound predicts (edge of stability; lambda_max of SGD trials):", ""]
    out += [f"- {_md(p['text'])}" for p in pred] or ["- no lambda_max probes of SGD trials"]
    present = {m.split("@")[0] for m in table["measure"]}
    missing = [m for m in ("batch_sharpness", "adaptive_sharpness_worst_linf") if m not in present]
    if missing:
        out += ["", f"Not measured here: {', '.join(missing)} ({HOW['measures']})."]
    rank = measure_ranking(con, f)
    out += [
        "",
        "Measures ranked by granulated Kendall tau with the generalization gap "
        "(val - train loss; Jiang et al. 2020; lr / batch size is the no-sharpness "
        "baseline):",
        "",
    ]
    if not rank.empty:
        r = rank[["measure", "granulated_tau", "overall_tau", "n_trials", "axes"]]
        r = r.assign(
            measure=[
                measure_label(m) if m != BASELINE else "lr / batch size (baseline)"
                for m in r["measure"]
            ],
            granulated_tau=[num(v, 2) for v in r["granulated_tau"]],
            overall_tau=[num(v, 2) for v in r["overall_tau"]],
        )
        out += _table(r)
    return [*out, ""]


def report_section(con: duckdb.DuckDBPyConnection, f: Filters) -> list[str]:
    """Both report sections: the advisor's answer, then the sharpness measures."""
    return [*advice_section(con, f), *measures_section(con, f)]
