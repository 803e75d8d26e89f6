"""Training and validation curves by batch size (F-1, F-30, F-31)."""

from __future__ import annotations

import streamlit as st

from app.charts import X_AXES, curve_chart
from app.common import query, require_data, sidebar_filters

st.title("Training and validation curves by batch size")
st.caption(
    "F-1: the larger the batch, the slower the training loss falls per epoch. "
    "F-30: every curve against epochs, iterations, examples seen and wall time."
)
require_data()
f = sidebar_filters()
df = query("curves", f)
if df.empty:
    st.info("No per-epoch rows for the selected trials.")
    st.stop()
x = st.radio("x axis", list(X_AXES), horizontal=True, key="curves_x")
left, right = st.columns(2)
with left:
    st.subheader("Training loss (full set, eval mode)")
    st.altair_chart(curve_chart(df, "train_loss_eval", x, "train loss"), width="stretch")
with right:
    st.subheader("Validation loss")
    st.altair_chart(curve_chart(df, "val_loss", x, "validation loss"), width="stretch")
st.subheader("Validation accuracy")
st.altair_chart(curve_chart(df, "val_acc", x, "validation accuracy"), width="stretch")
