"""Parallel coordinates: every selected trial as a line through its hyperparameters and a
chosen metric (colour), to see which settings go with good results."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.common import filters, require_data
from app.labels import trial_label
from app.run_charts import parallel_chart
from app.runs_data import runs, varying
from app.show import show_chart

st.title("Parallel coordinates")
st.caption(
    "One line per trial through its hyperparameters and, on the last axis, the chosen metric "
    "(also its colour: yellow = lowest). Numbers spanning more than 10x are on a log scale; "
    "hover a line for the trial and its values."
)
require_data()
f = filters(include_status=True)
df = runs(f)
if df.empty:
    st.info("No trials match the sidebar's filters.")
    st.stop()
METRICS = ["best_val_loss", "best_val_acc", "final_val_loss", "final_train_loss"]
METRICS += ["best_epoch", "epochs_run", "steps_to_target", "train_time_s", "final_dist_from_init"]
metrics = [m for m in METRICS if m in df and df[m].notna().any()]
numeric = [
    c
    for c in df.columns
    if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
]
metrics += [c for c in numeric if c not in metrics and c.startswith(("mean_", "at_best_"))]
HYPER = ["batch_size", "lr", "lr_scaling", "scaled_lr", "model", "optimizer", "dataset"]
HYPER += ["batchnorm", "momentum", "warmup_epochs", "seed", "data_parallel_workers"]
candidates = [c for c in HYPER if c in df] + [c for c in df.columns if c.startswith("cfg.")]
candidates = [c for c in dict.fromkeys(candidates) if df[c].notna().any()]
vary = [c for c in varying(df, candidates) if c != "seed"]
c1, c2 = st.columns([3, 1])
axes = c1.multiselect(
    "hyperparameter axes", candidates, default=vary[:8] or candidates[:3], key="par_axes"
)
metric = c2.selectbox("metric (last axis, colour)", metrics, key="par_metric")
if not axes:
    st.info("Pick at least one hyperparameter axis.")
    st.stop()
axes = [a for a in axes if a != metric]
data = df[["trial_id", *axes, metric]].copy()
data["run"] = [trial_label(r) for r in df.to_dict("records")]
show_chart(f"parallel-{metric}", parallel_chart, data, axes, metric)
n_bad = int(df[metric].isna().sum())
if n_bad:
    st.caption(f"{n_bad} trials without a {metric} (failed, diverged) sit off the metric axis.")
