"""Findings about training speed and time: F-1, F-3, F-4, F-5, F-6, F-14."""

from __future__ import annotations

import numpy as np

from warehouse import queries as q
from warehouse.findings.core import (
    ANY_BUDGET,
    AT_CONVERGENCE,
    AT_EQUAL_EPOCHS,
    GroupResult,
    each,
    finding,
    group,
    left_out,
)
from warehouse.findings.data import Data
from warehouse.findings.rules import contrast_part, fmt, meeting, trends


@finding(
    "F-1",
    "curves",
    AT_EQUAL_EPOCHS,
    "The larger the batch, the slower the training loss falls per epoch.",
    "Trend test (fixed lr): training loss after the same number of epochs must rise with "
    "batch size.",
)
def f1(d: Data) -> list[GroupResult]:
    return trends(d.rule("none"), "train_loss_at_epoch", +1, AT_EQUAL_EPOCHS)


@finding(
    "F-3",
    "time",
    ANY_BUDGET,
    "The larger the batch, the less time per epoch.",
    "Trend test (every lr rule): mean training seconds per epoch must fall with batch size.",
)
def f3(d: Data) -> list[GroupResult]:
    return trends(d.trials, "epoch_time_s", -1, ANY_BUDGET, unit=" s")


@finding(
    "F-4",
    "time",
    AT_CONVERGENCE,
    "The larger the batch, the more epochs to reach the minimum validation loss.",
    "Trend test (fixed lr, trials at convergence): epochs to the minimum validation loss must "
    "rise with batch size.",
)
def f4(d: Data) -> list[GroupResult]:
    return trends(d.rule("none"), "epochs_to_min", +1, AT_CONVERGENCE, unit=" epochs")


@finding(
    "F-5",
    "time",
    AT_CONVERGENCE,
    "At a fixed lr, large batches take longer in total.",
    "Trend test (fixed lr, trials at convergence): training time to the minimum validation "
    "loss must rise with batch size.",
)
def f5(d: Data) -> list[GroupResult]:
    return trends(d.rule("none"), "time_to_min_s", +1, AT_CONVERGENCE, unit=" s")


@finding(
    "F-6",
    "time",
    ANY_BUDGET,
    "Data parallelism makes per-epoch time of small batches slightly worse and of large "
    "batches much better.",
    "Speedup = 1-worker / multi-worker time per epoch at the smallest and the largest batch "
    "size run on both: log speedup (largest) - log speedup (smallest) must be > 0 (Welch "
    "contrast of the four cells' mean log times).",
)
def f6(d: Data) -> list[GroupResult]:
    df = d.trials
    if df.empty:
        return []
    df = df.assign(log_t=np.log(df["epoch_time_s"].astype(float)))
    cfg = [c for c in q.GROUP if c != "workers"]
    out = []
    for name, key, g in each(df, cfg):
        one = g[g["workers"] == 1]
        for w, gw in g[g["workers"] > 1].groupby("workers"):
            label = f"{name} / {int(w)} workers"
            sizes = sorted(set(one["batch_size"]) & set(gw["batch_size"]))
            if len(sizes) < 2:
                out.append(
                    left_out(label, "needs >= 2 batch sizes on both worker counts", key, cfg)
                )
                continue
            s, b = sizes[0], sizes[-1]
            cells = [
                one.loc[one["batch_size"] == s, "log_t"],
                gw.loc[gw["batch_size"] == s, "log_t"],
                one.loc[one["batch_size"] == b, "log_t"],
                gw.loc[gw["batch_size"] == b, "log_t"],
            ]
            sp = [
                float(np.exp(cells[0].mean() - cells[1].mean())),
                float(np.exp(cells[2].mean() - cells[3].mean())),
            ]
            what = (
                f"speedup on {int(w)} workers: bs {int(s)} {fmt(sp[0])}x, bs {int(b)} "
                f"{fmt(sp[1])}x; log-speedup difference"
            )
            part = contrast_part(cells, [-1.0, 1.0, 1.0, -1.0], what)
            out.append(group(label, key, [part], cfg))
    return out


@finding(
    "F-14",
    "time",
    AT_CONVERGENCE,
    "With scaled lr, large batches reach the minimum in less total time.",
    "Trend test (linear scaling, trials at convergence, >= 2 batch sizes): training time to "
    "the minimum validation loss must fall with batch size.",
)
def f14(d: Data) -> list[GroupResult]:
    rows = d.rule("linear")
    out = trends(rows, "time_to_min_s", -1, AT_CONVERGENCE, unit=" s", min_bs=2)
    return [_epochs_note(r, rows) for r in out]


def _epochs_note(r: GroupResult, rows) -> GroupResult:
    from dataclasses import replace

    g = rows
    for c, v in zip(q.GROUP, r.key, strict=False):
        g = g[g[c] == v]
    g, _ = meeting(g, AT_CONVERGENCE)
    e = g.groupby("batch_size")["epochs_to_min"].mean()
    if len(e) < 2:
        return r
    parts = list(r.parts)
    parts[0] = replace(
        parts[0], what=parts[0].what + f" (epochs {fmt(e.iloc[0])} -> {fmt(e.iloc[-1])})"
    )
    return replace(r, parts=tuple(parts))
