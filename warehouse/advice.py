"""Which batch size should I use? The answer from an existing warehouse (docs/advise.md).

Per group of trials that differ only in batch size, lr and seed (the named queries' `GROUP`
without lr: experiment, dataset, model, batchnorm, optimizer, lr_scaling, workers), from
the steps each trial took to a target:

- per batch size B, its best lr (fewest mean steps over the seeds that reached the target,
  as `warehouse.queries.steps_to_target` / `critical_batch_size` choose it), the steps S,
  examples E = B S and training seconds to the target;
- the McCandlish et al. (2018) fit S = S_min + E_min / B, i.e. (S/S_min - 1)(E/E_min - 1) = 1,
  B_crit = E_min / S_min (the same least squares as `critical_batch_size`);
- the 20%-overhead critical batch size (Zhang et al., ICLR 2025): the batch size at which the
  steps exceed perfect linear scaling from the smallest batch size B_0 by 20%, i.e.
  E(B) = 1.2 E(B_0), interpolated in log B between grid points;
- the lr rule the best lrs follow: the slope of log(best lr) on log(B) (0 none, 1/2 sqrt,
  1 linear) with its confidence interval (scipy.stats.linregress);
- the answer: the batch size with the least training time to the target and the one with the
  fewest examples, each with the bootstrap probability that it is the best.

Uncertainty: scipy.stats.bootstrap resamples the seeds of every (batch size, lr) cell
independently (a cell with one seed enters every replicate as it is) and recomputes
everything above, lr choice included; intervals are nan-aware percentiles of the replicates.
Pure DuckDB + numpy/scipy: no torch, no Ray.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from warehouse.b_simple import b_simple_by_epoch, b_simple_rows
from warehouse.capture import selection_cte
from warehouse.queries import Filters
from warehouse.timings import probe_repeats, probe_step_times, probe_timings

GROUP = ("experiment", "dataset", "model", "batchnorm", "optimizer", "lr_scaling", "workers")
RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
OVERHEAD = 1.2  # Zhang et al.: 20% more steps than perfect linear scaling


@dataclass(frozen=True)
class Target:
    """What "reaching the target" means: `stored` (the trials' own `steps_to_target`, i.e.
    the grid's target_val_error), `val_error` (the first epoch whose 1 - val_acc <= value)
    or `train_loss` (the first epoch whose train_loss_eval <= value)."""

    kind: str = "stored"
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("stored", "val_error", "train_loss"):
            raise ValueError(f"target kind must be stored, val_error or train_loss: {self.kind}")
        if (self.kind == "stored") != (self.value is None):
            raise ValueError("a val_error / train_loss target needs a value; stored takes none")

    def describe(self) -> str:
        if self.kind == "stored":
            return "the grid's target_val_error (trials.steps_to_target)"
        col = "1 - val_acc" if self.kind == "val_error" else "train_loss_eval"
        return f"first epoch with {col} <= {self.value:g}"


def trial_steps_sql(f: Filters, target: Target) -> tuple[str, dict[str, Any]]:
    """(SQL, parameters): one row per selected trial (the named queries' trial selection,
    lr-rule sharing included) with `steps` to the target (NULL: not reached) and
    `s_per_step` = train_time_s / steps_run."""
    sel, params = selection_cte(f)
    if target.kind == "stored":
        hit = "SELECT NULL::VARCHAR AS experiment, NULL::VARCHAR AS trial_id, NULL::BIGINT AS hit"
        steps = "CASE WHEN s.steps_to_target >= 0 THEN s.steps_to_target END"
    else:
        cond = "1.0 - e.val_acc" if target.kind == "val_error" else "e.train_loss_eval"
        hit = f"""SELECT e.experiment, e.trial_id, min(e.step) AS hit
                  FROM epochs_raw e SEMI JOIN sel USING (experiment, trial_id)
                  WHERE {cond} <= $target_value GROUP BY ALL"""
        steps = "h.hit"
        params = {**params, "target_value": float(target.value)}  # type: ignore[arg-type]
    sql = f"""
        WITH {sel},
        h AS ({hit})
        SELECT {", ".join("s." + c for c in GROUP)}, s.lr, s.scaled_lr, s.batch_size, s.seed,
               s.trial_id, CAST({steps} AS DOUBLE) AS steps, s.steps_run,
               s.train_time_s / nullif(s.steps_run, 0) AS s_per_step,
               coalesce(s.pack_size, 1) AS pack_size, s.device_name, s.n_train
        FROM sel s LEFT JOIN h ON h.experiment = s.experiment AND h.trial_id = s.trial_id
        ORDER BY ALL
    """
    return sql, params


def trial_steps(con: duckdb.DuckDBPyConnection, f: Filters, target: Target) -> pd.DataFrame:
    sql, params = trial_steps_sql(f, target)
    return con.execute(sql, params).fetchdf()


# ---------------------------------------------------------------------------- summaries

Cells = dict[tuple[int, float], tuple[np.ndarray, np.ndarray]]  # (B, lr) -> (steps, s/step)


def _nanmean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def _tuned(cells: Cells) -> dict[int, dict[str, float]]:
    """Per batch size: its best lr (fewest mean steps over seeds that reached the target;
    ties: the lower lr) and that cell's mean steps, examples and seconds to the target."""
    out: dict[int, dict[str, float]] = {}
    for (b, lr), (steps, sps) in sorted(cells.items()):
        s = _nanmean(steps)
        if not math.isfinite(s) or (b in out and out[b]["steps"] <= s):
            continue
        out[b] = {"lr": lr, "steps": s, "examples": s * b, "time_s": _nanmean(steps * sps)}
    return out


def mccandlish_fit(bs: np.ndarray, steps: np.ndarray) -> dict[str, float]:
    """Least squares S = S_min + E_min / B over >= 3 batch sizes (else NaN); B_crit =
    E_min / S_min when both are positive (else NaN)."""
    from scipy import stats  # imported here: connect() builds the macros

    ok = np.isfinite(steps)
    bs, steps = bs[ok], steps[ok]
    if len(bs) < 3:
        return {"s_min": math.nan, "e_min": math.nan, "b_crit": math.nan, "r2": math.nan}
    fit = stats.linregress(1.0 / bs, steps)
    s_min, e_min = float(fit.intercept), float(fit.slope)
    good = s_min > 0 and e_min > 0
    return {
        "s_min": s_min,
        "e_min": e_min,
        "b_crit": e_min / s_min if good else math.nan,
        "r2": float(fit.rvalue**2),
    }


def cbs_overhead(bs: np.ndarray, examples: np.ndarray, overhead: float = OVERHEAD) -> dict:
    """The batch size where E(B) / E(B_0) first reaches `overhead` (B_0 the smallest batch
    size reaching the target), interpolated linearly in log B; `censored` when no batch size
    of the grid reaches it (the value is then the largest batch size, a lower bound)."""
    ok = np.isfinite(examples)
    bs, ex = bs[ok], examples[ok]
    if len(bs) < 2:
        return {"cbs": math.nan, "cbs_grid": math.nan, "censored": False}
    r = ex / ex[0]
    for k in range(1, len(bs)):
        if r[k] > overhead:
            lo, hi = math.log(bs[k - 1]), math.log(bs[k])
            frac = (overhead - r[k - 1]) / (r[k] - r[k - 1]) if r[k] != r[k - 1] else 0.0
            frac = min(max(frac, 0.0), 1.0)
            cbs = math.exp(lo + frac * (hi - lo))
            return {"cbs": cbs, "cbs_grid": float(bs[k - 1]), "censored": False}
    return {"cbs": float(bs[-1]), "cbs_grid": float(bs[-1]), "censored": True}


def lr_rule_fit(bs: np.ndarray, lrs: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Slope of log(best lr) on log(B) (scipy.stats.linregress) with its t interval (>= 3
    batch sizes), the rules whose exponent (none 0, sqrt 1/2, linear 1) lies in it, and the
    rule closest to the slope."""
    from scipy import stats  # imported here: connect() builds the macros

    ok = np.isfinite(lrs) & (lrs > 0)
    bs, lrs = bs[ok], lrs[ok]
    out: dict[str, Any] = {"slope": math.nan, "ci": [math.nan, math.nan], "rules_in_ci": []}
    if len(bs) < 2 or len(set(bs.tolist())) < 2:
        out["closest"] = None
        return out
    fit = stats.linregress(np.log(bs), np.log(lrs))
    out["slope"] = float(fit.slope)
    if len(bs) >= 3:
        t = float(stats.t.ppf(0.5 + confidence / 2, len(bs) - 2))
        lo, hi = fit.slope - t * fit.stderr, fit.slope + t * fit.stderr
        out["ci"] = [float(lo), float(hi)]
        out["rules_in_ci"] = [r for r, k in RULES.items() if lo - 1e-12 <= k <= hi + 1e-12]
    out["closest"] = min(RULES, key=lambda r: abs(RULES[r] - fit.slope))
    return out


def _summary(cells: Cells) -> dict[str, Any]:
    tuned = _tuned(cells)
    bs = np.array(sorted(tuned), dtype=float)
    steps = np.array([tuned[int(b)]["steps"] for b in bs])
    ex = np.array([tuned[int(b)]["examples"] for b in bs])
    times = np.array([tuned[int(b)]["time_s"] for b in bs])
    lrs = np.array([tuned[int(b)]["lr"] for b in bs])
    finite_t = np.isfinite(times)
    return {
        "tuned": tuned,
        "fit": mccandlish_fit(bs, steps),
        "cbs20": cbs_overhead(bs, ex),
        "lr_rule": lr_rule_fit(bs, lrs),
        "fastest": int(bs[finite_t][np.argmin(times[finite_t])]) if finite_t.any() else None,
        "fewest": int(bs[np.argmin(ex)]) if len(bs) else None,
    }


def _vector(s: dict[str, Any], grid: list[int]) -> np.ndarray:
    """The bootstrap statistic: fit, cbs, slope, then per grid batch size its steps,
    examples, seconds, and whether it is the fastest / the fewest-examples one."""
    v = [
        s["fit"]["b_crit"],
        s["fit"]["s_min"],
        s["fit"]["e_min"],
        s["cbs20"]["cbs"],
        s["lr_rule"]["slope"],
        float(math.isfinite(s["fit"]["b_crit"])),
    ]
    for b in grid:
        t = s["tuned"].get(b)
        v += [t["steps"], t["examples"], t["time_s"]] if t else [math.nan] * 3
        v += [float(s["fastest"] == b), float(s["fewest"] == b)]
    return np.array(v, dtype=float)


def _interval(x: np.ndarray, confidence: float) -> list[float]:
    x = x[np.isfinite(x)]
    if x.size < 2:
        return [math.nan, math.nan]
    a = (1 - confidence) / 2 * 100
    return [float(np.percentile(x, a)), float(np.percentile(x, 100 - a))]


def _bootstrap(
    cells: Cells, grid: list[int], n_resamples: int, confidence: float, seed: int, reps=None
):
    """(replicates x statistic) array, or None when nothing has two draws. `reps`: per batch
    size, the timing probe's repeats (s/step), resampled too (their median replaces s/step)."""
    from scipy import stats  # imported here: connect() builds the macros

    keys = [k for k, (st, _) in cells.items() if len(st) >= 2]
    rkeys = [b for b, r in (reps or {}).items() if len(r) >= 2]
    if not (keys or rkeys) or n_resamples <= 0:
        return None

    def statistic(*idx: np.ndarray) -> np.ndarray:
        c = dict(cells)
        for k, i in zip(keys, idx[: len(keys)], strict=True):
            i = np.asarray(i, dtype=int)
            c[k] = (cells[k][0][i], cells[k][1][i])
        for b, i in zip(rkeys, idx[len(keys) :], strict=True):
            med = float(np.median(reps[b][np.asarray(i, dtype=int)]))
            c.update({k: (v[0], np.full(len(v[0]), med)) for k, v in c.items() if k[0] == b})
        return _vector(_summary(c), grid)

    data = tuple(np.arange(len(cells[k][0]), dtype=float) for k in keys)
    data += tuple(np.arange(len(reps[b]), dtype=float) for b in rkeys)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            data,
            statistic,
            n_resamples=n_resamples,
            vectorized=False,
            method="percentile",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
        )
    return res.bootstrap_distribution.T


def _flags(
    g: pd.DataFrame, s: dict[str, Any], cells: Cells, target: Target, probed: bool = False
) -> list[str]:
    out = []
    if target.kind == "stored" and g["steps"].isna().all():
        out.append(
            "no trial has a stored steps_to_target (the grid set no target_val_error?): "
            "pass --target-val-error X or --target-train-loss Y"
        )
    n_train = g["n_train"].dropna()
    if len(n_train):
        out.append(
            f"the target is read at validation points (epoch ends): examples to target are "
            f"whole epochs of {int(n_train.max()):,} examples; smaller differences are not "
            "resolved"
        )
    b_crit, tuned = s["fit"]["b_crit"], sorted(s["tuned"])
    if math.isfinite(b_crit) and not tuned[0] <= b_crit <= tuned[-1]:
        out.append(
            f"B_crit {b_crit:.3g} lies outside the batch sizes measured "
            f"({tuned[0]}-{tuned[-1]}): an extrapolation"
        )
    elif len(tuned) >= 3 and not math.isfinite(b_crit):
        out.append(
            "no McCandlish fit (S_min or E_min <= 0): the steps do not flatten over these "
            "batch sizes, B_crit is beyond the largest one"
            if s["fit"]["s_min"] <= 0
            else "no McCandlish fit (S_min or E_min <= 0)"
        )
    if (g["pack_size"] > 1).any() and not probed:
        out.append(
            "packed trials: their training time is the whole pack's (every member trained "
            "together), so seconds to target of packed batch sizes are not a lone trial's"
        )
    if g["device_name"].nunique(dropna=True) > 1:
        out.append(f"trials ran on {g['device_name'].nunique()} device kinds: times mix them")
    miss = g[g["steps"].isna()]
    if len(miss):
        out.append(f"{len(miss)} of {len(g)} trials never reached the target (left out of means)")
    lrs_per_b = g.groupby("batch_size")["scaled_lr"].nunique()
    if (lrs_per_b < 2).any():
        out.append("one lr per batch size: 'best lr' is not tuned, the lr rule is the grid's own")
    else:
        edge = []
        for b, t in s["tuned"].items():
            tried = sorted(k[1] for k in cells if k[0] == b)
            if t["lr"] in (tried[0], tried[-1]):
                edge.append(b)
        if edge:
            out.append(f"best lr at the edge of the lrs tried for batch sizes {edge}: widen it")
    if all(len(st) < 2 for st, _ in cells.values()):
        out.append("one seed per setting: no intervals")
    return out


def advise(
    con: duckdb.DuckDBPyConnection,
    f: Filters,
    target: Target = Target(),
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    step_times: str = "auto",
) -> list[dict[str, Any]]:
    """The advice for every group of `f` (module docstring): a list of dicts with `group`,
    `target`, `table` (per batch size: best_lr, steps/examples/time_s to target with
    intervals, n_reached / n_seeds, p_fastest, p_fewest_examples), `fit` (s_min, e_min,
    b_crit, r2 and intervals), `cbs20`, `lr_rule`, `fastest`, `fewest_examples` and
    `flags`. Groups where no trial reached the target are listed with an empty table.
    `b_simple`: the group's gradient noise scale at every probed epoch, per batch size and lr
    (`warehouse.b_simple.b_simple_rows`; empty without noise-scale probes).

    `step_times`: the seconds per step behind the seconds to the target. `trial`: each
    trial's own train_time_s / steps_run; `probe`: the timing probe's median (`timings`,
    workers/timing.py) per batch size, required for every batch size of a group; `auto`:
    the probe where every batch size of the group has one, else the trials'. `time_source`
    says which was used, `timings` the probe rows (load, threads, device)."""
    if step_times not in ("auto", "trial", "probe"):
        raise ValueError(f"step_times must be auto, trial or probe: {step_times}")
    df = trial_steps(con, f, target)
    timings = probe_timings(con, f) if step_times != "trial" else None
    noise = b_simple_by_epoch(con, f)  # B_simple at every probed epoch (warehouse/b_simple.py)
    out = []
    for key, g in df.groupby(list(GROUP), dropna=False, sort=True):
        group = dict(zip(GROUP, (None if pd.isna(k) else k for k in key), strict=True))
        cells: Cells = {}
        for (b, lr), c in g.groupby(["batch_size", "scaled_lr"]):
            cells[(int(b), float(lr))] = (
                c["steps"].to_numpy(float),
                c["s_per_step"].to_numpy(float),
            )
        grid = sorted({b for b, _ in cells})
        devices = set(g["device_name"].dropna())
        probe = probe_step_times(timings, group, devices, grid)
        if step_times == "probe" and probe is None:
            raise ValueError(
                f"no timing probe for every batch size of {group['experiment']} "
                f"({group['model']} on {group['dataset']}): run `batchlab advise --dataset ... "
                "--model ...` (docs/advise.md) or use --step-times trial"
            )
        if probe is not None:  # every trial of a batch size: the probe's median s/step
            cells = {
                (b, lr): (st, np.full(len(st), float(probe[b]["s_per_step"])))
                for (b, lr), (st, _) in cells.items()
            }
        s = _summary(cells)
        reps = None if probe is None else {b: probe_repeats(probe[b]) for b in grid}
        boot = _bootstrap(cells, grid, n_resamples, confidence, seed, reps)

        def ci(j: int, boot: np.ndarray | None = boot) -> list[float]:
            return [math.nan, math.nan] if boot is None else _interval(boot[:, j], confidence)

        def p(j: int, boot: np.ndarray | None = boot) -> float:
            return math.nan if boot is None else float(np.nanmean(boot[:, j]))

        table = []
        for i, b in enumerate(grid):
            c = g[g["batch_size"] == b]
            t = s["tuned"].get(b)
            j = 6 + 5 * i
            table.append(
                {
                    "batch_size": b,
                    "best_lr": t["lr"] if t else None,
                    "steps": t["steps"] if t else math.nan,
                    "steps_ci": ci(j),
                    "examples": t["examples"] if t else math.nan,
                    "examples_ci": ci(j + 1),
                    "time_s": t["time_s"] if t else math.nan,
                    "time_s_ci": ci(j + 2),
                    "n_reached": int(c.loc[c["scaled_lr"] == t["lr"], "steps"].notna().sum())
                    if t
                    else 0,
                    "n_seeds": int((c["scaled_lr"] == t["lr"]).sum()) if t else len(c),
                    "packed": bool((c["pack_size"] > 1).any()) and probe is None,
                    "s_per_step": float(probe[b]["s_per_step"])
                    if probe is not None
                    else _nanmean(c["s_per_step"].to_numpy(float)),
                    "s_per_step_iqr": float(probe[b]["s_per_step_iqr"])
                    if probe is not None
                    else math.nan,
                    "p_fastest": p(j + 3),
                    "p_fewest_examples": p(j + 4),
                }
            )
        fit = {**s["fit"], "b_crit_ci": ci(0), "s_min_ci": ci(1), "e_min_ci": ci(2)}
        fit["n_batch_sizes"] = int(sum(1 for r in table if math.isfinite(r["steps"])))
        fit["valid_fraction"] = p(5)  # replicates with S_min, E_min > 0
        cbs = {**s["cbs20"], "ci": ci(3), "overhead": OVERHEAD}
        rule = {**s["lr_rule"], "bootstrap_ci": ci(4)}
        by_b = {r["batch_size"]: r for r in table}
        out.append(
            {
                "group": group,
                "target": target.describe(),
                "n_trials": len(g),
                "table": table,
                "fit": fit,
                "cbs20": cbs,
                "lr_rule": rule,
                "fastest": _pick(by_b, s["fastest"], "time_s", "p_fastest"),
                "fewest_examples": _pick(by_b, s["fewest"], "examples", "p_fewest_examples"),
                "flags": _flags(g, s, cells, target, probe is not None),
                "b_simple": b_simple_rows(noise, group),
                "time_source": "probe" if probe is not None else "trial",
                "timings": [] if probe is None else [probe[b] for b in grid],
                "bootstrap": {
                    "n_resamples": 0 if boot is None else int(boot.shape[0]),
                    "confidence": confidence,
                    "seed": seed,
                },
            }
        )
    return out


def _pick(by_b: dict[int, dict], b: int | None, col: str, p: str) -> dict[str, Any] | None:
    if b is None:
        return None
    r = by_b[b]
    return {
        "batch_size": b,
        "best_lr": r["best_lr"],
        col: r[col],
        f"{col}_ci": r[f"{col}_ci"],
        "p_best": r[p],
    }
