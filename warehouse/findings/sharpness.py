"""Findings about sharpness and the loss landscape: F-10, F-11, F-12, F-15, F-29."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd

from warehouse import queries as q
from warehouse.findings.core import (
    AT_CONVERGENCE,
    GroupResult,
    each,
    finding,
    finite,
    group,
    left_out,
)
from warehouse.findings.data import Data
from warehouse.findings.rules import (
    contrast_part,
    fmt,
    levels_ok,
    meeting,
    rule_pairs,
    trend_part,
    trends,
)

LAND = ("experiment", "dataset", "model", "lr_scaling", "lr")


def _keskar(d: Data) -> pd.DataFrame:
    p = d.probes
    return p if p.empty else p[p["probe"] == "keskar_sharpness"]


def _rise(g: pd.DataFrame, at: float) -> float:
    """Mean loss increase at the grid points next to alpha = `at` (one on each side)."""
    a = np.sort(g["alpha"].unique())
    if not np.isclose(a, at).any():
        return math.nan
    i = int(np.argmin(np.abs(a - at)))
    base = g.loc[np.isclose(g["alpha"], at), "loss"].mean()
    nbrs = [a[j] for j in (i - 1, i + 1) if 0 <= j < len(a)]
    return float(np.mean([g.loc[np.isclose(g["alpha"], x), "loss"].mean() - base for x in nbrs]))


def _unconverged_note(df: pd.DataFrame) -> str:
    n = df.loc[~df["converged"], "analysis_id"].nunique()
    return f"left out, not at convergence: {n} analysis(es) with an unconverged end" if n else ""


@finding(
    "F-10",
    "landscapes",
    AT_CONVERGENCE,
    "Interpolating the two minimizers, the loss is flat around the small-batch one and sharp "
    "around the large-batch one.",
    "Per interpolation between two trials at convergence: training-loss rise at the grid "
    "points next to a = 1 (large batch) minus next to a = 0 must be > 0 (one-sample t over "
    "the interpolations).",
)
def f10(d: Data) -> list[GroupResult]:
    df = d.landscape("1d")
    if df.empty:
        return []
    df = df[(df["split"] == "train") & df["batch_size_b"].notna()]
    out = []
    for name, key, g in each(df, LAND):
        note = _unconverged_note(g)
        g = g[g["converged"]]
        diffs, r0s, r1s = [], [], []
        for _, a in g.groupby("analysis_id"):
            ba, bb = a["batch_size_a"].iloc[0], a["batch_size_b"].iloc[0]
            if ba == bb:
                continue
            if ba > bb:  # measure alpha from the small-batch end
                a = a.assign(alpha=1.0 - a["alpha"])
            r0, r1 = _rise(a, 0.0), _rise(a, 1.0)
            if math.isfinite(r0) and math.isfinite(r1):
                diffs.append(r1 - r0)
                r0s.append(r0)
                r1s.append(r1)
        if not diffs:
            why = "; ".join(x for x in ("no interpolation with a = 0 and a = 1", note) if x)
            out.append(left_out(name, why, key, LAND))
            continue
        what = (
            f"loss rise next to the large-batch end {fmt(np.mean(r1s))} vs the small-batch end "
            f"{fmt(np.mean(r0s))} (train, {len(diffs)} interpolation(s)); difference"
        )
        r = group(name, key, [contrast_part([diffs], [1.0], what)], LAND)
        out.append(replace(r, note=note) if note else r)
    return out


@finding(
    "F-11",
    "sharpness",
    AT_CONVERGENCE,
    "Keskar sharpness grows with batch size.",
    "Trend test (fixed lr, per eps, trials at convergence): Keskar sharpness must rise with "
    "batch size.",
)
def f11(d: Data) -> list[GroupResult]:
    ks = _keskar(d)
    out = []
    if ks.empty:
        return out
    for eps, g in ks[ks["lr_scaling"] == "none"].groupby("eps", dropna=False):
        keskar = d.measure_label is None or d.measure_label.startswith("Keskar")
        unit = " %" if keskar else ""  # Keskar sharpness is in percent, the others are not
        for r in trends(g, "value", +1, AT_CONVERGENCE, unit=unit):
            out.append(replace(r, group=f"{r.group} / eps {eps:g}", key=(*r.key, eps)))
    return out


@finding(
    "F-12",
    "landscapes",
    AT_CONVERGENCE,
    "Filter-normalized 2-D loss surfaces are sharper for large batches.",
    "Trend test (>= 2 batch sizes, >= 2 surfaces each, around trials at convergence): the mean "
    "training-loss rise over the surface above its center must rise with batch size.",
)
def f12(d: Data) -> list[GroupResult]:
    df = d.landscape("2d")
    if df.empty:
        return []
    out = []
    for name, key, g in each(df[df["split"] == "train"], LAND):
        note = _unconverged_note(g)
        per = []
        for _, s in g[g["converged"]].groupby("analysis_id"):
            center = s.loc[np.isclose(s["alpha"], 0) & np.isclose(s["beta"], 0), "loss"]
            if not center.empty:
                rise = s["loss"].mean() - center.mean()
                per.append({"batch_size": s["batch_size_a"].iloc[0], "rise": rise})
        if not per:
            why = "; ".join(x for x in ("no surface with its center (0, 0)", note) if x)
            out.append(left_out(name, why, key, LAND))
            continue
        part = trend_part(pd.DataFrame(per), "rise", +1, min_levels=2, name="mean loss rise: ")
        r = group(name, key, [part], LAND)
        out.append(replace(r, note=note) if note else r)
    return out


@finding(
    "F-15",
    "sharpness",
    AT_CONVERGENCE,
    "With scaled lr, large-batch minimizers are flatter, but still sharper than small-batch ones.",
    "Per eps, trials at convergence, the largest batch size run under both rules: Keskar "
    "sharpness at fixed lr minus with linear scaling > 0; and with linear scaling, largest "
    "batch minus smallest > 0 (Welch differences). Both parts must hold.",
)
def f15(d: Data) -> list[GroupResult]:
    ks = _keskar(d)
    out = []
    if ks.empty:
        return out
    cols = [c for c in q.GROUP if c != "lr_scaling"]
    for eps, g in ks.groupby("eps", dropna=False):
        for name, key, none, lin, note in rule_pairs(g, AT_CONVERGENCE):
            name, key = f"{name} / eps {eps:g}", (*key, eps)
            none, lin = finite(levels_ok(none), "value"), finite(levels_ok(lin), "value")
            common = sorted(set(none["batch_size"]) & set(lin["batch_size"]))
            if not common or lin["batch_size"].nunique() < 2:
                why = "; ".join(x for x in ("needs the same batch sizes per rule", note) if x)
                out.append(left_out(name, why, key, cols))
                continue
            b, s = common[-1], lin["batch_size"].min()

            def v(df, bs):
                return df[df["batch_size"] == bs]["value"]

            flatter = contrast_part(
                [v(lin, b), v(none, b)],
                [-1.0, 1.0],
                f"bs {int(b)}: fixed lr {fmt(v(none, b).mean())} vs scaled "
                f"{fmt(v(lin, b).mean())}; fixed - scaled",
            )
            sharper = contrast_part(
                [v(lin, s), v(lin, b)],
                [-1.0, 1.0],
                f"scaled: bs {int(s)} {fmt(v(lin, s).mean())} vs bs {int(b)} "
                f"{fmt(v(lin, b).mean())}; large - small",
            )
            r = group(name, key, [flatter, sharper], cols)
            out.append(replace(r, note=note) if note else r)
    return out


@finding(
    "F-29",
    "sharpness",
    AT_CONVERGENCE,
    "Large batches converge to sharp minima and generalize worse (Keskar et al.).",
    "Trend tests (fixed lr, groups with Hessian probes, trials at convergence): the Hessian's "
    "top eigenvalue and the minimum validation loss must both rise with batch size.",
)
def f29(d: Data) -> list[GroupResult]:
    p = d.probes
    if p.empty:
        return []
    h = p[(p["probe"] == "hessian_top_eig") & (p["lr_scaling"] == "none")]
    loss = {r.key: r for r in trends(d.rule("none"), "best_val_loss", +1, AT_CONVERGENCE)}
    out = []
    measure = d.measure_label or "Hessian top eig"
    for r in trends(h, "value", +1, AT_CONVERGENCE, name=f"{measure} "):
        extra = loss.get(r.key)
        parts = list(r.parts)
        if extra is not None:
            parts += [replace(x, what="min val loss " + x.what) for x in extra.parts]
        out.append(replace(r, parts=tuple(parts)))
    return out


__all__ = ["meeting"]
