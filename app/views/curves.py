"""Training and validation curves by batch size (F-1, F-30, F-31), and every user-defined
metric of the `metrics` table (custom trainables) when the warehouse has one."""

from __future__ import annotations

import streamlit as st

from app.charts import X_AXES, curve_chart
from app.common import filters, query, require_data
from app.metrics import metric_curves, metric_names
from app.show import heading, per_experiment, show_chart

st.title("Training and validation curves by batch size")
st.caption(
    "F-1: the larger the batch, the slower the training loss falls per epoch. "
    "F-30: every curve against epochs, iterations, examples seen and wall time. "
    "Lines: mean over seeds; bands: +-1 std over seeds. Scroll to zoom, drag to pan, "
    "double-click to reset; hover a point for its values."
)
require_data()
f = filters()
df = query("curves", f)
if df.empty:
    st.info("No per-epoch rows for the selected trials (completed trials write one per epoch).")
    st.stop()
c1, c2, c3 = st.columns([3, 2, 1])
x = c1.radio("x axis", list(X_AXES), horizontal=True, key="curves_x")
smoothing = c2.slider("smoothing (EMA weight)", 0.0, 0.95, 0.0, 0.05, key="curves_smooth")
log_y = c3.toggle("log y", key="curves_log")
opts = {"log_y": log_y, "smoothing": smoothing}
y_train = "train_loss_eval" if df["train_loss_eval_mean"].notna().any() else "train_loss"
train_note = (
    "full training set, eval mode" if y_train == "train_loss_eval" else "mean mini-batch loss"
)
for exp, d in per_experiment({"df": df}):
    heading(exp)
    part = d["df"]
    tag = exp or "all"
    left, right = st.columns(2)
    with left:
        st.subheader("Training loss")
        st.caption(train_note)
        show_chart(
            f"train-{tag}",
            curve_chart,
            part,
            y_train,
            x,
            "train loss (nats)",
            **opts,
            cache_on=(x, smoothing, log_y),
        )
    with right:
        st.subheader("Validation loss")
        st.caption("cross-entropy on the validation split")
        show_chart(
            f"val-{tag}",
            curve_chart,
            part,
            "val_loss",
            x,
            "validation loss (nats)",
            **opts,
            cache_on=(x, smoothing, log_y),
        )
    st.subheader("Validation accuracy")
    show_chart(
        f"acc-{tag}",
        curve_chart,
        part,
        "val_acc",
        x,
        "validation accuracy (fraction)",
        **opts,
        cache_on=(x, smoothing, log_y),
    )

names = metric_names(f)
if names:
    st.header("User-defined metrics")
    st.caption("Rows of the `metrics` table (custom trainables' own metrics), mean over seeds.")
    pick = st.multiselect("metrics", names, default=names[:4], key="curves_metrics")
    mx = x if x in ("epoch", "iterations") else "epoch"
    if mx != x:
        st.caption("User metrics are drawn against epochs (they carry epoch and step only).")
    for name in pick:
        m = metric_curves(f, name)
        st.subheader(name)
        for exp, d in per_experiment({"df": m}):
            heading(exp)
            show_chart(
                f"metric-{name}-{exp or 'all'}",
                curve_chart,
                d["df"],
                "value",
                mx,
                f"{name} (as logged)",
                **opts,
                cache_on=(x, smoothing, log_y),
            )
