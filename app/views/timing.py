"""Time: time per epoch, epochs and time to the minimum validation loss by batch size, with
and without lr scaling (F-3, F-4, F-5, F-14), per data-parallel worker count (F-6)."""

from __future__ import annotations

import streamlit as st

from app.charts import batch_chart, workers_chart
from app.common import filters, query, require_data, series_label

st.title("Time by batch size")
st.caption(
    "F-3: larger batches take less time per epoch. F-4: but more epochs to the minimum. "
    "F-5: so at a fixed lr they take longer in total. F-14: with a scaled lr they converge in "
    "about as many epochs, so sooner. F-6: data parallelism helps large batches most. "
    "Times are training seconds (evaluation excluded), mean +-1 std over seeds."
)
require_data()
f = filters()
df = query("time_by_batch_size", f)
if df.empty:
    st.info("No completed trials match the filters.")
    st.stop()
df = df.assign(series=series_label(df))
c1, c2 = st.columns(2)
with c1:
    st.subheader("Time per epoch")
    st.altair_chart(batch_chart(df, "epoch_time_s", "time per epoch (s)"), width="stretch")
with c2:
    st.subheader("Epochs to the minimum")
    st.altair_chart(
        batch_chart(df, "epochs_to_min", "epochs to min validation loss"), width="stretch"
    )
c3, c4 = st.columns(2)
with c3:
    st.subheader("Time to the minimum")
    st.altair_chart(
        batch_chart(df, "time_to_min_s", "training time to min val loss (s)"), width="stretch"
    )
with c4:
    st.subheader("Data-parallel workers (F-6)")
    dp = query("time_by_workers", f)
    if dp.empty or dp["workers"].nunique() < 2:
        st.info(
            "All selected trials ran on one worker. Run the grid with data_parallel_workers > 1 "
            "(and the same settings on one worker) to compare per-epoch times by GPU count."
        )
    else:
        dp = dp.assign(series=series_label(dp, exclude=("batch_size", "workers")))
        st.altair_chart(workers_chart(dp), width="stretch")
        with st.expander("Speedup table"):
            st.dataframe(dp.drop(columns="series"), hide_index=True, width="stretch")
with st.expander("Table"):
    st.dataframe(df.drop(columns="series"), hide_index=True, width="stretch")
