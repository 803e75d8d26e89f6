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
    DASH_LEGEND,
    EPOCH_AXIS,
    SERIES_LEGEND,
    interactive,
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
    data = _series(with_band(df, y, log=log_y))
    if smoothing:
        by = [c for c in ("series", "experiment", "batch_size", "lr", "lr_scaling") if c in data]
        data = smooth(data, [f"{y}_mean", "lo", "hi"], by, xcol, smoothing)
    yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    base = alt.Chart(data).encode(x=x_encoding(x), color=BS_COLOR)
    tip = ["batch_size", "series", "epoch", xcol, f"{y}_mean", f"{y}_std", "n_seeds"]
    point = _POINT if len(data) <= MAX_HOVER_POINTS else False
    line = base.mark_line(point=point).encode(
        y=alt.Y(f"{y}_mean:Q", title=y_title or y, scale=yscale),
        strokeDash=alt.StrokeDash("series:N", title="setting", legend=DASH_LEGEND),
        detail="series:N",
        tooltip=list(dict.fromkeys(tip)),
    )
    band = base.mark_area(opacity=0.15).encode(y="lo:Q", y2="hi:Q", detail="series:N")
    return interactive((band + line).properties(height=320))


def batch_chart(
    df: pd.DataFrame, y: str, y_title: str, *, log_y: bool = False, zero: bool = False
) -> alt.LayerChart:
    """A statistic's seed mean vs batch size, one line per setting, +-1 std error bars, and
    each seed's value as a small hollow point when the query gave them (`<y>_seeds`)."""
    data = _series(with_band(df, y, log=log_y))
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=zero)
    color = alt.Color("series:N", title="setting", legend=SERIES_LEGEND)
    lists = [c for c in data.columns if c.endswith("_seeds") and c != "n_seeds"]
    base = alt.Chart(data.drop(columns=lists)).encode(x=BS_X, color=color)
    line = base.mark_line(point=True).encode(
        y=alt.Y(f"{y}_mean:Q", title=y_title, scale=scale),
        tooltip=["series:N", "batch_size:Q", f"{y}_mean:Q", f"{y}_std:Q", "n_seeds:Q"],
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
    return interactive(layers.properties(height=300))


def seed_points(data: pd.DataFrame, y: str, *, positive: bool = False) -> pd.DataFrame:
    """One row per seed (series, batch_size, seed, `y`) from the query's `<y>_seeds` lists;
    empty when the query has none. On a log axis values <= 0 are left out."""
    col = f"{y}_seeds"
    if col not in data or data.empty:
        return pd.DataFrame()
    rows = [
        {"series": r["series"], "batch_size": r["batch_size"], "seed": int(p["seed"]),
         y: float(p["value"])}
        for _, r in data[["series", "batch_size", col]].iterrows()
        if isinstance(r[col], (list, np.ndarray))
        for p in r[col]
    ]  # fmt: skip
    out = pd.DataFrame(rows, columns=["series", "batch_size", "seed", y])
    return out[out[y] > 0] if positive else out


def layer_chart(df: pd.DataFrame, y: str = "dist_from_init", y_title: str = "") -> alt.LayerChart:
    """Per-layer distance from init vs batch size (log y): colour = layer, dash = setting.
    Error bars reaching <= 0 are clipped (a log axis cannot draw them)."""
    data = _series(with_band(df, y, log=True))
    base = alt.Chart(data).encode(
        x=BS_X, color=alt.Color("layer:N", title="layer", legend=SERIES_LEGEND)
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y(f"{y}_mean:Q", title=y_title or y, scale=alt.Scale(type="log")),
        strokeDash=alt.StrokeDash("series:N", title="setting", legend=DASH_LEGEND),
        detail="series:N",
        tooltip=[
            "layer", "numel", "series", "batch_size", f"{y}_mean", f"{y}_std", "n_seeds",
            "band_clipped",
        ],
    )  # fmt: skip
    bars = base.mark_rule().encode(y="lo:Q", y2="hi:Q", detail="series:N")
    return interactive((bars + line).properties(height=320))


def ratio_chart(df: pd.DataFrame) -> alt.LayerChart:
    """F-8: smallest/largest batch epoch-distance ratio over epochs, +-1 std (seed pairs)."""
    data = _series(df).assign(
        lo=df["ratio_seed_mean"] - df["ratio_seed_std"].fillna(0.0),
        hi=df["ratio_seed_mean"] + df["ratio_seed_std"].fillna(0.0),
        pair=df["small_batch_size"].astype(str) + " / " + df["large_batch_size"].astype(str),
    )
    base = alt.Chart(data).encode(
        x=alt.X("epoch:Q", title="epoch", axis=EPOCH_AXIS),
        color=alt.Color("series:N", title="setting", legend=SERIES_LEGEND),
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("ratio:Q", title="epoch distance, small / large batch (ratio)"),
        tooltip=["series", "pair", "epoch", "ratio", "ratio_seed_std", "n_pairs"],
    )
    band = base.mark_area(opacity=0.15).encode(y="lo:Q", y2="hi:Q")
    return interactive((band + line).properties(height=300))


def update_norm_chart(hist: pd.DataFrame, quantiles: pd.DataFrame) -> alt.LayerChart:
    """F-9: distribution of per-step update norms per batch size (fraction of steps per
    log-spaced bin), with a vertical rule at each batch size's median."""
    h = _series(hist).assign(center=np.sqrt(hist["bin_lo"] * hist["bin_hi"]))
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
        alt.Chart(_series(quantiles))
        .mark_rule(strokeDash=[4, 3])
        .encode(
            x=alt.X("update_norm_median_mean:Q"),
            color=BS_COLOR,
            tooltip=["batch_size", "series", "update_norm_median_mean", "n_steps", "n_seeds"],
        )
    )
    return interactive((lines + med).properties(height=320))


