"""Generalization gap: min validation loss, best validation accuracy and the train-validation
gap by batch size (F-2, F-18, F-26, F-27, F-28)."""

from __future__ import annotations

import streamlit as st

from app.charts import batch_chart
from app.common import filters, query, require_data
from app.show import heading, per_experiment, show_chart

st.title("Generalization gap by batch size")
st.caption(
    "F-2: the larger the batch, the higher the minimum validation loss. F-18: with a tuned lr "
    "the remaining gap is small. F-26: compare train and validation loss. F-27/F-28: without "
    "BatchNorm moderate batches are best; with it, larger is better. Line: mean over seeds; "
    "bars: +-1 std; hollow points: each seed (hover for its seed)."
)
require_data()
f = filters()
df = query("generalization_by_batch_size", f)
if df.empty:
    st.info("No completed trials match the filters.")
    st.stop()
for exp, d in per_experiment({"df": df}):
    heading(exp)
    part, tag = d["df"], exp or "all"
    left, right = st.columns(2)
    with left:
        st.subheader("Minimum validation loss")
        show_chart(
            f"minval-{tag}",
            batch_chart,
            part,
            "min_val_loss",
            "min validation loss (nats)",
            cache_on=(),
        )
    with right:
        st.subheader("Best validation accuracy")
        show_chart(
            f"bestacc-{tag}",
            batch_chart,
            part,
            "best_val_acc",
            "best validation accuracy (fraction)",
            cache_on=(),
        )
    st.subheader("Train-validation gap at the best epoch")
    if part["gap_loss_mean"].notna().any():
        st.caption("validation loss minus training loss (full training set, eval mode)")
        show_chart(
            f"gap-{tag}",
            batch_chart,
            part,
            "gap_loss",
            "val loss - train loss (nats)",
            zero=True,
            cache_on=(),
        )
    else:
        st.info(
            "The gap needs the training-set evaluation (measure.train_eval: true in grid.yaml)."
        )
with st.expander("Table"):
    st.dataframe(df, hide_index=True, width="stretch")
