"""The building blocks of the findings' tests: which trials meet a finding's comparison, the
trend test and the contrast test on per-trial values, as `core.Part`s."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from warehouse import queries as q
from warehouse import stats
from warehouse.findings.core import AT_CONVERGENCE, GroupResult, Part, each, finite, group, left_out

fmt = stats.fmt


def meeting(g: pd.DataFrame, needs: str) -> tuple[pd.DataFrame, str]:
    """The trials of `g` that meet the comparison `needs`, and a note on the others."""
    if needs != AT_CONVERGENCE or g.empty or "converged" not in g.columns:
        return g, ""
    out = g[~g["converged"]]
    if out.empty:
        return g, ""
    by = []
    for bs, o in out.groupby("batch_size"):
        reasons = ", ".join(sorted(set(o["stop_reason"].fillna("?"))))
        acc = o["final_train_acc"].astype(float)
        acc_txt = f", train acc {fmt(acc.mean())}" if acc.notna().any() else ""
        n = int((g["batch_size"] == bs).sum())
        by.append(f"bs {int(bs)}: {len(o)} of {n} ({reasons}{acc_txt})")
    return g[g["converged"]], "left out, not at convergence: " + ", ".join(by)


def levels_ok(g: pd.DataFrame, x: str = "batch_size") -> pd.DataFrame:
    """The rows of the levels of `x` that have >= MIN_SEEDS seeds (others cannot spread)."""
    n = g.groupby(x)[x].transform("size")
    return g[n >= stats.MIN_SEEDS]


def trend_part(
    g: pd.DataFrame,
    col: str,
    direction: int,
    *,
    x: str = "batch_size",
    min_levels: int = 3,
    unit: str = "",
    name: str = "",
) -> Part:
    """The trend test of `col` against `x` (every trial a point) as a Part."""
    g = finite(g, col)
    if g.empty:
        return Part(f"{name}no finite {col}", note=f"{name}no data")
    xs = "bs" if x == "batch_size" else x
    seeds = g.groupby(x)[x].transform("size")
    thin = sorted(g.loc[seeds < stats.MIN_SEEDS, x].unique())
    g = g[seeds >= stats.MIN_SEEDS]
    thin_note = (
        f"{name}{xs} {', '.join(f'{v:g}' for v in thin)} left out: < {stats.MIN_SEEDS} seeds"
        if thin
        else ""
    )
    n_lv = g[x].nunique()
    if n_lv < min_levels:
        what = "batch sizes" if x == "batch_size" else f"{x} values"
        note = "; ".join(n for n in (f"{name}needs >= {min_levels} {what}", thin_note) if n)
        return Part(f"{name}{n_lv} {what}", note=note)
    t = stats.trend(g[x].to_numpy(float), g[col].to_numpy(float))
    lo, hi = g[x].min(), g[x].max()
    m_lo, m_hi = g.loc[g[x] == lo, col].mean(), g.loc[g[x] == hi, col].mean()
    what = (
        f"{name}rho = {fmt(t.stat, True)}; {xs} {lo:g} -> {hi:g}: {fmt(m_lo)} -> {fmt(m_hi)}"
        f"{unit} (delta {fmt(t.effect, True)})"
    )
    return Part(what, t, direction, note=thin_note)


def trends(
    df: pd.DataFrame,
    col: str,
    direction: int,
    needs: str,
    *,
    cols: Sequence[str] = q.GROUP,
    unit: str = "",
    min_bs: int = 3,
    name: str = "",
) -> list[GroupResult]:
    """The trend test of `col` with batch size in every group of `df`."""
    out = []
    for label, key, g in each(df, cols):
        g, note = meeting(g, needs)
        if g.empty:
            out.append(left_out(label, note, key, cols))
            continue
        part = trend_part(g, col, direction, unit=unit, min_levels=min_bs, name=name)
        out.append(_with_note(group(label, key, [part], cols), note))
    return out


def _with_note(r: GroupResult, note: str) -> GroupResult:
    from dataclasses import replace

    return replace(r, note="; ".join(n for n in (r.note, note) if n)) if note else r


def contrast_part(
    cells: Sequence[Iterable[float]], weights: Sequence[float], what: str, direction: int = +1
) -> Part:
    """The Welch contrast sum_k w_k mean(cell_k) claimed > 0 (direction +1) as a Part."""
    t = stats.contrast([list(c) for c in cells], weights)
    if not math.isfinite(t.effect):
        return Part(what, note="no data")
    return Part(f"{what} = {fmt(t.effect, True)}", t, direction)


def ends(g: pd.DataFrame, col: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The trials of the smallest and of the largest batch size with a finite `col`."""
    g = finite(g, col)
    if g["batch_size"].nunique() < 2:
        return None
    return g[g["batch_size"] == g["batch_size"].min()], g[g["batch_size"] == g["batch_size"].max()]


def gap_text(lo: pd.DataFrame, hi: pd.DataFrame, col: str) -> str:
    return (
        f"bs {int(lo['batch_size'].iloc[0])} -> {int(hi['batch_size'].iloc[0])}: "
        f"{fmt(hi[col].mean() - lo[col].mean(), True)}"
    )


def rule_pairs(df: pd.DataFrame, needs: str):
    """(label, key, fixed-lr rows, linear-scaling rows, note) of settings equal otherwise."""
    cfg = [c for c in q.GROUP if c != "lr_scaling"]
    for label, key, g in each(df, cfg):
        if not {"none", "linear"} <= set(g["lr_scaling"]):
            continue
        g, note = meeting(g, needs)
        yield label, key, g[g["lr_scaling"] == "none"], g[g["lr_scaling"] == "linear"], note


__all__ = [
    "contrast_part",
    "ends",
    "gap_text",
    "left_out",
    "levels_ok",
    "meeting",
    "rule_pairs",
    "trend_part",
    "trends",
]
