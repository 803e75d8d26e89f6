"""Chart builders: data in, Altair chart out (tested on their Vega-Lite specs).

Conventions: batch size on a log2 axis, colour = batch size (viridis) where batch size is
not the x axis, colour = `series` (the varying settings: lr rule, lr, model...) where it
is; every band or error bar is +-1 std over seeds; axis titles carry the unit; curve
charts zoom and pan (scroll, drag; double-click resets) and show values on hover.
Shared pieces (legends, bands on log axes, contrast) are in app/chart_kit.py.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from app.chart_kit import (
    BS_COLOR,
    EPOCH_AXIS,
    PLOT_HEIGHT,
    fit_legend,
    interactive,
    legend_pick,
    positive,
    smooth,
    viridis_text_colors,
    with_band,
)
from app.chart_kit import series as _series

X_AXES = {
    "epoch": ("epoch", "epoch"),
    "iterations": ("step", "iterations (optimizer steps)"),
    "examples seen": ("examples_seen", "examples seen"),
    "wall time": ("elapsed_s", "training time (s)"),
}
BS_X = alt.X(
    "batch_size:Q", title="batch size (examples, log2)", scale=alt.Scale(type="log", base=2)
)
_POINT = alt.OverlayMarkDef(size=18, filled=True)  # hover targets on every line
# Above this many rows a curve chart draws no hover point per row (the line keeps its
# tooltip): at 10,000 trials a Curves chart had 24,400 points and the page took 28 s to draw
# in Chromium, about half of it the points (benchmarks/app_pages.py --bench-10k).
MAX_HOVER_POINTS = 5000


def x_encoding(x: str) -> alt.X:
    xcol, xtitle = X_AXES[x]
    return alt.X(f"{xcol}:Q", title=xtitle, axis=EPOCH_AXIS if xcol == "epoch" else alt.Axis())


def curve_chart(
    df: pd.DataFrame,
    y: str,
    x: str = "epoch",
    y_title: str | None = None,
    *,
    log_y: bool = False,
    smoothing: float = 0.0,
) -> alt.LayerChart:
    """Mean curve per batch size (and setting) with a +-1 std band over seeds; optional
    log y axis (band edges <= 0 clipped) and exponential smoothing of line and band."""
    xcol = X_AXES[x][0]
    data = _series(with_band(positive(df, f"{y}_mean") if log_y else df, y, log=log_y))
    if smoothing:
        by = [c for c in ("series", "experiment", "batch_size", "lr", "lr_scaling") if c in data]
        data = smooth(data, [f"{y}_mean", "lo", "hi"], by, xcol, smoothing)
    yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    base = alt.Chart(data).encode(x=x_encoding(x), color=BS_COLOR)
    tip = ["batch_size", "series", "epoch", xcol, f"{y}_mean", f"{y}_std", "n_seeds"]
    point = _POINT if len(data) <= MAX_HOVER_POINTS else False
    line = base.mark_line(point=point).encode(
        y=alt.Y(f"{y}_mean:Q", title=y_title or y, scale=yscale),
        strokeDash=alt.StrokeDash(
            "series:N", title="setting", legend=fit_legend(data["series"], dash=True)
        ),
        detail="series:N",
        tooltip=list(dict.fromkeys(tip)),
    )
    band = base.mark_area(opacity=0.15).encode(y="lo:Q", y2="hi:Q", detail="series:N")
    return interactive((band + line).properties(height=PLOT_HEIGHT))


def batch_chart(
    df: pd.DataFrame, y: str, y_title: str, *, log_y: bool = False, zero: bool = False
) -> alt.LayerChart:
    """A statistic's seed mean vs batch size, one line per setting, +-1 std error bars, and
    each seed's value as a small hollow point when the query gave them (`<y>_seeds`)."""
    data = _series(with_band(positive(df, f"{y}_mean") if log_y else df, y, log=log_y))
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=zero)
    color = alt.Color("series:N", title="setting", legend=fit_legend(data["series"]))
    lists = [c for c in data.columns if c.endswith("_seeds") and c != "n_seeds"]
    pick, opacity = legend_pick("series")
    base = alt.Chart(data.drop(columns=lists)).encode(x=BS_X, color=color, opacity=opacity)
    line = (
        base.mark_line(point=True)
        .encode(
            y=alt.Y(f"{y}_mean:Q", title=y_title, scale=scale),
            tooltip=["series:N", "batch_size:Q", f"{y}_mean:Q", f"{y}_std:Q", "n_seeds:Q"],
        )
        .add_params(pick)
    )
    bars = base.mark_rule().encode(y="lo:Q", y2="hi:Q")
    layers = bars + line
    seeds = seed_points(data, y, positive=log_y)
    if not seeds.empty:
        dots = (
            alt.Chart(seeds)
            .mark_point(size=28, opacity=0.7, filled=False)
            .encode(
                x=BS_X,
                y=alt.Y(f"{y}:Q", scale=scale),
                color=color,
                tooltip=["series:N", "batch_size:Q", "seed:O", f"{y}:Q"],
            )
        )
        layers = layers + dots
    return interactive(layers.properties(height=PLOT_HEIGHT))


