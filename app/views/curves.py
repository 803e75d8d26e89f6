"""Training and validation curves by batch size (F-1, F-30, F-31)."""

from __future__ import annotations

import streamlit as st

from app.charts import X_AXES, curve_chart
from app.common import filters, query, require_data, series_label

st.title("Training and validation curves by batch size")
st.caption(
    "F-1: the larger the batch, the slower the training loss falls per epoch. "
    "F-30: every curve against epochs, iterations, examples seen and wall time. "
    "Lines: mean over seeds; bands: +-1 std over seeds."
)
require_data()
f = filters()
df = query("curves", f)
if df.empty:
    st.info("No per-epoch rows for the selected trials (completed trials write one per epoch).")
    st.stop()
df = df.assign(series=series_label(df))
x = st.radio("x axis", list(X_AXES), horizontal=True, key="curves_x")
left, right = st.columns(2)
with left:
    st.subheader("Training loss")
    y = "train_loss_eval" if df["train_loss_eval_mean"].notna().any() else "train_loss"
    st.caption("full training set, eval mode" if y == "train_loss_eval" else "mean mini-batch loss")
    st.altair_chart(curve_chart(df, y, x, "train loss (nats)"), width="stretch")
with right:
    st.subheader("Validation loss")
    st.caption("cross-entropy on the validation split")
    st.altair_chart(curve_chart(df, "val_loss", x, "validation loss (nats)"), width="stretch")
st.subheader("Validation accuracy")
st.altair_chart(curve_chart(df, "val_acc", x, "validation accuracy (fraction)"), width="stretch")
