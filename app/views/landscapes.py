"""Loss landscapes: 1-D interpolation between minimizers (F-10) and 2-D filter-normalized
surfaces side by side (F-12)."""

from __future__ import annotations

import streamlit as st

from app.charts import interpolation_chart, surface_chart
from app.common import filters, no_data, query, require_data

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
    runs = sorted(one["analysis_id"].unique())
    pick = st.multiselect("interpolations", runs, default=runs[:4], key="land_1d")
    st.altair_chart(interpolation_chart(one[one["analysis_id"].isin(pick)]), width="stretch")
st.subheader("2-D surfaces")
two = query("landscape_2d", f)
if two.empty:
    no_data("surfaces", "Run a surface analysis (docs/landscapes.md).")
else:
    split = st.radio("split", sorted(two["split"].unique()), horizontal=True, key="land_split")
    two = two[two["split"] == split]
    runs = sorted(two["analysis_id"].unique())
    pick = st.multiselect("surfaces", runs, default=runs[:4], key="land_2d")
    if pick:
        st.altair_chart(surface_chart(two[two["analysis_id"].isin(pick)]))
    else:
        st.info("Pick at least one surface.")
