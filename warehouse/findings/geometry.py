"""Findings about the distance travelled in weight space: F-7, F-8, F-9, F-16."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from warehouse import queries as q
from warehouse.findings.core import (
    ANY_BUDGET,
    AT_CONVERGENCE,
    AT_EQUAL_EPOCHS,
    GroupResult,
    Part,
    by_key,
    finding,
    finite,
    group,
    left_out,
)
from warehouse.findings.data import Data
from warehouse.findings.rules import contrast_part, fmt, levels_ok, meeting, rule_pairs, trends

DIST = "dist_from_init"


@finding(
    "F-7",
    "distance",
    AT_CONVERGENCE,
    "Small-batch minimizers lie farther from the initial weights, in every layer.",
    "Trend test (fixed lr, trials at convergence): final distance from init must fall with "
    "batch size, in total and in every layer (per-layer tests counted as 'more tests'; Holm "
    "over all of them; a layer contradicting contradicts).",
)
def f7(d: Data) -> list[GroupResult]:
    layers = d.layers
    layers = by_key(layers[layers["lr_scaling"] == "none"] if not layers.empty else layers)
    out = []
    for r in trends(d.rule("none"), DIST, -1, AT_CONVERGENCE):
        parts = list(r.parts)
        lay = layers.get(r.key)
        if lay is not None:
            lay, _ = meeting(lay, AT_CONVERGENCE)
            for name, gl in lay.groupby("layer", sort=True):
                sub = trends(gl, "layer_dist", -1, AT_CONVERGENCE, name=f"layer {name}: ")
                parts += [replace(p, what="") for s in sub for p in s.parts if p.test is not None]
        out.append(replace(r, parts=tuple(parts)))
    return out


@finding(
    "F-8",
    "distance",
    AT_EQUAL_EPOCHS,
    "Large batches travel less per epoch, and the small/large epoch-distance ratio grows over "
    "training.",
    "Trend test (fixed lr): the mean epoch distance must fall with batch size; and the "
    "smallest/largest batch epoch-distance ratio, paired by seed, must rise from the first to "
    "the last epoch both ran (>= 3 epochs; one-sample t over seeds). Both parts must hold.",
)
def f8(d: Data) -> list[GroupResult]:
    ed = d.epoch_distances
    ed = by_key(ed[ed["lr_scaling"] == "none"] if not ed.empty else ed)
    out = []
    for r in trends(d.rule("none"), "mean_epoch_distance", -1, AT_EQUAL_EPOCHS):
        g = ed.get(r.key, pd.DataFrame(columns=["batch_size"]))
        out.append(replace(r, parts=(*r.parts, _ratio_part(g))))
    return out


def _ratio_part(g: pd.DataFrame) -> Part:
    if g.empty or g["batch_size"].nunique() < 2:
        return Part("ratio: needs 2 batch sizes", note="ratio: needs per-epoch distances")
    s, b = g["batch_size"].min(), g["batch_size"].max()
    per = g.groupby(["batch_size", "seed", "epoch"])["epoch_distance"].mean()
    small, large = per.loc[s], per.loc[b]
    ratio = (small / large.where(large > 0)).dropna()
    rises, first, last = [], [], []
    for _, rs in ratio.groupby(level="seed"):
        rs = rs.droplevel("seed").sort_index()
        if len(rs) >= 3:
            rises.append(float(rs.iloc[-1] - rs.iloc[0]))
            first.append(float(rs.iloc[0]))
            last.append(float(rs.iloc[-1]))
    if not rises:
        return Part("ratio: < 3 common epochs", note="ratio: needs >= 3 epochs per seed")
    what = (
        f"small/large ratio (bs {int(s)}/{int(b)}) first -> last epoch: {fmt(np.mean(first))} "
        f"-> {fmt(np.mean(last))}; rise"
    )
    return contrast_part([rises], [1.0], what)


@finding(
    "F-9",
    "distance",
    ANY_BUDGET,
    "Each update step is smaller for large batches.",
    "Trend test (fixed lr): each trial's median per-step update norm must fall with batch "
    "size (the mean of per-epoch medians when steps were not summarized).",
)
def f9(d: Data) -> list[GroupResult]:
    rows = d.rule("none")
    per = by_key(rows)
    out = []
    for r in trends(rows, "update_norm_median", -1, ANY_BUDGET):
        if per[r.key]["update_norm_from_epochs"].any():
            r = replace(r, note="; ".join(x for x in (r.note, "per-epoch medians") if x))
        out.append(r)
    return out


@finding(
    "F-16",
    "distance",
    AT_CONVERGENCE,
    "With scaled lr, the distance from init of large batches moves closer to that of small "
    "batches.",
    "Trials at convergence, the smallest and largest batch sizes run under both rules: "
    "|largest - smallest| distance from init must be smaller with linear scaling than at "
    "fixed lr (Welch contrast of the four cells, signs of the gaps as observed).",
)
def f16(d: Data) -> list[GroupResult]:
    out = []
    cols = [c for c in q.GROUP if c != "lr_scaling"]
    for name, key, none, lin, note in rule_pairs(d.trials, AT_CONVERGENCE):
        none, lin = finite(levels_ok(none), DIST), finite(levels_ok(lin), DIST)
        sizes = sorted(set(none["batch_size"]) & set(lin["batch_size"]))
        if len(sizes) < 2:
            why = "; ".join(x for x in ("needs >= 2 batch sizes under both rules", note) if x)
            out.append(left_out(name, why, key, cols))
            continue
        s, b = sizes[0], sizes[-1]
        cells = [none[none["batch_size"] == x][DIST] for x in (s, b)]
        cells += [lin[lin["batch_size"] == x][DIST] for x in (s, b)]
        gap0 = cells[1].mean() - cells[0].mean()
        gap1 = cells[3].mean() - cells[2].mean()
        s0, s1 = np.sign(gap0) or 1.0, np.sign(gap1) or 1.0
        what = (
            f"distance-from-init gap bs {int(s)} -> {int(b)}: fixed lr {fmt(gap0, True)}, "
            f"linear scaling {fmt(gap1, True)}; |fixed| - |linear|"
        )
        part = contrast_part(cells, [-s0, s0, s1, -s1], what)
        r = group(name, key, [part], cols)
        out.append(replace(r, note=note) if note else r)
    return out
