"""Generalization gap: min validation loss, best validation accuracy and the train-validation
gap by batch size (F-2, F-18, F-26, F-27, F-28)."""

from __future__ import annotations

import streamlit as st

from app.charts import batch_chart
from app.common import filters, query, require_data, series_label

st.title("Generalization gap by batch size")
st.caption(
    "F-2: the larger the batch, the higher the minimum validation loss. F-18: with a tuned lr "
    "the remaining gap is small. F-26: compare train and validation loss. F-27/F-28: without "
    "BatchNorm moderate batches are best; with it, larger is better. Points: mean over seeds; "
    "bars: +-1 std."
)
require_data()
f = filters()
df = query("generalization_by_batch_size", f)
if df.empty:
    st.info("No completed trials match the filters.")
    st.stop()
df = df.assign(series=series_label(df))
left, right = st.columns(2)
with left:
    st.subheader("Minimum validation loss")
    st.altair_chart(batch_chart(df, "min_val_loss", "min validation loss (nats)"), width="stretch")
with right:
    st.subheader("Best validation accuracy")
    st.altair_chart(
        batch_chart(df, "best_val_acc", "best validation accuracy (fraction)"), width="stretch"
    )
st.subheader("Train-validation gap at the best epoch")
if df["gap_loss_mean"].notna().any():
    st.caption("validation loss minus training loss (full training set, eval mode)")
    st.altair_chart(
        batch_chart(df, "gap_loss", "val loss - train loss (nats)", zero=True), width="stretch"
    )
else:
    st.info("The gap needs the training-set evaluation (measure.train_eval: true in grid.yaml).")
with st.expander("Table"):
    st.dataframe(df.drop(columns="series"), hide_index=True, width="stretch")
