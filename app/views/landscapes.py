"""Loss landscapes: 1-D interpolation between minimizers (F-10) and 2-D filter-normalized
surfaces side by side (F-12)."""

from __future__ import annotations

import streamlit as st

from app.common import filters, no_data, query, require_data
from app.labels import analysis_labels
from app.landscape_charts import INTERP_Y, SURFACE_MODES, interpolation_chart, surface_chart
from app.show import show_chart

st.title("Loss landscapes")
st.caption(
    "F-10: along theta(a) = a theta_large + (1 - a) theta_small, a in [-1, 2], the loss is flat "
    "around the small-batch minimizer (a = 0) and sharp around the large-batch one (a = 1). "
    "F-12: filter-normalized 2-D surfaces (Li et al. 2018) are sharper for large batches."
)
require_data()
f = filters()
st.subheader("1-D interpolation")
one = query("landscape_1d", f)
if one.empty:
    no_data("interpolations", "Run an interpolation analysis (docs/landscapes.md).")
else:
    names = analysis_labels(one)
    runs = sorted(names, key=lambda a: names[a])
    st.caption(
        "As in Keskar et al. (2017), Fig. 3: one curve per batch-size pair, train solid and "
        "validation dashed; line: the mean over the pair's interpolations (seeds), band: "
        "their min-max."
    )
    c1, c2 = st.columns([1, 3])
    y = c1.radio("y", list(INTERP_Y), horizontal=True, key="land_y")
    pick = c2.multiselect(
        "interpolations", runs, default=runs, format_func=names.get, key="land_1d"
    )
    if pick:
        sub = one[one["analysis_id"].isin(pick)]
        show_chart("interpolation", interpolation_chart, sub, y)
    else:
        st.info("Pick at least one interpolation.")
st.subheader("2-D surfaces")
two = query("landscape_2d", f)
if two.empty:
    no_data("surfaces", "Run a surface analysis (docs/landscapes.md).")
else:
    c1, c2 = st.columns(2)
    split = c1.radio("split", sorted(two["split"].unique()), horizontal=True, key="land_split")
    mode = c2.radio("colour", list(SURFACE_MODES), format_func=SURFACE_MODES.get, key="land_mode")
    two = two[two["split"] == split]
    names = analysis_labels(two)
    runs = sorted(
        names, key=lambda a: (two.loc[two["analysis_id"] == a, "batch_size_a"].iloc[0], names[a])
    )
    pick = st.multiselect("surfaces", runs, default=runs[:4], format_func=names.get, key="land_2d")
    if pick:
        sub = two[two["analysis_id"].isin(pick)]
        show_chart(f"surface-{split}", surface_chart, sub, names, mode)
    else:
        st.info("Pick at least one surface.")
