"""Learning rate x batch size: heatmap of the best validation loss and validation loss vs lr
per batch size, marking each batch size's best lr (F-13, F-17, F-23); diverged trials (F-25)."""

from __future__ import annotations

import streamlit as st

from app.charts import lr_curve_chart, lr_heatmap
from app.common import filters, query, require_data, series_label
from app.show import show_chart

st.title("Learning rate x batch size")
st.caption(
    "F-13: linear lr scaling removes most of the gap. F-17: small batches want a small lr, "
    "large batches a large one. F-23: try lrs on a decade grid. Values: minimum validation "
    "loss, mean over seeds."
)
require_data()
f = filters()
df = query("lr_batch_table", f)
if df.empty:
    st.info("No completed trials match the filters.")
    st.stop()
df = df.assign(series=series_label(df, exclude=("batch_size", "lr")))
# Default: the setting with the most lrs (the one a heatmap says most about).
n_lrs = df.groupby("series")["lr"].nunique().sort_values(ascending=False, kind="stable")
series = list(n_lrs.index)
pick = st.selectbox("setting", series, key="lr_series") if len(series) > 1 else series[0]
one = df[df["series"] == pick]
left, right = st.columns(2)
with left:
    st.subheader("Heatmap (ring: each batch size's best lr)")
    show_chart("lr-heatmap", lr_heatmap, one)
with right:
    st.subheader("Validation loss vs lr")
    show_chart("lr-curves", lr_curve_chart, one)
best = query("best_lr_by_batch_size", f)
st.subheader("Best lr per batch size")
st.dataframe(best, hide_index=True, width="stretch")

st.subheader("Diverged trials (F-25)")
div = query("diverged_trials", f)
if div.empty:
    st.info("No trial of the selection diverged.")
else:
    st.dataframe(div, hide_index=True, width="stretch")
