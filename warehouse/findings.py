"""Verdicts on the findings (FINDINGS.md, F-n): is each claim supported by the selected data?

For every finding the warehouse can back, `evaluate(con, filters)` computes the statistic
that tests it, per comparable group of trials, and a verdict:

- "supported": the claimed direction holds, beyond the seeds' spread;
- "contradicted": the opposite direction holds, beyond the seeds' spread;
- "not enough data": too few batch sizes / seeds / settings to test, or the effect lies
  within the seeds' spread (more seeds, or a wider batch-size range, would decide it).

A group is one setting (`queries.GROUP`: experiment, dataset, model, batchnorm, optimizer,
lr rule, lr, workers) with its batch sizes. A finding's verdict combines its groups: the
claims are general rules, so one conclusive counter-example contradicts them; a finding is
supported when at least one group supports it and none contradicts it.

The standard trend test (`trend_test`; docs/app.md states every finding's rule):
- needs >= 3 batch sizes (2 for pairwise claims), each with >= 2 seeds (no spread without);
- rho = Spearman correlation of batch size vs the seed mean of the statistic;
- delta = mean(largest batch) - mean(smallest batch), spread = sqrt(std_small^2 +
  std_large^2) (the seeds' sample stds);
- supported if rho has the claimed sign with |rho| >= 0.5 and delta has the claimed sign
  with |delta| > spread; contradicted if both have the opposite sign, same margins.
Comparisons of two numbers (`_vote`) use the same margin: the difference must exceed the
root sum of squares of the seeds' stds behind it.

Pure pandas + numpy on top of `warehouse.queries`: no torch, no Ray, no Streamlit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from warehouse import queries as q

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_ENOUGH = "not enough data"
VERDICTS = (SUPPORTED, CONTRADICTED, NOT_ENOUGH)

MIN_SEEDS = 2  # seeds per batch size: a spread needs at least two
MIN_RHO = 0.5  # |Spearman rho| for a monotone trend
SMALL_GAP = 0.05  # F-18: "small" remaining gap, relative to the smallest batch's loss


@dataclass(frozen=True)
class GroupResult:
    """The test of one finding on one group of trials."""

    group: str
    verdict: str
    statistic: str
    spread: str = ""
    note: str = ""
    key: tuple = field(default=(), compare=False, repr=False)  # the group's column values


@dataclass(frozen=True)
class Verdict:
    """One finding's verdict on the selected data (one row of the Findings table)."""

    id: str
    claim: str
    test: str  # the rule, in words
    verdict: str
    statistic: str  # the deciding group's statistic
    spread: str  # the seeds' spread behind it
    page: str  # url path of the app page that shows the figure
    groups: tuple[GroupResult, ...] = ()

    def as_row(self) -> dict[str, object]:
        return {
            "id": self.id,
            "claim": self.claim,
            "statistic": self.statistic,
            "spread": self.spread,
            "verdict": self.verdict,
            "test": self.test,
            "page": self.page,
            "groups": len(self.groups),
        }


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    test: str
    page: str
    run: Callable[[_Data], list[GroupResult]]


# ---------------------------------------------------------------- statistics
def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant."""
    xr = pd.Series(list(x), dtype=float).rank().to_numpy()
    yr = pd.Series(list(y), dtype=float).rank().to_numpy()
    if len(xr) < 2 or np.std(xr) == 0 or np.std(yr) == 0:
        return math.nan
    return float(np.corrcoef(xr, yr)[0, 1])


def _fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}"


def _sfmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.3g}"


def _pooled(*stds: float) -> float:
    """Root sum of squares of the seeds' stds (NaN if any is unknown)."""
    return math.sqrt(sum(float(s) ** 2 for s in stds))


def _seeds_ok(n: Iterable[int]) -> bool:
    return all(int(v) >= MIN_SEEDS for v in n)


def _vote(effect: float, spread: float, claimed: int = +1) -> str:
    """Supported when `effect` has the claimed sign beyond +-spread, contradicted when the
    opposite sign is, otherwise (or without a spread) not enough data."""
    if not (math.isfinite(effect) and math.isfinite(spread)):
        return NOT_ENOUGH
    sign = 1 if effect > spread else (-1 if effect < -spread else 0)
    return {1: SUPPORTED, -1: CONTRADICTED, 0: NOT_ENOUGH}[sign * claimed]


