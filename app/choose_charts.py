"""Charts of the "Choose a batch size" page (app/views/choose.py): steps to the target with
the McCandlish fit and the critical batch sizes, and B_simple over training. Each chart's
`height` is its plot area's (app/show.py draws it with autosize fit-x)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.chart_kit import BS_COLOR, EPOCH_AXIS, PLOT_HEIGHT, fit_legend, interactive, positive

LOG2_BS = alt.Scale(type="log", base=2, padding=12)  # points at the ends drawn whole


def steps_fit_chart(points: pd.DataFrame, curve: pd.DataFrame, marks: pd.DataFrame) -> alt.Chart:
    """Steps to the target vs batch size (each batch size's best lr; bars: the bootstrap
    interval), the fitted S = S_min + E_min / B (dashed), and rules at the batch-size
    estimates in `marks` (`what`, `value`: B_crit, the 20%-overhead batch size, B_simple)."""
    pts = positive(points, "steps")
    x = alt.X("batch_size:Q", title="batch size (examples, log2)", scale=LOG2_BS)
    y = alt.Y("steps:Q", title="steps to the target (optimizer steps, log)")
    y = y.scale(type="log")
    tip = ["batch_size", "best_lr", "steps", "steps_lo", "steps_hi", "examples"]
    layers: list[alt.Chart] = [
        alt.Chart(pts)
        .mark_point(filled=True, size=80, color="#355f8d")
        .encode(x=x, y=y, tooltip=tip)
    ]
    bars = positive(pts, "steps_lo", "steps_hi")
    if not bars.empty:
        layers.append(
            alt.Chart(bars)
            .mark_rule(color="#355f8d")
            .encode(x=x, y=alt.Y("steps_lo:Q").scale(type="log"), y2="steps_hi:Q")
        )
    c = positive(curve, "steps")
    if not c.empty:
        layers.append(
            alt.Chart(c.assign(what="fit S = S_min + E_min / B"))
            .mark_line(strokeDash=[6, 3], color="#21918c")
            .encode(x=x, y=y, tooltip=["what", "batch_size", "steps"])
        )
    m = positive(marks, "value")
    if not m.empty:
        layers.append(
            alt.Chart(m)
            .mark_rule(strokeWidth=2)
            .encode(
                x=alt.X("value:Q"),
                color=alt.Color(
                    "what:N",
                    title="batch-size estimate",
                    scale=alt.Scale(scheme="dark2"),
                    legend=fit_legend(m["what"]),
                ),
                tooltip=["what", alt.Tooltip("value:Q", format=".3g")],
            )
        )
    return interactive(alt.layer(*layers).properties(height=PLOT_HEIGHT))


def b_simple_chart(df: pd.DataFrame) -> alt.Chart:
    """B_simple (mean over seeds) at each probed epoch, one line per batch size; measured at
    one epoch only: B_simple against batch size instead (a single epoch would be one column
    of points)."""
    d = positive(df, "b_simple_mean")
    y = alt.Y("b_simple_mean:Q", title="gradient noise scale B_simple (examples, log)")
    y = y.scale(type="log")
    tip = ["batch_size", "lr", "epoch", "b_simple_mean", "b_simple_std", "n_seeds"]
    if d["epoch"].nunique() < 2:
        x = alt.X("batch_size:Q", title="batch size (examples, log2)", scale=LOG2_BS)
        chart = (
            alt.Chart(d)
            .mark_line(point=alt.OverlayMarkDef(filled=True, size=60), color="#355f8d")
            .encode(x=x, y=y, detail="lr:N", tooltip=tip)
        )
        return interactive(chart.properties(height=PLOT_HEIGHT))
    x = alt.X("epoch:Q", title="epoch", axis=EPOCH_AXIS)
    chart = (
        alt.Chart(d)
        .mark_line(point=True)
        .encode(x=x, y=y, color=BS_COLOR, detail="lr:N", tooltip=tip)
    )
    return interactive(chart.properties(height=PLOT_HEIGHT))