def seed_points(data: pd.DataFrame, y: str, *, positive: bool = False) -> pd.DataFrame:
    """One row per seed (series, batch_size, seed, `y`) from the query's `<y>_seeds` lists;
    empty when the query has none. On a log axis values <= 0 are left out."""
    col = f"{y}_seeds"
    if col not in data or data.empty:
        return pd.DataFrame()
    rows = [
        {
            "series": r["series"],
            "batch_size": r["batch_size"],
            "seed": int(p["seed"]),
            y: float(p["value"]),
        }
        for _, r in data[["series", "batch_size", col]].iterrows()
        if isinstance(r[col], (list, np.ndarray))
        for p in r[col]
    ]
    out = pd.DataFrame(rows, columns=["series", "batch_size", "seed", y])
    return out[out[y] > 0] if positive else out


def layer_chart(df: pd.DataFrame, y: str = "dist_from_init", y_title: str = "") -> alt.LayerChart:
    """Per-layer distance from init vs batch size (log y): colour = layer, dash = setting.
    Error bars reaching <= 0 are clipped (a log axis cannot draw them)."""
    data = _series(with_band(positive(df, f"{y}_mean"), y, log=True))
    base = alt.Chart(data).encode(
        x=BS_X, color=alt.Color("layer:N", title="layer", legend=fit_legend(data["layer"]))
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y(f"{y}_mean:Q", title=y_title or y, scale=alt.Scale(type="log")),
        strokeDash=alt.StrokeDash(
            "series:N", title="setting", legend=fit_legend(data["series"], dash=True)
        ),
        detail="series:N",
        tooltip=[
            "layer",
            "numel",
            "series",
            "batch_size",
            f"{y}_mean",
            f"{y}_std",
            "n_seeds",
            "band_clipped",
        ],
    )
    bars = base.mark_rule().encode(y="lo:Q", y2="hi:Q", detail="series:N")
    return interactive((bars + line).properties(height=PLOT_HEIGHT))


def ratio_chart(df: pd.DataFrame) -> alt.LayerChart:
    """F-8: smallest/largest batch epoch-distance ratio over epochs, +-1 std (seed pairs)."""
    data = _series(df).assign(
        lo=df["ratio_seed_mean"] - df["ratio_seed_std"].fillna(0.0),
        hi=df["ratio_seed_mean"] + df["ratio_seed_std"].fillna(0.0),
        pair=df["small_batch_size"].astype(str) + " / " + df["large_batch_size"].astype(str),
    )
    base = alt.Chart(data).encode(
        x=alt.X("epoch:Q", title="epoch", axis=EPOCH_AXIS),
        color=alt.Color("series:N", title="setting", legend=fit_legend(data["series"])),
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("ratio:Q", title="epoch distance, small / large batch (ratio)"),
        tooltip=["series", "pair", "epoch", "ratio", "ratio_seed_std", "n_pairs"],
    )
    band = base.mark_area(opacity=0.15).encode(y="lo:Q", y2="hi:Q")
    return interactive((band + line).properties(height=PLOT_HEIGHT))


