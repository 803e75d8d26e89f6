"""Findings about generalization and the lr: F-2, F-13, F-17, F-18, F-25, F-27, F-28."""

from __future__ import annotations

from dataclasses import replace

from warehouse import queries as q
from warehouse.findings.core import (
    ANY_BUDGET,
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

SMALL_GAP = 0.05  # F-18: "small" remaining gap, relative to the smallest batch's loss
LOSS = "best_val_loss"  # the trial's minimum validation loss


def _bn(df, batchnorm: bool):
    return df if df.empty else df[df["batchnorm"] == batchnorm]


@finding(
    "F-2",
    "generalization",
    AT_CONVERGENCE,
    "The larger the batch, the higher the minimum validation loss.",
    "Trend test (fixed lr, no BatchNorm, trials at convergence): minimum validation loss must "
    "rise with batch size.",
)
def f2(d: Data) -> list[GroupResult]:
    return trends(_bn(d.rule("none"), False), LOSS, +1, AT_CONVERGENCE)


@finding(
    "F-13",
    "lr_batch",
    AT_CONVERGENCE,
    "Linear lr scaling removes most of the generalization gap.",
    "Given a gap at fixed lr (minimum validation loss rising with batch size: trend test, the "
    "precondition), the gap under linear scaling must be below half of it: Welch contrast "
    "gap_fixed / 2 - gap_linear > 0 between the smallest and largest batch size run under "
    "both rules (trials at convergence).",
)
def f13(d: Data) -> list[GroupResult]:
    out = []
    for name, key, none, lin, note in rule_pairs(d.trials, AT_CONVERGENCE):
        cols = [c for c in q.GROUP if c != "lr_scaling"]
        none, lin = finite(levels_ok(none), LOSS), finite(levels_ok(lin), LOSS)
        sizes = sorted(set(none["batch_size"]) & set(lin["batch_size"]))
        if len(sizes) < 2:
            out.append(
                left_out(name, _join("needs >= 2 batch sizes under both rules", note), key, cols)
            )
            continue
        s, b = sizes[0], sizes[-1]
        pre = replace(
            trend_part(none, LOSS, +1, min_levels=2, name="fixed-lr gap: "), precondition=True
        )
        cells = [none[none["batch_size"] == s][LOSS], none[none["batch_size"] == b][LOSS]]
        cells += [lin[lin["batch_size"] == s][LOSS], lin[lin["batch_size"] == b][LOSS]]
        gap0 = cells[1].mean() - cells[0].mean()
        gap1 = cells[3].mean() - cells[2].mean()
        what = (
            f"bs {int(s)} -> {int(b)} gap: fixed lr {fmt(gap0, True)}, linear scaling "
            f"{fmt(gap1, True)}; gap_fixed/2 - gap_linear"
        )
        part = contrast_part(cells, [-0.5, 0.5, 1.0, -1.0], what)
        out.append(_note(group(name, key, [pre, part], cols), note))
    return out


def _join(*xs: str) -> str:
    return "; ".join(x for x in xs if x)


def _note(r: GroupResult, note: str) -> GroupResult:
    return replace(r, note=_join(r.note, note)) if note else r


@finding(
    "F-17",
    "lr_batch",
    AT_CONVERGENCE,
    "Small batches want a small lr, large batches a large lr.",
    "Fixed lr rule, trials at convergence, the smallest and largest batch sizes run with >= 2 "
    "lrs: each end's best lr (lowest mean minimum validation loss) must beat the other end's "
    "best lr at that end (Welch difference), and the largest batch's best lr must be the "
    "larger (the smaller one: contradicted). The same best lr at both ends: undecided.",
)
def f17(d: Data) -> list[GroupResult]:
    out = []
    cols = [c for c in q.GROUP if c != "lr"]
    for name, key, g in each(d.rule("none"), cols):
        g, note = meeting(finite(g, LOSS), AT_CONVERGENCE)
        n_lrs = g.groupby("batch_size")["lr"].nunique()
        sizes = sorted(n_lrs[n_lrs >= 2].index)
        if len(sizes) < 2:
            out.append(
                left_out(name, _join("needs >= 2 batch sizes with >= 2 lrs each", note), key, cols)
            )
            continue
        s, b = sizes[0], sizes[-1]
        mean = g.groupby(["batch_size", "lr"])[LOSS].mean()
        l_s, l_b = float(mean[s].idxmin()), float(mean[b].idxmin())
        what = f"best lr: bs {int(s)} -> {l_s:g}, bs {int(b)} -> {l_b:g}"
        if l_s == l_b:
            out.append(left_out(name, _join(f"{what}: same best lr at both ends", note), key, cols))
            continue
        direction = +1 if l_b > l_s else -1

        def cell(bs, lr, g=g):
            return g[(g["batch_size"] == bs) & (g["lr"] == lr)][LOSS]

        parts = [
            contrast_part(
                [cell(s, l_s), cell(s, l_b)],
                [-1.0, 1.0],
                f"{what}; bs {int(s)}: loss at lr {l_b:g} minus at {l_s:g}",
                direction,
            ),
            contrast_part(
                [cell(b, l_b), cell(b, l_s)],
                [-1.0, 1.0],
                f"bs {int(b)}: loss at lr {l_s:g} minus at {l_b:g}",
                direction,
            ),
        ]
        out.append(_note(group(name, key, parts, cols), note))
    return out


@finding(
    "F-18",
    "generalization",
    AT_CONVERGENCE,
    "With a tuned lr the remaining gap is small.",
    f"Best minimum validation loss over lrs and lr rules per batch size (>= 2 settings, trials "
    f"at convergence): the largest batch's must stay below (1 + {SMALL_GAP:.0%}) x the "
    "smallest's: Welch contrast 1.05 loss_small - loss_large > 0 (contradicted: < 0).",
)
def f18(d: Data) -> list[GroupResult]:
    out = []
    cols = [c for c in q.GROUP if c not in ("lr", "lr_scaling")]
    for name, key, g in each(d.trials, cols):
        g, note = meeting(finite(g, LOSS), AT_CONVERGENCE)
        if g.groupby(["lr", "lr_scaling"]).ngroups < 2:
            out.append(
                left_out(name, _join("needs >= 2 lr settings to tune over", note), key, cols)
            )
            continue
        g = levels_ok(g.assign(_s=g["lr"].astype(str) + g["lr_scaling"]), "_s")
        mean = g.groupby(["batch_size", "lr", "lr_scaling"])[LOSS].mean()
        sizes = sorted(g["batch_size"].unique())
        if len(sizes) < 2:
            out.append(left_out(name, _join("needs >= 2 batch sizes", note), key, cols))
            continue
        cells = []
        for bs in (sizes[0], sizes[-1]):
            lr, rule = mean[bs].idxmin()
            cells.append(
                g[(g["batch_size"] == bs) & (g["lr"] == lr) & (g["lr_scaling"] == rule)][LOSS]
            )
        base = cells[0].mean()
        gap = cells[1].mean() - base
        what = (
            f"tuned min val loss bs {int(sizes[0])} -> {int(sizes[-1])}: {fmt(base)} -> "
            f"{fmt(cells[1].mean())} ({fmt(100 * gap / base, True)} %, small < {SMALL_GAP:.0%}); "
            f"{1 + SMALL_GAP:g} x small - large"
        )
        part = contrast_part(cells, [1.0 + SMALL_GAP, -1.0], what)
        out.append(_note(group(name, key, [part], cols), note))
    return out


@finding(
    "F-25",
    "lr_batch",
    ANY_BUDGET,
    "Divergence (NaN loss) comes from too large an lr, and is recorded with its step.",
    "Trend test over lrs (>= 3 lrs, all statuses, every trial a point): whether a trial "
    "diverged must rise with lr.",
)
def f25(d: Data) -> list[GroupResult]:
    df = d.all_statuses
    if df.empty:
        return []
    df = df.assign(diverged=(df["status"] == "diverged").astype(float))
    out = []
    cols = [c for c in q.GROUP if c != "lr"]
    for name, key, g in each(df, cols):
        per = g.groupby("lr")["diverged"].agg(["sum", "size"])
        counts = ", ".join(
            f"lr {lr:g}: {int(r['sum'])}/{int(r['size'])}" for lr, r in per.iterrows()
        )
        if per["sum"].sum() == 0:
            out.append(left_out(name, f"diverged {counts}: none diverged", key, cols))
            continue
        part = trend_part(g, "diverged", +1, x="lr", name=f"diverged {counts}: ")
        out.append(group(name, key, [part], cols))
    return out


@finding(
    "F-27",
    "generalization",
    AT_CONVERGENCE,
    "Without BatchNorm, moderate batches generalize best; too large a batch converges to worse "
    "minima.",
    "Fixed lr, no BatchNorm, >= 3 batch sizes, trials at convergence: the lowest mean minimum "
    "validation loss at an interior batch size with both ends worse (Welch differences); "
    "contradicted: an end is lowest and beats the best interior one.",
)
def f27(d: Data) -> list[GroupResult]:
    out = []
    for name, key, g in each(_bn(d.rule("none"), False)):
        g, note = meeting(finite(g, LOSS), AT_CONVERGENCE)
        g = levels_ok(g)
        mean = g.groupby("batch_size")[LOSS].mean()
        if len(mean) < 3:
            out.append(
                left_out(
                    name, _join(f"{len(mean)} batch size(s): needs >= 3 batch sizes", note), key
                )
            )
            continue
        sizes = list(mean.index)
        best = mean.idxmin()

        def cell(bs, g=g):
            return g[g["batch_size"] == bs][LOSS]

        where = f"lowest min val loss at bs {int(best)} of {[int(x) for x in sizes]}"
        if best not in (sizes[0], sizes[-1]):
            parts = [
                contrast_part(
                    [cell(best), cell(e)],
                    [-1.0, 1.0],
                    f"{where}; bs {int(e)} minus it" if i == 0 else f"bs {int(e)} minus it",
                )
                for i, e in enumerate((sizes[0], sizes[-1]))
            ]
        else:
            inner = mean.iloc[1:-1].idxmin()
            parts = [
                contrast_part(
                    [cell(best), cell(inner)],
                    [-1.0, 1.0],
                    f"{where} (an end); best interior bs {int(inner)} minus it",
                    -1,
                )
            ]
        out.append(_note(group(name, key, parts), note))
    return out


@finding(
    "F-28",
    "generalization",
    AT_CONVERGENCE,
    "With BatchNorm, larger batches are better.",
    "Trend test (fixed lr, BatchNorm, trials at convergence): minimum validation loss must "
    "fall with batch size.",
)
def f28(d: Data) -> list[GroupResult]:
    return trends(_bn(d.rule("none"), True), LOSS, -1, AT_CONVERGENCE)