def workers_chart(df: pd.DataFrame) -> alt.Chart:
    """F-6: time per epoch vs batch size, one line per data-parallel worker count."""
    data = _series(with_band(df, "epoch_time_s"))
    base = alt.Chart(data).encode(
        x=BS_X,
        color=alt.Color("workers:O", title="workers (GPUs)", legend=SERIES_LEGEND),
        detail="series:N",
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("epoch_time_s_mean:Q", title="time per epoch (s)"),
        strokeDash=alt.StrokeDash("series:N", title="setting", legend=DASH_LEGEND),
        tooltip=["series", "workers", "batch_size", "epoch_time_s_mean", "speedup", "n_seeds"],
    )
    return interactive((base.mark_rule().encode(y="lo:Q", y2="hi:Q") + line).properties(height=300))


def critical_batch_chart(steps: pd.DataFrame, fit: pd.DataFrame) -> alt.LayerChart:
    """Measured steps to target vs batch size (each batch size's best lr), the fitted
    S = S_min + E_min / B, and rules at B_crit and the measured noise scale B_simple."""
    pts = _series(with_band(steps, "steps_to_target", log=True))
    x = alt.X(
        "batch_size:Q", title="batch size (examples, log2)", scale=alt.Scale(type="log", base=2)
    )
    y = alt.Y(
        "steps:Q", title="steps to target (optimizer steps, log)", scale=alt.Scale(type="log")
    )
    color = alt.Color("series:N", title="setting", legend=SERIES_LEGEND)
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
        if r.fit_ok and math.isfinite(r.b_crit):
            marks.append({"series": r.series, "value": r.b_crit, "what": "B_crit (fit)"})
        if r.b_simple_mean is not None and math.isfinite(r.b_simple_mean):
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
                    "what:N", title="batch size estimate", legend=DASH_LEGEND
                ),
                tooltip=["series", "what", "value"],
            )
        )
    return interactive(alt.layer(*layers).properties(height=320))


def interpolation_chart(df: pd.DataFrame, labels: dict[str, str] | None = None) -> alt.LayerChart:
    """F-10: loss along theta(a) = a theta_large + (1 - a) theta_small, train and
    validation, one line per interpolation (named by `labels`: 'bs 32 vs bs 256, seed 0');
    rules at a = 0 and a = 1."""
    labels = labels or {}
    data = df.assign(
        run=df["analysis_id"].map(lambda a: labels.get(a, str(a))),
        ends=df["batch_size_a"].astype("Int64").astype(str)
        + " -> "
        + df["batch_size_b"].astype("Int64").astype(str),
    )
    line = (
        alt.Chart(data)
        .mark_line(point=_POINT)
        .encode(
            x=alt.X("alpha:Q", title="alpha (0 = small-batch minimizer, 1 = large-batch; ratio)"),
            y=alt.Y("loss:Q", title="cross-entropy loss (nats, log)", scale=alt.Scale(type="log")),
            color=alt.Color("run:N", title="interpolation", legend=SERIES_LEGEND),
            strokeDash=alt.StrokeDash("split:N", title="split", legend=DASH_LEGEND),
            detail="split:N",
            tooltip=["run", "ends", "split", "alpha", "loss", "acc"],
        )
    )
    rules = (
        alt.Chart(pd.DataFrame({"alpha": [0.0, 1.0]}))
        .mark_rule(color="gray", strokeDash=[2, 2])
        .encode(x="alpha:Q")
    )
    return interactive((rules + line).properties(height=340))


