"""Charts of single runs: every curve of one trial, chosen trials overlaid, parallel
coordinates of hyperparameters against a metric. Zoom/pan and hover values as elsewhere."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from app.chart_kit import (
    EPOCH_AXIS,
    PANEL,
    PLOT_HEIGHT,
    fit_legend,
    interactive,
    legend_pick,
    positive,
    smooth,
)

RUN_X = {
    "epochs": ("epoch", "epoch"),
    "iterations": ("step", "iterations (optimizer steps)"),
    "examples": ("examples_seen", "examples seen"),
    "time": ("elapsed_s", "training time (s)"),
}
_POINT = alt.OverlayMarkDef(size=16, filled=True)
MIN_PANEL_HEIGHT = 220  # small multiples: 2 columns of 300 x 220 panels


def _x(x: str) -> alt.X:
    col, title = RUN_X[x]
    return alt.X(f"{col}:Q", title=title, axis=EPOCH_AXIS if col == "epoch" else alt.Axis())


def trial_curves_chart(long: pd.DataFrame, x: str = "epochs", columns: int = 2) -> alt.FacetChart:
    """Small multiples of one trial's curves: `long` has `metric`, `value` and the x
    columns; one panel per metric, each with its own y scale."""
    xcol = RUN_X[x][0]
    base = (
        alt.Chart(long)
        .mark_line(point=_POINT)
        .encode(
            x=_x(x),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            tooltip=["metric", "epoch", xcol, "value"],
        )
        .properties(width=PANEL, height=MIN_PANEL_HEIGHT)
    )
    return (
        base.facet(
            facet=alt.Facet("metric:N", title=None, header=alt.Header(labelLimit=0)),
            columns=columns,
        )
        .resolve_scale(y="independent")
        .interactive(bind_y=True)
    )


def compare_chart(
    df: pd.DataFrame,
    y: str,
    y_title: str,
    x: str = "epochs",
    *,
    log_y: bool = False,
    smoothing: float = 0.0,
) -> alt.LayerChart:
    """One line per trial (`run`: its label) of column `y` against the chosen x."""
    xcol = RUN_X[x][0]
    data = df[df[y].notna()] if y in df else df.assign(**{y: np.nan})
    if log_y:
        data = positive(data, y)
    if smoothing:
        data = smooth(data, [y], ["run"], xcol, smoothing)
    yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    pick, opacity = legend_pick("run")
    chart = (
        alt.Chart(data)
        .mark_line(point=_POINT)
        .encode(
            x=_x(x),
            y=alt.Y(f"{y}:Q", title=y_title, scale=yscale),
            color=alt.Color("run:N", title="trial", legend=fit_legend(data["run"])),
            opacity=opacity,
            tooltip=["run", "trial_id", "epoch", xcol, y],
        )
        .add_params(pick)
        .properties(height=PLOT_HEIGHT + 60)
    )
    return interactive(chart)


def _position(s: pd.Series) -> tuple[pd.Series, list[tuple[float, str]]]:
    """A column's values as positions in [0, 1] with tick labels: numbers spanning more
    than a decade (all positive) on a log scale, other numbers linear, anything else by
    rank of its sorted distinct values."""
    if pd.api.types.is_bool_dtype(s):
        s = s.astype(str)
    if pd.api.types.is_numeric_dtype(s):
        v = s.astype(float)
        finite = v[np.isfinite(v)]
        if finite.empty:
            return pd.Series(0.5, index=s.index), []
        lo, hi = float(finite.min()), float(finite.max())
        log = lo > 0 and hi / lo > 10
        f = np.log10 if log else (lambda a: a)
        span = (f(hi) - f(lo)) or 1.0
        pos = (f(v.where(np.isfinite(v))) - f(lo)) / span
        if hi == lo:
            pos = pos * 0 + 0.5
        return pos, [
            (float(pos[v == lo].iloc[0]), f"{lo:g}"),
            (float(pos[v == hi].iloc[0]), f"{hi:g}"),
        ]
    text = as_text(s)
    cats = sorted(text.unique())
    n = max(len(cats) - 1, 1)
    where = {c: (i / n if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return text.map(where), [(where[c], c) for c in cats]


MISSING = "(none)"


def as_text(s: pd.Series) -> pd.Series:
    """Every value as text, a missing one (None, NaN, NA) as MISSING: a column of imported
    and native trials mixes numbers, text and gaps (pandas 3 keeps NaN through
    `astype(str)`, and sorting NaN with text raised TypeError)."""
    return s.map(lambda v: MISSING if _missing(v) else str(v)).astype(object)


def _missing(v: object) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # lists, arrays
        return False


def parallel_data(
    df: pd.DataFrame, axes: list[str], metric: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(lines, ticks): one row per trial and axis with its position and raw value; the
    axes' end labels."""
    lines, ticks = [], []
    for i, col in enumerate([*axes, metric]):
        pos, labels = _position(df[col])
        lines.append(
            pd.DataFrame(
                {
                    "trial_id": df["trial_id"].values,
                    "run": df["run"].values,
                    "axis": col,
                    "order": i,
                    "pos": pos.values,
                    "raw": as_text(df[col]).values,
                    "metric_value": df[metric].values,
                }
            )
        )
        ticks += [{"axis": col, "order": i, "pos": p, "label": t} for p, t in labels]
    return pd.concat(lines, ignore_index=True), pd.DataFrame(ticks)


def parallel_chart(df: pd.DataFrame, axes: list[str], metric: str) -> alt.LayerChart:
    """Parallel coordinates: one polyline per trial through its hyperparameters (`axes`)
    and the metric (last axis), coloured by the metric. Each axis is scaled to its own
    range (log for numbers spanning > 10x); labels give each axis' ends / categories."""
    lines, ticks = parallel_data(df, axes, metric)
    order = [*axes, metric]
    x = alt.X("axis:N", sort=order, title=None, axis=alt.Axis(labelAngle=0, labelLimit=0))
    finite = lines["metric_value"].astype(float)
    finite = finite[np.isfinite(finite)]
    domain = [float(finite.min()), float(finite.max())] if len(finite) else alt.Undefined
    color = alt.Color(
        "metric_value:Q",
        title=metric,
        scale=alt.Scale(scheme="viridis", domain=domain, reverse=True),
        legend=alt.Legend(titleLimit=0),
    )
    poly = (
        alt.Chart(lines)
        .mark_line(opacity=0.6, strokeWidth=1.5)
        .encode(
            x=x,
            y=alt.Y("pos:Q", axis=None, scale=alt.Scale(domain=[-0.05, 1.05])),
            color=color,
            detail="trial_id:N",
            tooltip=["run", "axis", "raw", "metric_value"],
        )
    )
    rules = alt.Chart(pd.DataFrame({"axis": order})).mark_rule(color="#888").encode(x=x)
    labels = (
        alt.Chart(ticks)
        .mark_text(align="left", dx=4, fontSize=11, color="#222")
        .encode(x=x, y="pos:Q", text="label:N")
    )
    return alt.layer(rules, poly, labels).properties(height=PLOT_HEIGHT + 120)


def finite_or_none(v: object) -> object:
    return None if isinstance(v, float) and not math.isfinite(v) else v