def trend_test(
    group: str,
    batch_size: Iterable[int],
    mean: Iterable[float],
    std: Iterable[float],
    n: Iterable[int],
    direction: int,
    *,
    min_batch_sizes: int = 3,
    unit: str = "",
) -> GroupResult:
    """The standard rule: does the statistic rise (direction +1) or fall (-1) with batch size,
    beyond the seeds' spread? See the module docstring."""
    d = pd.DataFrame({"b": list(batch_size), "m": list(mean), "s": list(std), "n": list(n)})
    d = d[np.isfinite(d["m"].astype(float))].sort_values("b")
    if d["b"].nunique() < min_batch_sizes:
        return GroupResult(
            group,
            NOT_ENOUGH,
            f"{d['b'].nunique()} batch size(s) measured",
            note=f"needs >= {min_batch_sizes} batch sizes",
        )
    rho = spearman(d["b"], d["m"])
    lo, hi = d.iloc[0], d.iloc[-1]
    delta = float(hi["m"] - lo["m"])
    stat = (
        f"rho = {_sfmt(rho)}; bs {int(lo['b'])} -> {int(hi['b'])}: "
        f"{_fmt(lo['m'])} -> {_fmt(hi['m'])}{unit} (delta {_sfmt(delta)})"
    )
    if not _seeds_ok(d["n"]):
        return GroupResult(group, NOT_ENOUGH, stat, "no spread", f"needs >= {MIN_SEEDS} seeds")
    spread = _pooled(lo["s"], hi["s"])
    sp = f"+-{_fmt(spread)} (seeds' std, n = {int(d['n'].min())}..{int(d['n'].max())})"
    verdict = _vote(delta, spread, direction)
    if not math.isfinite(rho) or direction * rho * (1 if verdict == SUPPORTED else -1) < MIN_RHO:
        verdict = NOT_ENOUGH
    note = "" if verdict != NOT_ENOUGH else "no clear trend beyond the seeds' spread"
    return GroupResult(group, verdict, stat, sp, note)


def all_of(group: str, parts: list[GroupResult], key: tuple = ()) -> GroupResult:
    """A claim with several parts: supported if every part is; contradicted if any is."""
    verdicts = [p.verdict for p in parts]
    if CONTRADICTED in verdicts:
        v = CONTRADICTED
    elif verdicts and all(x == SUPPORTED for x in verdicts):
        v = SUPPORTED
    else:
        v = NOT_ENOUGH

    def join(xs: Iterable[str]) -> str:
        return "; ".join(x for x in xs if x)

    return GroupResult(
        group,
        v,
        join(p.statistic for p in parts),
        join(p.spread for p in parts),
        join(p.note for p in parts),
        key,
    )


def combine(results: list[GroupResult]) -> tuple[str, GroupResult | None]:
    """A finding's verdict over its groups, and the group whose numbers the table shows."""
    for verdict in (CONTRADICTED, SUPPORTED):
        hits = [r for r in results if r.verdict == verdict]
        if hits:
            return verdict, hits[0]
    return NOT_ENOUGH, (results[0] if results else None)


def label(row: dict, cols: Iterable[str] = q.GROUP) -> str:
    """A readable name of a group: 'support / mnist1d / mlp+BN / sgd / fixed lr / lr 0.01'."""
    parts: list[str] = []
    for c in cols:
        if c not in row:
            continue
        v = row[c]
        if c == "batchnorm":
            if bool(v) and parts:
                parts[-1] += "+BN"
        elif c == "lr":
            parts.append(f"lr {v:g}")
        elif c == "lr_scaling":
            parts.append(f"{v} scaling" if v != "none" else "fixed lr")
        elif c == "workers":
            if int(v) != 1:
                parts.append(f"{int(v)} workers")
        else:
            parts.append(str(v))
    return " / ".join(parts)


def _each(
    df: pd.DataFrame, cols: Iterable[str] = q.GROUP
) -> Iterator[tuple[str, tuple, pd.DataFrame]]:
    """(label, key, rows) per group of `cols`."""
    cols = [c for c in cols if c in df.columns]
    if df.empty:
        return
    for key, g in df.groupby(cols, sort=True, dropna=False):
        yield label(dict(zip(cols, key, strict=True)), cols), tuple(key), g


