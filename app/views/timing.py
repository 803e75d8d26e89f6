"""Time: time per epoch, epochs and time to the minimum validation loss by batch size, with
and without lr scaling (F-3, F-4, F-5, F-14), per data-parallel worker count (F-6)."""

from __future__ import annotations

import streamlit as st

from app.charts import batch_chart, workers_chart
from app.common import filters, query, require_data
from app.show import heading, per_experiment, show_chart

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
for exp, d in per_experiment({"df": df}):
    heading(exp)
    part, tag = d["df"], exp or "all"
    # Two charts a row: three to a row left each plot under 300 px wide at 1400 px.
    c1, c2 = st.columns(2)
    c3, _ = st.columns(2)
    with c1:
        st.subheader("Time per epoch")
        show_chart(
            f"epoch-{tag}", batch_chart, part, "epoch_time_s", "time per epoch (s)", cache_on=()
        )
    with c2:
        st.subheader("Epochs to the minimum")
        show_chart(
            f"epochs-{tag}",
            batch_chart,
            part,
            "epochs_to_min",
            "epochs to min validation loss (epochs)",
            cache_on=(),
        )
    with c3:
        st.subheader("Time to the minimum")
        show_chart(
            f"tomin-{tag}",
            batch_chart,
            part,
            "time_to_min_s",
            "training time to min val loss (s)",
            cache_on=(),
        )
st.subheader("Data-parallel workers (F-6)")
dp = query("time_by_workers", f)
if dp.empty or dp["workers"].nunique() < 2:
    st.info(
        "All selected trials ran on one worker. Run the grid with data_parallel_workers > 1 "
        "(and the same settings on one worker) to compare per-epoch times by GPU count."
    )
else:
    for exp, d in per_experiment({"dp": dp}, exclude=("batch_size", "workers")):
        heading(exp)
        show_chart(f"workers-{exp or 'all'}", workers_chart, d["dp"], cache_on=())
    with st.expander("Speedup table"):
        st.dataframe(dp, hide_index=True, width="stretch")
with st.expander("Table"):
    st.dataframe(df, hide_index=True, width="stretch")
