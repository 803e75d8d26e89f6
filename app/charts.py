"""Chart builders: data in, Altair chart out (tested on their Vega-Lite specs)."""

from __future__ import annotations

import altair as alt
import pandas as pd

X_AXES = {
    "epoch": ("epoch", "epoch"),
    "iterations": ("step", "iterations (optimizer steps)"),
    "examples seen": ("examples_seen", "examples seen"),
    "wall time": ("elapsed_s", "training time (s)"),
}


def curve_chart(
    df: pd.DataFrame, y: str, x: str = "epoch", y_title: str | None = None
) -> alt.Chart:
    """Mean curve per batch size with a +-1 std band over seeds."""
    xcol, xtitle = X_AXES[x]
    data = df.assign(
        lo=df[f"{y}_mean"] - df[f"{y}_std"].fillna(0.0),
        hi=df[f"{y}_mean"] + df[f"{y}_std"].fillna(0.0),
        series=df["batch_size"].astype(str),
    )
    color = alt.Color("batch_size:O", title="batch size", scale=alt.Scale(scheme="viridis"))
    base = alt.Chart(data).encode(x=alt.X(f"{xcol}:Q", title=xtitle), color=color)
    line = base.mark_line().encode(
        y=alt.Y(f"{y}_mean:Q", title=y_title or y, scale=alt.Scale(zero=False)),
        tooltip=["batch_size", "lr", "lr_scaling", "epoch", f"{y}_mean", "n_seeds"],
        detail="lr_scaling:N",
        strokeDash=alt.StrokeDash("lr_scaling:N", title="lr rule"),
    )
    band = base.mark_area(opacity=0.15).encode(y="lo:Q", y2="hi:Q", detail="lr_scaling:N")
    return (band + line).properties(height=320)