SURFACE_MODES = {
    "relative": "loss rise above the centre, each panel its own scale",
    "shared": "log10 loss, one scale for all panels",
}


def surface_data(df: pd.DataFrame, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Surface rows with `panel` (a human name), `rise` (loss minus the loss at the panel's
    centre, alpha = beta = 0, or its point nearest the centre) and `log_loss`."""
    labels = labels or {}
    data = df.assign(
        panel=df["analysis_id"].map(lambda a: labels.get(a, str(a))),
        log_loss=np.log10(df["loss"].clip(lower=1e-12)),
        _r=df["alpha"].astype(float) ** 2 + df["beta"].astype(float) ** 2,
    )
    centre = data.loc[data.groupby("analysis_id")["_r"].idxmin(), ["analysis_id", "loss"]]
    centre = centre.set_index("analysis_id")["loss"]
    return data.assign(
        centre_loss=data["analysis_id"].map(centre),
        rise=data["loss"] - data["analysis_id"].map(centre),
    ).drop(columns="_r")


def surface_chart(
    df: pd.DataFrame, labels: dict[str, str] | None = None, mode: str = "relative"
) -> alt.FacetChart:
    """F-12: a 2-D loss surface per panel, side by side. `relative` (default): colour = loss
    rise above the panel's centre on a colour scale of its own (a flat large-batch surface
    and a sharp small-batch one both show their shape); `shared`: log10 loss on one scale
    (compare the panels' levels)."""
    data = surface_data(df, labels)
    if mode == "relative":
        color = alt.Color(
            "rise:Q",
            title="loss - loss at centre (nats)",
            scale=alt.Scale(scheme="viridis"),
            legend=alt.Legend(orient="bottom", gradientLength=180, titleLimit=0),
        )
    else:
        color = alt.Color(
            "log_loss:Q",
            title="log10 loss (nats)",
            scale=alt.Scale(scheme="viridis"),
            legend=alt.Legend(titleLimit=0),
        )
    chart = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X(
                "alpha:O",
                title="alpha (filter-normalized direction 1)",
                axis=alt.Axis(format=".2f", labelOverlap=True),
            ),
            y=alt.Y(
                "beta:O",
                title="beta (direction 2)",
                sort="descending",
                axis=alt.Axis(format=".2f", labelOverlap=True),
            ),
            color=color,
            tooltip=["panel", "alpha", "beta", "loss", "rise", "acc"],
        )
        .properties(width=240, height=240)
        .facet(
            column=alt.Column(
                "panel:N",
                title=None,
                header=alt.Header(labelLimit=0),
                sort=alt.EncodingSortField(field="batch_size_a", op="min"),
            )
        )
    )
    if mode == "relative":
        chart = chart.resolve_scale(color="independent").resolve_legend(color="independent")
    return chart


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
    return alt.layer(rect, text, best).properties(height=260)


def lr_curve_chart(df: pd.DataFrame) -> alt.LayerChart:
    """F-17: minimum validation loss vs lr, one line per batch size, +-1 std bars; the
    batch size's best lr is drawn as a large diamond."""
    data = _series(with_band(df, "min_val_loss"))
    x = alt.X("lr:Q", title="lr (grid value, before scaling, log)", scale=alt.Scale(type="log"))
    base = alt.Chart(data).encode(x=x, color=BS_COLOR)
    line = base.mark_line(point=True).encode(
        y=alt.Y(
            "min_val_loss_mean:Q", title="min validation loss (nats)", scale=alt.Scale(zero=False)
        ),
        strokeDash=alt.StrokeDash("series:N", title="setting", legend=DASH_LEGEND),
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
    return interactive(alt.layer(bars, line, best).properties(height=320))
