"""Distance: distance from init by batch size and per layer (F-7, F-16), epoch distance and
the small/large ratio over epochs (F-8), update-norm distributions with medians (F-9)."""

from __future__ import annotations

import streamlit as st

from app.charts import batch_chart, curve_chart, layer_chart, ratio_chart, update_norm_chart
from app.common import filters, no_data, query, require_data, series_label

st.title("Distance travelled by batch size")
st.caption(
    "F-7: small-batch minimizers lie farther from the initial weights, in every layer. "
    "F-16: with a scaled lr the large batches move closer. F-8: large batches travel less per "
    "epoch. F-9: each update is smaller. Distances are Euclidean norms over the trainable "
    "parameters; mean +-1 std over seeds."
)
require_data()
f = filters()
df = query("distance_by_batch_size", f)
if df.empty:
    st.info("No completed trials match the filters.")
    st.stop()
df = df.assign(series=series_label(df))
left, right = st.columns(2)
with left:
    st.subheader("Final distance from init")
    st.altair_chart(
        batch_chart(df, "dist_from_init", "||theta_T - theta_0|| (parameter units)"),
        width="stretch",
    )
with right:
    st.subheader("Per layer")
    layers = query("distance_by_layer", f)
    if layers.empty:
        no_data("per-layer rows", "Enable measure.layers in grid.yaml.")
    else:
        layers = layers.assign(series=series_label(layers))
        rel = st.toggle("relative to the layer's initial norm", key="dist_rel")
        y = "rel_dist_from_init" if rel else "dist_from_init"
        title = "||delta_l|| / ||theta_0,l|| (ratio, log)" if rel else "||delta_l|| (log)"
        st.altair_chart(layer_chart(layers, y, title), width="stretch")

st.subheader("Epoch distance (F-8)")
ed = query("epoch_distance", f)
ratio = query("epoch_distance_ratio", f)
left, right = st.columns(2)
with left:
    if ed.empty or ed["epoch_distance_mean"].isna().all():
        no_data("epoch distances")
    else:
        ed = ed.assign(series=series_label(ed))
        st.altair_chart(
            curve_chart(ed, "epoch_distance", "epoch", "||theta_e - theta_(e-1)||"),
            width="stretch",
        )
with right:
    if ratio.empty:
        no_data("ratio", "It needs at least two batch sizes of the same setting.")
    else:
        ratio = ratio.assign(series=series_label(ratio))
        st.altair_chart(ratio_chart(ratio), width="stretch")

st.subheader("Per-step update norms (F-9)")
hist = query("update_norm_histogram", f)
quant = query("update_norm_quantiles", f)
if hist.empty:
    per_epoch = query("update_norms_by_epoch", f)
    if per_epoch.empty:
        no_data("update norms", "Enable measure.update_norms in grid.yaml.")
    else:
        st.caption("No per-step rows stored (measure.store_steps): per-epoch medians instead.")
        per_epoch = per_epoch.assign(series=series_label(per_epoch))
        st.altair_chart(
            curve_chart(per_epoch, "update_norm_median", "epoch", "median update norm"),
            width="stretch",
        )
else:
    hist = hist.assign(series=series_label(hist))
    quant = quant.assign(series=series_label(quant))
    st.caption("Dashed rules: each batch size's median (mean over seeds of per-trial medians).")
    st.altair_chart(update_norm_chart(hist, quant), width="stretch")
    st.dataframe(quant.drop(columns="series"), hide_index=True, width="stretch")