def update_norm_chart(hist: pd.DataFrame, quantiles: pd.DataFrame) -> alt.LayerChart:
    """F-9: distribution of per-step update norms per batch size (fraction of steps per
    log-spaced bin), with a vertical rule at each batch size's median."""
    h = positive(_series(hist).assign(center=np.sqrt(hist["bin_lo"] * hist["bin_hi"])), "center")
    x = alt.X(
        "center:Q",
        title="update norm ||theta_(t+1) - theta_t|| (log)",
        scale=alt.Scale(type="log"),
    )
    lines = (
        alt.Chart(h)
        .mark_line(interpolate="step-after")
        .encode(
            x=x,
            y=alt.Y("fraction:Q", title="fraction of steps"),
            color=BS_COLOR,
            detail="series:N",
            tooltip=["batch_size", "series", "bin_lo", "bin_hi", "n_steps", "fraction"],
        )
    )
    med = (
        alt.Chart(positive(_series(quantiles), "update_norm_median_mean"))
        .mark_rule(strokeDash=[4, 3])
        .encode(
            x=alt.X("update_norm_median_mean:Q"),
            color=BS_COLOR,
            tooltip=["batch_size", "series", "update_norm_median_mean", "n_steps", "n_seeds"],
        )
    )
    return interactive((lines + med).properties(height=PLOT_HEIGHT))


def workers_chart(df: pd.DataFrame) -> alt.Chart:
    """F-6: time per epoch vs batch size, one line per data-parallel worker count."""
    data = _series(with_band(df, "epoch_time_s"))
    base = alt.Chart(data).encode(
        x=BS_X,
        color=alt.Color("workers:O", title="workers (GPUs)", legend=fit_legend(data["workers"])),
        detail="series:N",
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("epoch_time_s_mean:Q", title="time per epoch (s)"),
        strokeDash=alt.StrokeDash(
            "series:N", title="setting", legend=fit_legend(data["series"], dash=True)
        ),
        tooltip=["series", "workers", "batch_size", "epoch_time_s_mean", "speedup", "n_seeds"],
    )
    bars = base.mark_rule().encode(y="lo:Q", y2="hi:Q")
    return interactive((bars + line).properties(height=PLOT_HEIGHT))


def critical_batch_chart(steps: pd.DataFrame, fit: pd.DataFrame) -> alt.LayerChart:
    """Measured steps to target vs batch size (each batch size's best lr), the fitted
    S = S_min + E_min / B, and rules at B_crit and the measured noise scale B_simple."""
    pts = _series(with_band(positive(steps, "steps_to_target_mean"), "steps_to_target", log=True))
    x = alt.X(
        "batch_size:Q", title="batch size (examples, log2)", scale=alt.Scale(type="log", base=2)
    )
    y = alt.Y(
        "steps:Q", title="steps to target (optimizer steps, log)", scale=alt.Scale(type="log")
    )
    color = alt.Color("series:N", title="setting", legend=fit_legend(pts["series"]))
    measured = (
        alt.Chart(pts.assign(steps=pts["steps_to_target_mean"]))
        .mark_point(filled=True, size=60)
        .encode(x=x, y=y, color=color, tooltip=["series", "batch_size", "steps", "n_reached"])
    )
    layers = [measured]
    rows = []
    for r in _series(fit).itertuples():
        if not (r.fit_ok and r.s_min > 0 and r.e_min > 0):
            continue
        for b in np.geomspace(r.min_batch_size, r.max_batch_size, 40):
            rows.append({"series": r.series, "batch_size": b, "steps": r.s_min + r.e_min / b})
    if rows:
        layers.append(
            alt.Chart(pd.DataFrame(rows))
            .mark_line(strokeDash=[6, 3])
            .encode(x=x, y=y, color=color, detail="series:N")
        )
    marks = []
    for r in _series(fit).itertuples():
        if r.fit_ok and math.isfinite(r.b_crit) and r.b_crit > 0:
            marks.append({"series": r.series, "value": r.b_crit, "what": "B_crit (fit)"})
        if r.b_simple_mean is not None and math.isfinite(r.b_simple_mean) and r.b_simple_mean > 0:
            marks.append(
                {"series": r.series, "value": r.b_simple_mean, "what": "B_simple (noise scale)"}
            )
    if marks:
        layers.append(
            alt.Chart(pd.DataFrame(marks))
            .mark_rule()
            .encode(
                x=alt.X("value:Q"),
                color=color,
                strokeDash=alt.StrokeDash(
                    "what:N",
                    title="batch size estimate",
                    legend=fit_legend(["B_simple (noise scale)"], dash=True),
                ),
                tooltip=["series", "what", "value"],
            )
        )
    return interactive(alt.layer(*layers).properties(height=PLOT_HEIGHT))


