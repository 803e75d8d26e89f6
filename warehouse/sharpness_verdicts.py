"""F-11, F-15 and F-29 judged on each sharpness measure, and what the 2/lr bound predicts.

The findings engine (warehouse/findings) judges F-11 and F-15 on Keskar sharpness and F-29
on the Hessian's top eigenvalue lambda_max. Sharpness is partly set by the lr: under
gradient descent lambda_max settles at 2/lr (the edge of stability, Cohen et al. 2021; with
heavy-ball momentum beta at (2 + 2 beta)/lr), under SGD the batch sharpness settles there
and lambda_max stays below it, further below for smaller batches (Andreyev & Beneventano,
arXiv 2412.20553); lambda_max and Keskar are not invariant to reparametrisation (Dinh et al.
2017), adaptive sharpness is (Kwon et al. 2021).

- `measure_verdicts(con, f)`: one row per (finding, measure): the finding's own test (same
  groups, convergence rule, Holm adjustment, `warehouse.findings.combine`) run with the
  measure in place of the one it names; measures as `warehouse.measures.sharpness_measures`
  gives them (lambda_max, lambda_max lr / 2, batch sharpness and its lr / 2 ratio, adaptive
  sharpness per kind and rho, Keskar per eps), one eps / rho at a time;
- `agreement(table)`: per finding, which measures agree (the verdicts side by side);
- `eos_prediction(con, f)`: per lr rule, the bound (2 + 2 beta) / lr at the smallest and
  the largest batch size and how close lambda_max comes to it there, with what that predicts
  for F-11 / F-29 (fixed lr) and F-15 (scaled lr).

Pure pandas on top of the warehouse: no torch, no Ray, no Streamlit.
"""

from __future__ import annotations

import dataclasses
import math

import duckdb
import numpy as np
import pandas as pd

from warehouse.findings import FINDINGS, SUPPORTED, combine, counts
from warehouse.findings.core import judge
from warehouse.findings.data import ID_COLUMNS, Data
from warehouse.measures import BASELINE, sharpness_measures
from warehouse.queries import Filters

IDS = ("F-11", "F-15", "F-29")
# The probe each finding reads (its test looks the measure up under this name).
READS = {"F-11": "keskar_sharpness", "F-15": "keskar_sharpness", "F-29": "hessian_top_eig"}
# Measures left out: the baseline is no sharpness; the momentum-corrected ratio is a constant
# multiple of eos_ratio within every group a finding compares (same momentum).
SKIP = (BASELINE, "eos_ratio_momentum")
LABELS = {
    "hessian_top_eig": "lambda_max",
    "eos_ratio": "lambda_max x lr / 2",
    "batch_sharpness": "batch sharpness",
    "batch_eos_ratio": "batch sharpness x lr / 2",
    "adaptive_sharpness_worst_linf": "adaptive worst-case (Linf)",
    "adaptive_sharpness_worst_l2": "adaptive worst-case (L2)",
    "adaptive_sharpness_average": "adaptive average-case",
    "keskar_sharpness": "Keskar",
    "eos_ratio_momentum": "lambda_max x lr / (2 + 2 beta)",
}
COLUMNS = ["id", "measure", "label", "verdict", "statistic", "spread", "groups"]
COLUMNS += ["supported", "contradicted", "undecided"]


def measure_label(measure: str) -> str:
    """'keskar_sharpness@0.001' -> 'Keskar (eps 0.001)' (rho for the adaptive ones)."""
    probe, _, param = measure.partition("@")
    name = LABELS.get(probe, probe)
    if not param:
        return name
    what = "eps" if probe == "keskar_sharpness" else "rho"
    return f"{name} ({what} {float(param):g})"


class MeasureData(Data):
    """`base`'s trials, with one measure's rows served as the probe a finding reads."""

    def __init__(self, base: Data, rows: pd.DataFrame, label: str):
        super().__init__(base.con, base.f)
        self.base, self.rows, self.measure_label = base, rows, label

    @property
    def trials(self) -> pd.DataFrame:
        return self.base.trials

    @property
    def probes(self) -> pd.DataFrame:
        return self.rows


def _measure_rows(con: duckdb.DuckDBPyConnection, f: Filters, data: Data) -> pd.DataFrame:
    """Every measure's rows joined onto the findings' trials (lr-rule sharing included)."""
    m = sharpness_measures(con, dataclasses.replace(f, lr_scaling=()))
    m = m[~m["measure"].isin(SKIP)]
    if m.empty or data.trials.empty:
        return pd.DataFrame()
    rows = m[["experiment", "trial_id", "measure", "param", "epoch", "value"]].rename(
        columns={"param": "eps", "epoch": "probe_epoch"}
    )
    return data.trials[list(ID_COLUMNS)].merge(rows, on=["experiment", "trial_id"])