# ---------------------------------------------------------------- data access
class _Data:
    """The selection's named-query results, each computed once."""

    def __init__(self, con: duckdb.DuckDBPyConnection, f: q.Filters):
        self.con, self.f, self._cache = con, f, {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            self._cache[name] = q.NAMED_QUERIES[name](self.con, self.f)
        return self._cache[name]

    def rule(self, name: str, lr_scaling: str = "none") -> pd.DataFrame:
        df = self[name]
        return df if df.empty else df[df["lr_scaling"] == lr_scaling]


def _trends(
    df: pd.DataFrame, stat: str, direction: int, *, cols=q.GROUP, unit: str = "", min_bs: int = 3
) -> list[GroupResult]:
    """The trend test on `<stat>_mean/_std` for every group of `df`."""
    return [
        dataclasses.replace(
            trend_test(
                name,
                g["batch_size"],
                g[f"{stat}_mean"],
                g[f"{stat}_std"],
                g["n_seeds"],
                direction,
                unit=unit,
                min_batch_sizes=min_bs,
            ),
            key=key,
        )
        for name, key, g in _each(df, cols)
    ]


def _ends(g: pd.DataFrame, stat: str) -> tuple[pd.Series, pd.Series] | None:
    """The smallest and largest batch sizes' rows with a finite `<stat>_mean`."""
    g = g[np.isfinite(g[f"{stat}_mean"].astype(float))].sort_values("batch_size")
    return None if g["batch_size"].nunique() < 2 else (g.iloc[0], g.iloc[-1])


def _gap(g: pd.DataFrame, stat: str) -> tuple[float, float, str] | None:
    """mean(largest bs) - mean(smallest bs), its spread (NaN with < 2 seeds), a description."""
    ends = _ends(g, stat)
    if ends is None:
        return None
    lo, hi = ends
    gap = float(hi[f"{stat}_mean"] - lo[f"{stat}_mean"])
    sd = _pooled(lo[f"{stat}_std"], hi[f"{stat}_std"])
    sd = sd if _seeds_ok([lo["n_seeds"], hi["n_seeds"]]) else math.nan
    return gap, sd, f"bs {int(lo['batch_size'])} -> {int(hi['batch_size'])}: {_sfmt(gap)}"


def _rule_pairs(df: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(label, fixed-lr rows, linear-scaling rows) of settings equal otherwise."""
    cfg = [c for c in q.GROUP if c != "lr_scaling"]
    for name, _, g in _each(df, cfg):
        none, lin = g[g["lr_scaling"] == "none"], g[g["lr_scaling"] == "linear"]
        if not none.empty and not lin.empty:
            yield name, none, lin


_REGISTRY: list[Finding] = []


def finding(id: str, page: str, claim: str, test: str):
    """Register a finding's test (in FINDINGS.md order)."""

    def register(fn: Callable[[_Data], list[GroupResult]]):
        _REGISTRY.append(Finding(id, claim, test, page, fn))
        return fn

    return register


# ---------------------------------------------------------------- the findings
@finding(
    "F-1",
    "curves",
    "The larger the batch, the slower the training loss falls per epoch.",
    "Trend test (fixed lr): training loss after the same number of epochs must rise with "
    "batch size.",
)
def _f1(d: _Data) -> list[GroupResult]:
    return _trends(d.rule("train_loss_at_common_epoch"), "train_loss", +1)


@finding(
    "F-2",
    "generalization",
    "The larger the batch, the higher the minimum validation loss.",
    "Trend test (fixed lr, no BatchNorm): minimum validation loss must rise with batch size.",
)
def _f2(d: _Data) -> list[GroupResult]:
    df = d.rule("generalization_by_batch_size")
    return _trends(df if df.empty else df[~df["batchnorm"]], "min_val_loss", +1)


@finding(
    "F-3",
    "time",
    "The larger the batch, the less time per epoch.",
    "Trend test (every lr rule): mean training seconds per epoch must fall with batch size.",
)
def _f3(d: _Data) -> list[GroupResult]:
    return _trends(d["time_by_batch_size"], "epoch_time_s", -1, unit=" s")


@finding(
    "F-4",
    "time",
    "The larger the batch, the more epochs to reach the minimum validation loss.",
    "Trend test (fixed lr): epochs to the minimum validation loss must rise with batch size.",
)
def _f4(d: _Data) -> list[GroupResult]:
    return _trends(d.rule("time_by_batch_size"), "epochs_to_min", +1, unit=" epochs")


@finding(
    "F-5",
    "time",
    "At a fixed lr, large batches take longer in total.",
    "Trend test (fixed lr): training time to the minimum validation loss must rise with "
    "batch size.",
)
def _f5(d: _Data) -> list[GroupResult]:
    return _trends(d.rule("time_by_batch_size"), "time_to_min_s", +1, unit=" s")


@finding(
    "F-6",
    "time",
    "Data parallelism makes per-epoch time of small batches slightly worse and of large "
    "batches much better.",
    "Speedup = 1-worker / multi-worker time per epoch; the largest batch's speedup minus the "
    "smallest's must be > 0 beyond the spread (>= 2 batch sizes on both worker counts).",
)
def _f6(d: _Data) -> list[GroupResult]:
    df = d["time_by_workers"]
    if df.empty:
        return []
    out = []
    cols = [c for c in q.GROUP if c != "workers"] + ["workers"]
    for name, _, g in _each(df[df["workers"] > 1], cols):
        g = g[np.isfinite(g["speedup"].astype(float))].sort_values("batch_size")
        if g["batch_size"].nunique() < 2:
            out.append(GroupResult(name, NOT_ENOUGH, "speedup known for < 2 batch sizes"))
            continue
        lo, hi = g.iloc[0], g.iloc[-1]
        stat = (
            f"speedup on {int(lo['workers'])} workers: bs {int(lo['batch_size'])} "
            f"x{_fmt(lo['speedup'])}, bs {int(hi['batch_size'])} x{_fmt(hi['speedup'])}"
        )
        if not _seeds_ok([lo["n_seeds"], hi["n_seeds"]]):
            out.append(GroupResult(name, NOT_ENOUGH, stat, "no spread", "needs >= 2 seeds"))
            continue

        def sd(r: pd.Series) -> float:  # relative errors of a ratio add in quadrature
            return r["speedup"] * _pooled(
                r["epoch_time_1_worker_s_std"] / r["epoch_time_1_worker_s_mean"],
                r["epoch_time_s_std"] / r["epoch_time_s_mean"],
            )

        spread = _pooled(sd(lo), sd(hi))
        v = _vote(float(hi["speedup"] - lo["speedup"]), spread)
        out.append(GroupResult(name, v, stat, f"+-{_fmt(spread)}"))
    return out


@finding(
    "F-7",
    "distance",
    "Small-batch minimizers lie farther from the initial weights, in every layer.",
    "Trend test (fixed lr): final distance from init must fall with batch size, in total and "
    "in every layer (any layer contradicting contradicts).",
)
def _f7(d: _Data) -> list[GroupResult]:
    per_layer: dict[tuple, list[GroupResult]] = {}
    for r in _trends(d.rule("distance_by_layer"), "dist_from_init", -1, cols=[*q.GROUP, "layer"]):
        per_layer.setdefault(r.key[:-1], []).append(r)
    out = []
    for res in _trends(d.rule("distance_by_batch_size"), "dist_from_init", -1):
        layers = per_layer.get(res.key, [])
        merged = all_of(res.group, [res, *layers])
        stat = res.statistic
        if layers:
            n_sup = sum(r.verdict == SUPPORTED for r in layers)
            n_con = sum(r.verdict == CONTRADICTED for r in layers)
            stat += f"; layers: {n_sup} of {len(layers)} agree, {n_con} contradict"
        out.append(GroupResult(res.group, merged.verdict, stat, res.spread, res.note, res.key))
    return out


@finding(
    "F-8",
    "distance",
    "Large batches travel less per epoch, and the small/large epoch-distance ratio grows over "
    "training.",
    "Trend test (fixed lr): the mean epoch distance must fall with batch size; and the "
    "smallest/largest batch ratio must rise over >= 3 epochs (Spearman >= 0.5, last minus first "
    "epoch beyond the seed-paired spread).",
)
def _f8(d: _Data) -> list[GroupResult]:
    ratios = {key: g for _, key, g in _each(d.rule("epoch_distance_ratio"))}
    out = []
    for res in _trends(d.rule("distance_by_batch_size"), "mean_epoch_distance", -1):
        parts = [res]
        g = ratios.get(res.key)
        if g is not None:
            g = g[np.isfinite(g["ratio_seed_mean"].astype(float))].sort_values("epoch")
            if len(g) < 3 or (g["n_pairs"] < MIN_SEEDS).any():
                parts.append(GroupResult(res.group, NOT_ENOUGH, "ratio: < 3 epochs or < 2 seeds"))
            else:
                rho = spearman(g["epoch"], g["ratio_seed_mean"])
                first, last = g.iloc[0], g.iloc[-1]
                spread = _pooled(first["ratio_seed_std"], last["ratio_seed_std"])
                v = _vote(float(last["ratio_seed_mean"] - first["ratio_seed_mean"]), spread)
                if not math.isfinite(rho) or abs(rho) < MIN_RHO or (rho > 0) != (v == SUPPORTED):
                    v = NOT_ENOUGH
                stat = (
                    f"small/large ratio (bs {int(first['small_batch_size'])}/"
                    f"{int(first['large_batch_size'])}) epoch {int(first['epoch'])} -> "
                    f"{int(last['epoch'])}: {_fmt(first['ratio_seed_mean'])} -> "
                    f"{_fmt(last['ratio_seed_mean'])} (rho {_sfmt(rho)})"
                )
                parts.append(GroupResult(res.group, v, stat, f"ratio +-{_fmt(spread)}"))
        out.append(all_of(res.group, parts, res.key))
    return out


@finding(
    "F-9",
    "distance",
    "Each update step is smaller for large batches.",
    "Trend test (fixed lr): the median per-step update norm must fall with batch size (per-step "
    "rows; per-epoch medians when steps were not stored).",
)
def _f9(d: _Data) -> list[GroupResult]:
    steps = d.rule("update_norm_quantiles")
    if not steps.empty:
        return _trends(steps, "update_norm_median", -1)
    ep = d.rule("update_norms_by_epoch")
    if ep.empty:
        return []
    # Per-epoch medians only: the mean over epochs of the seed mean and of the seed std.
    per = (
        ep.groupby(list(q.KEY), dropna=False)
        .agg(
            update_norm_median_mean=("update_norm_median_mean", "mean"),
            update_norm_median_std=("update_norm_median_std", "mean"),
            n_seeds=("n_seeds", "min"),
        )
        .reset_index()
    )
    return [
        dataclasses.replace(r, statistic=r.statistic + " (per-epoch medians)")
        for r in _trends(per, "update_norm_median", -1)
    ]


_LAND = ("experiment", "dataset", "model", "lr_scaling", "lr")


def _rise(g: pd.DataFrame, at: float) -> float:
    """Mean loss increase at the grid points next to alpha = `at` (one on each side)."""
    a = np.sort(g["alpha"].unique())
    if not np.isclose(a, at).any():
        return math.nan
    i = int(np.argmin(np.abs(a - at)))
    base = g.loc[np.isclose(g["alpha"], at), "loss"].mean()
    nbrs = [a[j] for j in (i - 1, i + 1) if 0 <= j < len(a)]
    return float(np.mean([g.loc[np.isclose(g["alpha"], x), "loss"].mean() - base for x in nbrs]))


@finding(
    "F-10",
    "landscapes",
    "Interpolating the two minimizers, the loss is flat around the small-batch one and sharp "
    "around the large-batch one.",
    "Training-loss rise at the grid points next to a = 1 (large batch) minus next to a = 0 "
    "must be > 0 beyond its spread over >= 2 interpolations.",
)
def _f10(d: _Data) -> list[GroupResult]:
    df = d["landscape_1d"]
    if df.empty:
        return []
    df = df[(df["split"] == "train") & df["batch_size_b"].notna()]
    out = []
    for name, _, g in _each(df, _LAND):
        r0s, r1s = [], []
        for _, a in g.groupby("analysis_id"):
            ba, bb = a["batch_size_a"].iloc[0], a["batch_size_b"].iloc[0]
            if ba == bb:
                continue
            if ba > bb:  # measure alpha from the small-batch end
                a = a.assign(alpha=1.0 - a["alpha"])
            r0, r1 = _rise(a, 0.0), _rise(a, 1.0)
            if math.isfinite(r0) and math.isfinite(r1):
                r0s.append(r0)
                r1s.append(r1)
        if not r0s:
            out.append(GroupResult(name, NOT_ENOUGH, "no interpolation with a = 0 and a = 1"))
            continue
        diffs = np.array(r1s) - np.array(r0s)
        stat = (
            f"loss rise next to the large-batch end {_fmt(np.mean(r1s))} vs the small-batch end "
            f"{_fmt(np.mean(r0s))} (train, {len(diffs)} interpolation(s))"
        )
        if len(diffs) < MIN_SEEDS:
            out.append(
                GroupResult(name, NOT_ENOUGH, stat, "no spread", "needs >= 2 interpolations")
            )
            continue
        sd = float(np.std(diffs, ddof=1))
        out.append(GroupResult(name, _vote(float(diffs.mean()), sd), stat, f"+-{_fmt(sd)}"))
    return out


@finding(
    "F-11",
    "sharpness",
    "Keskar sharpness grows with batch size.",
    "Trend test (fixed lr, per eps): Keskar sharpness must rise with batch size.",
)
def _f11(d: _Data) -> list[GroupResult]:
    df = d.rule("sharpness_by_batch_size")
    out = []
    for eps, g in df[df["probe"] == "keskar_sharpness"].groupby("eps", dropna=False):
        for r in _trends(g, "value", +1, unit=" %"):
            out.append(dataclasses.replace(r, group=f"{r.group} / eps {eps:g}"))
    return out


@finding(
    "F-12",
    "landscapes",
    "Filter-normalized 2-D loss surfaces are sharper for large batches.",
    "Trend test (>= 2 batch sizes, >= 2 surfaces each): the mean training-loss rise over the "
    "surface above its center must rise with batch size.",
)
def _f12(d: _Data) -> list[GroupResult]:
    df = d["landscape_2d"]
    if df.empty:
        return []
    out = []
    for name, _, g in _each(df[df["split"] == "train"], _LAND):
        per = []
        for _, s in g.groupby("analysis_id"):
            center = s.loc[np.isclose(s["alpha"], 0) & np.isclose(s["beta"], 0), "loss"]
            if not center.empty:
                rise = s["loss"].mean() - center.mean()
                per.append({"batch_size": s["batch_size_a"].iloc[0], "rise": rise})
        if not per:
            out.append(GroupResult(name, NOT_ENOUGH, "no surface with its center (0, 0)"))
            continue
        p = pd.DataFrame(per).groupby("batch_size")["rise"].agg(["mean", "std", "count"])
        r = trend_test(name, p.index, p["mean"], p["std"], p["count"], +1, min_batch_sizes=2)
        out.append(dataclasses.replace(r, statistic="mean loss rise: " + r.statistic))
    return out


@finding(
    "F-13",
    "lr_batch",
    "Linear lr scaling removes most of the generalization gap.",
    "Given a gap at fixed lr (largest minus smallest batch's minimum validation loss, beyond "
    "the spread), the gap under linear scaling must be below half of it, beyond the spread.",
)
def _f13(d: _Data) -> list[GroupResult]:
    out = []
    for name, none, lin in _rule_pairs(d["generalization_by_batch_size"]):
        g0, g1 = _gap(none, "min_val_loss"), _gap(lin, "min_val_loss")
        if g0 is None or g1 is None:
            out.append(GroupResult(name, NOT_ENOUGH, "needs >= 2 batch sizes under both rules"))
            continue
        (gap0, sd0, d0), (gap1, sd1, d1) = g0, g1
        stat = f"min val loss gap, fixed lr {d0}; linear scaling {d1}"
        sp = f"gaps +-{_fmt(sd0)} / +-{_fmt(sd1)}"
        if _vote(gap0, sd0) != SUPPORTED:
            out.append(GroupResult(name, NOT_ENOUGH, stat, sp, "no gap at fixed lr to remove"))
            continue
        out.append(GroupResult(name, _vote(gap0 / 2 - gap1, _pooled(sd0 / 2, sd1)), stat, sp))
    return out


@finding(
    "F-14",
    "time",
    "With scaled lr, large batches reach the minimum in less total time.",
    "Linear scaling: the largest batch's time to the minimum validation loss minus the "
    "smallest's must be < 0 beyond the spread.",
)
def _f14(d: _Data) -> list[GroupResult]:
    out = []
    for name, _, g in _each(d.rule("time_by_batch_size", "linear")):
        gp = _gap(g, "time_to_min_s")
        if gp is None:
            out.append(GroupResult(name, NOT_ENOUGH, "needs >= 2 batch sizes"))
            continue
        gap, sd, desc = gp
        lo, hi = _ends(g, "time_to_min_s")
        stat = (
            f"time to min val loss {desc} s (epochs {_fmt(lo['epochs_to_min_mean'])} -> "
            f"{_fmt(hi['epochs_to_min_mean'])})"
        )
        out.append(GroupResult(name, _vote(gap, sd, -1), stat, f"+-{_fmt(sd)} s"))
    return out


@finding(
    "F-15",
    "sharpness",
    "With scaled lr, large-batch minimizers are flatter, but still sharper than small-batch ones.",
    "Per eps, at the largest batch: Keskar sharpness with linear scaling < at fixed lr; and "
    "with linear scaling, largest batch > smallest; both beyond the spread.",
)
def _f15(d: _Data) -> list[GroupResult]:
    df = d["sharpness_by_batch_size"]
    out = []
    for eps, ks in df[df["probe"] == "keskar_sharpness"].groupby("eps", dropna=False):
        for name, none, lin in _rule_pairs(ks):
            name = f"{name} / eps {eps:g}"
            en, el = _ends(none, "value"), _ends(lin, "value")
            if en is None or el is None or en[1]["batch_size"] != el[1]["batch_size"]:
                out.append(GroupResult(name, NOT_ENOUGH, "needs the same batch sizes per rule"))
                continue
            big0, (small1, big1) = en[1], el
            if not _seeds_ok([big0["n_seeds"], small1["n_seeds"], big1["n_seeds"]]):
                out.append(GroupResult(name, NOT_ENOUGH, "needs >= 2 seeds"))
                continue
            sd1 = _pooled(big0["value_std"], big1["value_std"])
            sd2 = _pooled(big1["value_std"], small1["value_std"])
            b, s = int(big1["batch_size"]), int(small1["batch_size"])
            flatter = GroupResult(
                name,
                _vote(float(big0["value_mean"] - big1["value_mean"]), sd1),
                f"bs {b}: fixed lr {_fmt(big0['value_mean'])} vs scaled {_fmt(big1['value_mean'])}",
                f"+-{_fmt(sd1)}",
            )
            sharper = GroupResult(
                name,
                _vote(float(big1["value_mean"] - small1["value_mean"]), sd2),
                f"scaled: bs {s} {_fmt(small1['value_mean'])} vs bs {b} {_fmt(big1['value_mean'])}",
                f"+-{_fmt(sd2)}",
            )
            out.append(all_of(name, [flatter, sharper]))
    return out


@finding(
    "F-16",
    "distance",
    "With scaled lr, the distance from init of large batches moves closer to that of small "
    "batches.",
    "|largest - smallest batch| distance from init with linear scaling must be smaller than "
    "at fixed lr, beyond the spread.",
)
def _f16(d: _Data) -> list[GroupResult]:
    out = []
    for name, none, lin in _rule_pairs(d["distance_by_batch_size"]):
        g0, g1 = _gap(none, "dist_from_init"), _gap(lin, "dist_from_init")
        if g0 is None or g1 is None:
            out.append(GroupResult(name, NOT_ENOUGH, "needs >= 2 batch sizes under both rules"))
            continue
        (gap0, sd0, d0), (gap1, sd1, d1) = g0, g1
        stat = f"distance-from-init gap, fixed lr {d0}; linear scaling {d1}"
        sd = _pooled(sd0, sd1)
        out.append(GroupResult(name, _vote(abs(gap0) - abs(gap1), sd), stat, f"+-{_fmt(sd)}"))
    return out


@finding(
    "F-17",
    "lr_batch",
    "Small batches want a small lr, large batches a large lr.",
    "Fixed lr rule, >= 2 batch sizes with >= 2 lrs: the largest batch's best lr must exceed the "
    "smallest batch's, and beat it at the largest batch beyond the spread (Spearman of best "
    "lr vs batch size >= 0.5 with >= 3 batch sizes).",
)
def _f17(d: _Data) -> list[GroupResult]:
    out = []
    for name, _, g in _each(d.rule("lr_batch_table"), [c for c in q.GROUP if c != "lr"]):
        g = g[np.isfinite(g["min_val_loss_mean"].astype(float))]
        n_lrs = g.groupby("batch_size")["lr"].nunique()
        sizes = sorted(n_lrs[n_lrs >= 2].index)
        if len(sizes) < 2:
            out.append(GroupResult(name, NOT_ENOUGH, "needs >= 2 batch sizes with >= 2 lrs each"))
            continue
        g = g[g["batch_size"].isin(sizes)]
        best = g[g["is_best_lr"]].set_index("batch_size")["lr"]
        b_s, b_l = sizes[0], sizes[-1]
        l_s, l_l = float(best[b_s]), float(best[b_l])
        rho = spearman(best.index, best.values) if len(sizes) >= 3 else math.nan
        stat = f"best lr: bs {b_s} -> {l_s:g}, bs {b_l} -> {l_l:g}"
        stat += f" (rho {_sfmt(rho)})" if len(sizes) >= 3 else ""
        if l_s == l_l:
            out.append(GroupResult(name, NOT_ENOUGH, stat, "", "same best lr at both ends"))
            continue
        at = g[g["batch_size"] == b_l].set_index("lr")
        if not _seeds_ok(at.loc[[l_s, l_l], "n_seeds"]):
            out.append(GroupResult(name, NOT_ENOUGH, stat, "no spread", "needs >= 2 seeds"))
            continue
        # At the largest batch size: how much better is its own best lr than the small one's?
        adv = float(at.loc[l_s, "min_val_loss_mean"] - at.loc[l_l, "min_val_loss_mean"])
        sd = _pooled(at.loc[l_s, "min_val_loss_std"], at.loc[l_l, "min_val_loss_std"])
        sp = f"bs {b_l}: loss at lr {l_s:g} minus at lr {l_l:g} = {_sfmt(adv)} +-{_fmt(sd)}"
        clear = adv > sd and not (math.isfinite(rho) and abs(rho) < MIN_RHO)
        v = (SUPPORTED if l_l > l_s else CONTRADICTED) if clear else NOT_ENOUGH
        out.append(GroupResult(name, v, stat, sp, "" if clear else "best lr within the spread"))
    return out


@finding(
    "F-18",
    "generalization",
    "With a tuned lr the remaining gap is small.",
    f"Best minimum validation loss over lrs and lr rules per batch size (>= 2 settings): "
    f"largest minus smallest batch must stay below {SMALL_GAP:.0%} of the smallest's, beyond "
    "the spread (contradicted: above it beyond the spread).",
)
def _f18(d: _Data) -> list[GroupResult]:
    out = []
    cols = [c for c in q.GROUP if c not in ("lr", "lr_scaling")]
    for name, _, g in _each(d["lr_batch_table"], cols):
        g = g[np.isfinite(g["min_val_loss_mean"].astype(float))]
        if g.groupby(["lr", "lr_scaling"]).ngroups < 2:
            out.append(GroupResult(name, NOT_ENOUGH, "needs >= 2 lr settings to tune over"))
            continue
        tuned = g.loc[g.groupby("batch_size")["min_val_loss_mean"].idxmin()]
        gp = _gap(tuned, "min_val_loss")
        if gp is None:
            out.append(GroupResult(name, NOT_ENOUGH, "needs >= 2 batch sizes"))
            continue
        gap, sd, desc = gp
        base = float(tuned.sort_values("batch_size")["min_val_loss_mean"].iloc[0])
        stat = (
            f"tuned min val loss gap {desc} ({_sfmt(100 * gap / base)} %, small < {SMALL_GAP:.0%})"
        )
        out.append(GroupResult(name, _vote(SMALL_GAP * base - gap, sd), stat, f"+-{_fmt(sd)}"))
    return out


@finding(
    "F-25",
    "lr_batch",
    "Divergence (NaN loss) comes from too large an lr, and is recorded with its step.",
    "Fraction of diverged trials vs lr (>= 3 lrs, >= 1 divergence): Spearman >= 0.5 supports, "
    "<= -0.5 contradicts.",
)
def _f25(d: _Data) -> list[GroupResult]:
    out = []
    for name, _, g in _each(d["divergence_by_lr"], [c for c in q.GROUP if c != "lr"]):
        per = g.groupby("lr")[["n_diverged", "n_trials"]].sum().reset_index()
        stat = "diverged " + ", ".join(
            f"lr {r.lr:g}: {int(r.n_diverged)}/{int(r.n_trials)}" for r in per.itertuples()
        )
        if len(per) < 3 or per["n_diverged"].sum() == 0:
            out.append(GroupResult(name, NOT_ENOUGH, stat, "", "needs >= 3 lrs, >= 1 diverged"))
            continue
        rho = spearman(per["lr"], per["n_diverged"] / per["n_trials"])
        v = SUPPORTED if rho >= MIN_RHO else (CONTRADICTED if rho <= -MIN_RHO else NOT_ENOUGH)
        n = per["n_trials"]
        sp = f"fractions of {int(n.min())}..{int(n.max())} trials per lr"
        out.append(GroupResult(name, v, f"{stat} (rho {_sfmt(rho)})", sp))
    return out


@finding(
    "F-27",
    "generalization",
    "Without BatchNorm, moderate batches generalize best; too large a batch converges to worse "
    "minima.",
    "Fixed lr, no BatchNorm, >= 3 batch sizes: the lowest minimum validation loss at an interior "
    "batch size with both ends worse beyond the spread (contradicted: an end beats every "
    "interior one beyond the spread).",
)
def _f27(d: _Data) -> list[GroupResult]:
    df = d.rule("generalization_by_batch_size")
    out = []
    for name, _, g in _each(df if df.empty else df[~df["batchnorm"]]):
        g = g[np.isfinite(g["min_val_loss_mean"].astype(float))].sort_values("batch_size")
        g = g.reset_index(drop=True)
        if len(g) < 3:
            out.append(GroupResult(name, NOT_ENOUGH, f"{len(g)} batch size(s)", "", "needs >= 3"))
            continue
        i = int(g["min_val_loss_mean"].idxmin())
        best = g.iloc[i]
        sizes = [int(b) for b in g["batch_size"]]
        stat = f"lowest min val loss at bs {int(best['batch_size'])} of {sizes}"
        if not _seeds_ok(g["n_seeds"]):
            out.append(GroupResult(name, NOT_ENOUGH, stat, "no spread", "needs >= 2 seeds"))
            continue

        def margin(r: pd.Series, best: pd.Series = best) -> tuple[str, str]:
            """'bs 32 +0.01 +-0.0006', and the verdict of 'r is worse than the best'."""
            diff = float(r["min_val_loss_mean"] - best["min_val_loss_mean"])
            sd = _pooled(r["min_val_loss_std"], best["min_val_loss_std"])
            return f"bs {int(r['batch_size'])} {_sfmt(diff)} +-{_fmt(sd)}", _vote(diff, sd)

        if 0 < i < len(g) - 1:
            (t0, v0), (t1, v1) = margin(g.iloc[0]), margin(g.iloc[-1])
            v = SUPPORTED if v0 == v1 == SUPPORTED else NOT_ENOUGH
            out.append(GroupResult(name, v, stat + " (interior)", f"ends: {t0}, {t1}"))
        else:
            inner = g.iloc[1:-1]
            t, vi = margin(inner.loc[inner["min_val_loss_mean"].idxmin()])
            v = CONTRADICTED if vi == SUPPORTED else NOT_ENOUGH
            out.append(GroupResult(name, v, stat + " (an end)", f"best interior: {t}"))
    return out


@finding(
    "F-28",
    "generalization",
    "With BatchNorm, larger batches are better.",
    "Trend test (fixed lr, BatchNorm): minimum validation loss must fall with batch size.",
)
def _f28(d: _Data) -> list[GroupResult]:
    df = d.rule("generalization_by_batch_size")
    return _trends(df if df.empty else df[df["batchnorm"]], "min_val_loss", -1)


@finding(
    "F-29",
    "sharpness",
    "Large batches converge to sharp minima and generalize worse (Keskar et al.).",
    "Trend tests (fixed lr, groups with Hessian probes): the Hessian's top eigenvalue and the "
    "minimum validation loss must both rise with batch size.",
)
def _f29(d: _Data) -> list[GroupResult]:
    sh = d.rule("sharpness_by_batch_size")
    loss = {r.key: r for r in _trends(d.rule("generalization_by_batch_size"), "min_val_loss", +1)}
    out = []
    for h in _trends(sh[sh["probe"] == "hessian_top_eig"], "value", +1):
        parts = [dataclasses.replace(h, statistic="Hessian top eig " + h.statistic)]
        if h.key in loss:
            parts.append(
                dataclasses.replace(loss[h.key], statistic="min val loss " + loss[h.key].statistic)
            )
        out.append(all_of(h.group, parts, h.key))
    return out


FINDINGS: tuple[Finding, ...] = tuple(_REGISTRY)

# Findings the warehouse does not judge, and why (the app lists them under the table).
NOT_JUDGED: dict[str, tuple[str, str]] = {
    "F-19": ("a time-optimal and an accuracy-optimal batch size", "an existence claim"),
    "F-20": ("full batch stalls, batch size 1 is noisy", "qualitative"),
    "F-21": ("multiples of 8 are fastest on GPU", "needs non-multiples of 8 on a GPU"),
    "F-22": ("scrape losses from logs", "the warehouse replaces it"),
    "F-23": ("try lrs on a decade grid", "advice; see the lr x batch size page"),
    "F-24": ("step decay on plateau", "a technique (plateau_decay), not a claim"),
    "F-26": ("compare train and validation loss", "advice; see the Generalization gap page"),
    "F-30": ("epochs, iterations, examples", "definitions; the Curves page draws every x axis"),
    "F-31": ("LeNet/Adam/MNIST: bs 64 fastest, bs 32 best", "specific to that setup; see Curves"),
}


def evaluate(con: duckdb.DuckDBPyConnection, f: q.Filters) -> list[Verdict]:
    """Every judged finding's verdict on the trials `f` selects."""
    data = _Data(con, f)
    out = []
    for fd in FINDINGS:
        results = fd.run(data)
        verdict, shown = combine(results)
        statistic, spread = "no data for this test in the selection", ""
        if shown is not None:
            statistic = f"{shown.statistic} [{shown.group}]"
            statistic += f" ({shown.note})" if shown.note else ""
            if len(results) > 1:
                counts = [(sum(r.verdict == v for r in results), v) for v in VERDICTS]
                statistic += "; groups: " + ", ".join(f"{n} {v}" for n, v in counts if n)
            spread = shown.spread
        out.append(
            Verdict(fd.id, fd.claim, fd.test, verdict, statistic, spread, fd.page, tuple(results))
        )
    return out


def findings_table(con: duckdb.DuckDBPyConnection, f: q.Filters) -> pd.DataFrame:
    """`evaluate` as a table: id, claim, statistic, spread, verdict, test, page, groups."""
    return pd.DataFrame([v.as_row() for v in evaluate(con, f)])


def group_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """Every group's result of every finding: the detail behind the table."""
    cols = ["id", "group", "verdict", "statistic", "spread", "note"]
    rows = [
        [v.id, r.group, r.verdict, r.statistic, r.spread, r.note]
        for v in verdicts
        for r in v.groups
    ]
    return pd.DataFrame(rows, columns=cols)
