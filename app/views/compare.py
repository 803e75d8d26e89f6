"""Compare runs: the chosen trials' curves overlaid (any per-epoch column or user metric),
against epochs, iterations, examples seen or training time; their settings side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.common import filters, require_data
from app.filters import selected_runs, set_selected_runs
from app.labels import trial_label
from app.metrics import trial_metrics
from app.run_charts import RUN_X, compare_chart
from app.runs_data import rows, runs, varying
from app.show import show_chart

UNITS = {
    "train_loss": "train loss (nats)",
    "train_loss_eval": "train loss, eval mode (nats)",
    "val_loss": "validation loss (nats)",
    "val_acc": "validation accuracy (fraction)",
    "train_acc_eval": "train accuracy (fraction)",
    "lr": "learning rate",
    "dist_from_init": "distance from init (parameter units)",
    "epoch_distance": "epoch distance (parameter units)",
    "epoch_time_s": "epoch time (s)",
    "examples_per_s": "throughput (examples/s)",
}

st.title("Compare runs")
require_data()
f = filters(include_status=True)
table = runs(f)
if table.empty:
    st.info("No trials match the sidebar's filters.")
    st.stop()
labels = {r.trial_id: trial_label(r._asdict()) for r in table.itertuples(index=False)}
chosen = [t for t in selected_runs() if t in labels]


def _store() -> None:
    set_selected_runs(st.session_state["compare_pick"])


st.session_state["compare_pick"] = chosen
pick = st.multiselect(
    "trials (the Runs page's selection; add or remove here)",
    list(labels),
    format_func=lambda t: labels[t],
    key="compare_pick",
    on_change=_store,
)
if not pick:
    st.info("Select runs on the Runs page (tick rows), or pick trials here.")
    st.stop()
ep = rows("epochs", pick)
um = trial_metrics(pick)
xcols = ["epoch", "step", "examples_seen", "elapsed_s"]
skip = {"experiment", "trial_id", "config_hash", "code_version", *xcols}
metrics = [c for c in ep.columns if c not in skip and pd.api.types.is_numeric_dtype(ep[c])]
metrics = [c for c in metrics if ep[c].notna().any()]
user = sorted(um["name"].dropna().unique()) if not um.empty else []
choices = metrics + [f"user: {n}" for n in user]
if not choices:
    st.info("The chosen trials wrote no per-epoch rows.")
    st.stop()
c1, c2, c3, c4 = st.columns([2, 3, 2, 1])
default = choices.index("val_loss") if "val_loss" in choices else 0
y = c1.selectbox("metric", choices, index=default, key="compare_y")
x = c2.radio("x axis", list(RUN_X), horizontal=True, key="compare_x")
smoothing = c3.slider("smoothing (EMA weight)", 0.0, 0.95, 0.0, 0.05, key="compare_smooth")
log_y = c4.toggle("log y", key="compare_log")
if y.startswith("user: "):
    name = y[len("user: ") :]
    data = um[(um["name"] == name) & um["epoch"].notna()].drop(columns="step")
    data = data.merge(ep[["trial_id", *xcols]], on=["trial_id", "epoch"], how="left")
    ycol, title = "value", f"{name} (as logged)"
else:
    data, ycol, title = ep, y, UNITS.get(y, y)
data = data.assign(run=data["trial_id"].map(labels))
show_chart(
    f"compare-{y}-{x}", compare_chart, data, ycol, title, x, log_y=log_y, smoothing=smoothing
)
st.subheader("Their settings (the columns that differ)")
sub = table[table["trial_id"].isin(pick)]
cols = ["trial_id"] + [c for c in varying(sub) if c != "trial_id"]
st.dataframe(sub[cols].set_index("trial_id").T.astype(str), width="stretch")
