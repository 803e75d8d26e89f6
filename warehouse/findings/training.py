"""Findings about training speed and time: F-1, F-3, F-4, F-5, F-6, F-14.

F-3, F-5 and F-14 read the lone timing probe (`timings`, workers/timing.py) in a group where
every batch size has a probe row on the trials' device (`warehouse.timings.probe_step_times`,
as the advisor matches them): seconds per epoch = s/step x steps per epoch (steps_run /
epochs_run), seconds to the minimum = s/step x steps to it (best_epoch x steps per epoch).
Elsewhere they read the trials' own times, a packed trial's being its pack's
(docs/packs.md). Each group's statistic says which ("times: ...")."""

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
    each,
    finding,
    group,
    left_out,
)
from warehouse.findings.data import Data
from warehouse.findings.rules import contrast_part, fmt, meeting, trends
from warehouse.timings import probe_step_times


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
    rows, said = _lone_times(d, d.trials, "epoch_time_s")
    return _say_times(trends(rows, "epoch_time_s", -1, ANY_BUDGET, unit=" s"), said)


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
    rows, said = _lone_times(d, d.rule("none"), "time_to_min_s")
    return _say_times(trends(rows, "time_to_min_s", +1, AT_CONVERGENCE, unit=" s"), said)


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
    rows, said = _lone_times(d, d.rule("linear"), "time_to_min_s")
    out = trends(rows, "time_to_min_s", -1, AT_CONVERGENCE, unit=" s", min_bs=2)
    return _say_times([_epochs_note(r, rows) for r in out], said)


LONE = "times: lone timing probe"
OWN = "times: the trials' own"
PACKS = "times: the trials' own, the pack's for packed trials"


def _lone_times(d: Data, rows: pd.DataFrame, col: str) -> tuple[pd.DataFrame, dict]:
    """`rows` with `col` (epoch_time_s or time_to_min_s) from the lone timing probe in the
    groups where every batch size has a probe row (module docstring), and per group key
    which times it holds."""
    if rows.empty:
        return rows, {}
    timings, out, said = d.timings, [], {}
    for _, key, g in each(rows, q.GROUP):
        grid = sorted(int(b) for b in g["batch_size"].unique())
        info = dict(zip(q.GROUP, key, strict=True))
        probe = probe_step_times(timings, info, set(g["device_name"].dropna()), grid)
        if probe is None:
            said[key] = PACKS if (g["pack_size"].astype(float) > 1).any() else OWN
        else:
            sps = g["batch_size"].map(lambda b, p=probe: float(p[int(b)]["s_per_step"]))
            steps = g["steps_run"].astype(float) / g["epochs_run"].astype(float)
            if col != "epoch_time_s":
                steps = steps * g["epochs_to_min"].astype(float)
            g = g.assign(**{col: steps * sps.astype(float)})
            said[key] = LONE
        out.append(g)
    return pd.concat(out).sort_index(), said


def _say_times(results: list[GroupResult], said: dict) -> list[GroupResult]:
    """Each judged group's statistic (its first part) names the times it was judged on."""
    out = []
    for r in results:
        s = said.get(r.key)
        if s and r.parts:  # (a group left out was judged on no times)
            parts = list(r.parts)
            parts[0] = replace(parts[0], what=f"{parts[0].what} ({s})")
            r = replace(r, parts=tuple(parts))
        out.append(r)
    return out


def _epochs_note(r: GroupResult, rows) -> GroupResult:
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
