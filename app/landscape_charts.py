"""Loss-landscape charts: the 1-D interpolation between two minimizers (F-10, shaped like
Keskar et al. 2017, Fig. 3) and 2-D filter-normalized surfaces side by side (F-12, Li et al.
2018). Shared pieces (legends, log-axis filtering, sizes) are in app/chart_kit.py."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from app.chart_kit import PANEL, PLOT_HEIGHT, fit_legend, interactive, positive
from app.labels import setting_text

INTERP_Y = {
    "loss": ("loss", "loss (nats, log)"),
    "accuracy": ("acc", "accuracy (fraction)"),
}
_INTERP_SETTINGS = ("experiment", "dataset", "model", "lr_scaling", "lr")


def interpolation_data(df: pd.DataFrame) -> pd.DataFrame:
    """F-10, Keskar et al. Fig. 3: per batch-size pair ('bs 32 -> 256', plus the settings
    that tell pairs apart), split and alpha, the mean, min and max of loss and accuracy over
    the interpolations (seeds) of that pair, and how many there are."""
    if df.empty:
        return df.assign(pair="", n=0)
    keys = [c for c in _INTERP_SETTINGS if c in df]
    pair = (
        "bs "
        + df["batch_size_a"].astype("Int64").astype(str)
        + " -> "
        + df["batch_size_b"].astype("Int64").astype(str)
    )
    extra = [c for c in keys if df[c].nunique(dropna=False) > 1]
    for c in extra:
        pair = pair + ", " + df[c].map(lambda v, c=c: setting_text(c, v)).astype(str)
    data = df.assign(pair=pair.astype(str))
    out = (
        data.groupby(["pair", "split", "alpha"], dropna=False)
        .agg(
            batch_size_a=("batch_size_a", "min"),
            batch_size_b=("batch_size_b", "min"),
            loss=("loss", "mean"),
            loss_min=("loss", "min"),
            loss_max=("loss", "max"),
            acc=("acc", "mean"),
            acc_min=("acc", "min"),
            acc_max=("acc", "max"),
            n=("analysis_id", "nunique"),
        )
        .reset_index()
    )
    return out.sort_values(["batch_size_a", "batch_size_b", "pair", "split", "alpha"])


def interpolation_chart(df: pd.DataFrame, y: str = "loss") -> alt.LayerChart:
    """F-10 shaped like Keskar et al. Fig. 3: along theta(a) = a theta_large + (1 - a)
    theta_small, one curve per batch-size pair (colour), train solid and validation dashed,
    the mean over the pair's interpolations (seeds) with their min-max as a band; `y`:
    "loss" (log axis, non-positive values left out) or "accuracy". Rules at a = 0 (the
    small-batch minimizer) and a = 1 (the large-batch one)."""
    col, title = INTERP_Y[y]
    data = interpolation_data(df)
    log = col == "loss"
    if log:
        data = positive(data, "loss", "loss_min")
    pairs = list(dict.fromkeys(data["pair"]))
    x = alt.X("alpha:Q", title="alpha (0 = small-batch minimizer, 1 = large-batch; ratio)")
    color = alt.Color(
        "pair:N", title="batch sizes (small -> large)", sort=pairs, legend=fit_legend(pairs)
    )
    base = alt.Chart(data).encode(x=x, color=color, detail="split:N")
    yscale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    line = base.mark_line().encode(
        y=alt.Y(f"{col}:Q", title=title, scale=yscale),
        strokeDash=alt.StrokeDash(
            "split:N", title="split", sort=["train", "val"], legend=fit_legend(["train"], dash=True)
        ),
        tooltip=["pair", "split", "alpha", col, f"{col}_min", f"{col}_max", "n"],
    )
    band = base.mark_area(opacity=0.15).encode(y=f"{col}_min:Q", y2=f"{col}_max:Q")
    rules = (
        alt.Chart(pd.DataFrame({"alpha": [0.0, 1.0]}))
        .mark_rule(color="gray", strokeDash=[2, 2])
        .encode(x="alpha:Q")
    )
    return interactive((rules + band + line).properties(height=PLOT_HEIGHT))


SURFACE_COLUMNS = 2  # panels per row: two 300 px panels fit a 1400 px window's main column
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
            legend=alt.Legend(orient="top", gradientLength=180, titleLimit=0),
        )
    else:
        color = alt.Color(
            "log_loss:Q",
            title="log10 loss (nats)",
            scale=alt.Scale(scheme="viridis"),
            legend=alt.Legend(orient="top", gradientLength=240, titleLimit=0),
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
        .properties(width=PANEL, height=PANEL)
        .facet(
            facet=alt.Facet(
                "panel:N",
                title=None,
                header=alt.Header(labelLimit=0),
                sort=alt.EncodingSortField(field="batch_size_a", op="min"),
            ),
            columns=SURFACE_COLUMNS,
        )
    )
    if mode == "relative":
        chart = chart.resolve_scale(color="independent").resolve_legend(color="independent")
    return chart