def lr_heatmap(df: pd.DataFrame) -> alt.LayerChart:
    """F-13, F-17, F-23: minimum validation loss for every lr x batch size (lower is
    better, darker); a ring marks each batch size's best lr. Each cell's number is black
    or white, whichever contrasts more with the cell (WCAG AA, >= 4.5:1)."""
    v = df["min_val_loss_mean"]
    data = _series(df).assign(
        label=v.map(lambda x: f"{x:.3g}"),
        text_color=viridis_text_colors(v, reverse=True),
    )
    x = alt.X("batch_size:O", title="batch size (examples)")
    y = alt.Y("lr:O", title="lr (grid value, before scaling)", sort="descending")
    domain = [float(v.min()), float(v.max())] if v.notna().any() else alt.Undefined
    rect = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "min_val_loss_mean:Q",
                title="min val loss (nats)",
                scale=alt.Scale(scheme="viridis", reverse=True, zero=False, domain=domain),
                # above: beside it, the gradient left the heat map 250 px wide at 1400 px
                legend=alt.Legend(
                    orient="top", direction="horizontal", gradientLength=200, titleLimit=0
                ),
            ),
            tooltip=[
                "series",
                "batch_size",
                "lr",
                "scaled_lr",
                "min_val_loss_mean",
                "min_val_loss_std",
                "n_seeds",
            ],
        )
    )
    text = (
        alt.Chart(data)
        .mark_text(fontSize=12)
        .encode(
            x=x,
            y=y,
            text="label:N",
            color=alt.condition(
                "datum.text_color == 'white'", alt.value("white"), alt.value("black")
            ),
        )
    )
    best = (
        alt.Chart(data[data["is_best_lr"]])
        .mark_point(shape="circle", size=900, strokeWidth=2, color="red")
        .encode(x=x, y=y)
    )
    # "container": a discrete x axis otherwise takes Vega-Lite's default 20 px per band.
    return alt.layer(rect, text, best).properties(height=PLOT_HEIGHT, width="container")


def lr_curve_chart(df: pd.DataFrame) -> alt.LayerChart:
    """F-17: minimum validation loss vs lr, one line per batch size, +-1 std bars; the
    batch size's best lr is drawn as a large diamond."""
    data = _series(with_band(df, "min_val_loss"))
    # padding: the best lr's diamond at the axis' end stays inside the chart (it ran 6 px
    # past a half-page column)
    x = alt.X(
        "lr:Q",
        title="lr (grid value, before scaling, log)",
        scale=alt.Scale(type="log", padding=12),
    )
    base = alt.Chart(data).encode(x=x, color=BS_COLOR)
    line = base.mark_line(point=True).encode(
        y=alt.Y(
            "min_val_loss_mean:Q", title="min validation loss (nats)", scale=alt.Scale(zero=False)
        ),
        strokeDash=alt.StrokeDash(
            "series:N", title="setting", legend=fit_legend(data["series"], dash=True)
        ),
        detail="series:N",
        tooltip=["series", "batch_size", "lr", "min_val_loss_mean", "min_val_loss_std", "n_seeds"],
    )
    bars = base.mark_rule().encode(y="lo:Q", y2="hi:Q", detail="series:N")
    best = (
        alt.Chart(data[data["is_best_lr"]])
        .mark_point(shape="diamond", size=220, filled=True)
        .encode(
            x=x,
            y="min_val_loss_mean:Q",
            color=BS_COLOR,
            tooltip=["series", "batch_size", "lr", "min_val_loss_mean"],
        )
    )
    return interactive(alt.layer(bars, line, best).properties(height=PLOT_HEIGHT))
