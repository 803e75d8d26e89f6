"""Distance: distance from init by batch size and per layer (F-7, F-16), epoch distance and
the small/large ratio over epochs (F-8), update-norm distributions with medians (F-9)."""

from __future__ import annotations

import streamlit as st

from app.charts import batch_chart, curve_chart, layer_chart, ratio_chart, update_norm_chart
from app.common import filters, no_data, query, require_data
from app.show import heading, per_experiment, show_chart

st.title("Distance travelled by batch size")
st.caption(
    "F-7: small-batch minimizers lie farther from the initial weights, in every layer. "
    "F-16: with a scaled lr the large batches move closer. F-8: large batches travel less per "
    "epoch. F-9: each update is smaller. Distances are Euclidean norms over the trainable "
    "parameters (parameter units); mean +-1 std over seeds."
)
require_data()
f = filters()
df = query("distance_by_batch_size", f)
if df.empty:
    st.info("No completed trials match the filters.")
    st.stop()
layers = query("distance_by_layer", f)
rel = st.toggle("per layer: relative to the layer's initial norm", key="dist_rel")
for exp, d in per_experiment({"df": df, "layers": layers}):
    heading(exp)
    tag = exp or "all"
    left, right = st.columns(2)
    with left:
        st.subheader("Final distance from init")
        show_chart(
            f"dist-{tag}",
            batch_chart,
            d["df"],
            "dist_from_init",
            "||theta_T - theta_0|| (parameter units)",
            cache_on=(rel,),
        )
    with right:
        st.subheader("Per layer")
        if d["layers"].empty:
            no_data("per-layer rows", "Enable measure.layers in grid.yaml.")
        else:
            y = "rel_dist_from_init" if rel else "dist_from_init"
            title = (
                "||delta_l|| / ||theta_0,l|| (ratio, log)"
                if rel
                else "||delta_l|| (parameter units, log)"
            )
            st.caption("error bars reaching 0 or below are cut at the axis' lower end (log)")
            show_chart(f"layers-{tag}", layer_chart, d["layers"], y, title, cache_on=(rel,))

st.subheader("Epoch distance (F-8)")
ed = query("epoch_distance", f)
ratio = query("epoch_distance_ratio", f)
if ed.empty or ed["epoch_distance_mean"].isna().all():
    no_data("epoch distances")
else:
    for exp, d in per_experiment({"ed": ed, "ratio": ratio}):
        heading(exp)
        tag = exp or "all"
        left, right = st.columns(2)
        with left:
            show_chart(
                f"epochdist-{tag}",
                curve_chart,
                d["ed"],
                "epoch_distance",
                "epoch",
                "||theta_e - theta_(e-1)|| (parameter units)",
                cache_on=(rel,),
            )
        with right:
            if d["ratio"].empty:
                no_data("ratio", "It needs at least two batch sizes of the same setting.")
            else:
                show_chart(f"ratio-{tag}", ratio_chart, d["ratio"], cache_on=(rel,))

st.subheader("Per-step update norms (F-9)")
hist = query("update_norm_histogram", f)
quant = query("update_norm_quantiles", f)
if hist.empty:
    per_epoch = query("update_norms_by_epoch", f)
    if per_epoch.empty:
        no_data("update norms", "Enable measure.update_norms in grid.yaml.")
    else:
        st.caption("No per-step rows stored (measure.store_steps): per-epoch medians instead.")
        for exp, d in per_experiment({"pe": per_epoch}):
            heading(exp)
            show_chart(
                f"updnorm-epoch-{exp or 'all'}",
                curve_chart,
                d["pe"],
                "update_norm_median",
                "epoch",
                "median update norm (parameter units)",
                cache_on=(rel,),
            )
else:
    st.caption("Dashed rules: each batch size's median (mean over seeds of per-trial medians).")
    for exp, d in per_experiment({"hist": hist, "quant": quant}):
        heading(exp)
        show_chart(
            f"updnorm-{exp or 'all'}", update_norm_chart, d["hist"], d["quant"], cache_on=(rel,)
        )
    st.dataframe(quant, hide_index=True, width="stretch")