def measure_verdicts(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """One row per (finding, measure): the finding's verdict with the measure in place of
    its own (module docstring); columns `COLUMNS`. Empty when no trial has a measure."""
    data = Data(con, f)
    rows = _measure_rows(con, f, data)
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    out = []
    by_id = {fd.id: fd for fd in FINDINGS}
    for fid in IDS:
        for measure, g in rows.groupby("measure", sort=True):
            md = MeasureData(data, g.assign(probe=READS[fid]), measure_label(measure))
            results = judge(by_id[fid].run(md))
            verdict, shown = combine(results)
            c = counts(results)
            stat = "no data for this test in the selection"
            if shown is not None:
                stat = f"{shown.statistic} [{shown.group}]".replace(" / eps nan", "")
            out.append(
                {
                    "id": fid,
                    "measure": measure,
                    "label": measure_label(measure),
                    "verdict": verdict,
                    "statistic": stat,
                    "spread": shown.spread if shown is not None else "",
                    "groups": len(results),
                    **c,
                }
            )
    return pd.DataFrame(out, columns=COLUMNS)


def agreement(table: pd.DataFrame) -> dict[str, str]:
    """Per finding of `table` (`measure_verdicts`): which measures give which verdict, and
    whether the judged ones (supported / contradicted / mixed) agree."""
    out = {}
    for fid, g in table.groupby("id", sort=True):
        by = {v: list(d["label"]) for v, d in g.groupby("verdict", sort=True)}
        text = "; ".join(f"{v}: {', '.join(labels)}" for v, labels in sorted(by.items()))
        judged = {v for v in by if v != "undecided"}
        if not judged:
            head = "no measure decides it"
        elif len(judged) == 1:
            (v,) = judged
            n = len(by[v])
            head = f"the {n} measure{'s' if n > 1 else ''} that decide{'' if n > 1 else 's'} agree ({v})"
        else:
            head = "the measures disagree"
        out[str(fid)] = f"{head}. {text}."
    return out


def _bound_rows(m: pd.DataFrame) -> pd.DataFrame:
    """lambda_max rows of SGD trials with their bound (2 + 2 beta) / lr and ratio to it."""
    h = m[(m["probe"] == "hessian_top_eig") & (m["optimizer"] == "sgd")]
    h = h[np.isfinite(h["value"]) & (h["scaled_lr"] > 0)]
    bound = (2.0 + 2.0 * h["momentum"].astype(float)) / h["scaled_lr"].astype(float)
    return h.assign(bound=bound, ratio=h["value"] / bound)


def eos_prediction(con: duckdb.DuckDBPyConnection, f: Filters) -> list[dict]:
    """Per lr rule with lambda_max probes of SGD trials: over the groups (experiment, data
    set, model, batchnorm, lr) with >= 2 batch sizes, the median bound and lambda_max / bound
    at each group's smallest and largest batch size, and the sentence it implies."""
    m = sharpness_measures(con, dataclasses.replace(f, lr_scaling=()))
    if m.empty:
        return []
    h = _bound_rows(m)
    out = []
    cols = ["experiment", "dataset", "model", "batchnorm", "momentum", "lr"]
    for rule, r in h.groupby("lr_scaling", sort=True):
        ends = []
        for _, g in r.groupby(cols, dropna=False):
            per = g.groupby("batch_size")[["bound", "ratio", "value"]].median()
            if len(per) >= 2:
                ends.append((per.index[0], per.iloc[0], per.index[-1], per.iloc[-1]))
        if not ends:
            continue
        b_lo = float(np.median([e[1]["bound"] for e in ends]))
        b_hi = float(np.median([e[3]["bound"] for e in ends]))
        r_lo = float(np.median([e[1]["ratio"] for e in ends]))
        r_hi = float(np.median([e[3]["ratio"] for e in ends]))
        out.append(
            {
                "lr_scaling": str(rule),
                "groups": len(ends),
                "bound_small": b_lo,
                "bound_large": b_hi,
                "ratio_small": r_lo,
                "ratio_large": r_hi,
                "text": _predict(str(rule), len(ends), b_lo, b_hi, r_lo, r_hi),
            }
        )
    return out


NEAR = 0.5  # lambda_max at >= half the bound: the bound can hold it (Cohen et al.: ~1)
ABOVE = 1.5  # well above the bound: the bound does not apply to these weights


def _predict(rule: str, n: int, b_lo: float, b_hi: float, r_lo: float, r_hi: float) -> str:
    at = (
        f"lambda_max / bound is {r_lo:.2g} at the smallest batch size and {r_hi:.2g} at the "
        f"largest (median over {n} group{'s' if n > 1 else ''})"
    )
    near = r_hi >= NEAR
    if max(r_lo, r_hi) > ABOVE:
        return (
            f"{rule} lr: the bound (2 + 2 beta) / lr is {b_lo:.3g} at the smallest batch size "
            f"and {b_hi:.3g} at the largest; {at}: above the bound, so it does not hold "
            "lambda_max here (not a stable point of gradient descent at this lr: an lr "
            "schedule, warm-up or a probe at other weights), and it predicts nothing."
        )
    if math.isclose(b_lo, b_hi, rel_tol=1e-6):
        trend = (
            "the lr sets no trend, but SGD keeps lambda_max below the bound, further below "
            "for smaller batches: a rise with batch size at this fixed lr (F-11, F-29) is what "
            "the edge of stability predicts, whatever the minima's generalization"
            if near
            else f"lambda_max stays below {NEAR:.0%} of the bound: the bound does not explain "
            "a trend with batch size here"
        )
        return f"{rule} lr: the bound (2 + 2 beta) / lr is {b_lo:.3g} at every batch size; {at}: {trend}."
    pred = (
        "the large batch's larger lr holds its lambda_max down: the bound predicts F-15's first "
        "part (scaled flatter than fixed lr) and large batches flatter than small ones (its "
        "second part contradicted)"
        if near
        else f"lambda_max stays below {NEAR:.0%} of the bound at every batch size: the bound "
        "does not explain F-15's verdict here"
    )
    return (
        f"{rule} lr: the bound (2 + 2 beta) / lr falls from {b_lo:.3g} at the smallest batch "
        f"size to {b_hi:.3g} at the largest; {at}: {pred}."
    )


def supported_measures(table: pd.DataFrame, fid: str) -> list[str]:
    """The labels of the measures on which finding `fid` is supported."""
    g = table[(table["id"] == fid) & (table["verdict"] == SUPPORTED)]
    return list(g["label"])
