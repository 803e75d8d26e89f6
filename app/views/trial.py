"""Trial: one run in full - its settings and config, provenance, every curve (and its
user-defined metrics), probes, layers, checkpoints, and the verdict groups it is part of."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import streamlit as st

from app.common import filters, findings, require_data
from app.filters import selected_runs
from app.labels import trial_label
from app.metrics import trial_metrics
from app.run_charts import RUN_X, trial_curves_chart
from app.runs_data import PROVENANCE, checkpoints, rows, runs, trial, verdict_contributions
from app.show import show_chart

st.title("Trial")
require_data()
f = filters(include_status=True)
table = runs(f)
if table.empty:
    st.info("No trials match the sidebar's filters.")
    st.stop()
ids = list(table["trial_id"])
labels = {r.trial_id: trial_label(r._asdict()) for r in table.itertuples(index=False)}
picked = [t for t in selected_runs() if t in labels]
options = picked + [t for t in ids if t not in picked]
want = st.query_params.get("trial")
if "trial_pick" not in st.session_state or st.session_state["trial_pick"] not in labels:
    st.session_state["trial_pick"] = want if want in labels else options[0]
tid = st.selectbox(
    "trial" + (" (the runs selected on the Runs page first)" if picked else ""),
    options,
    format_func=lambda t: f"{labels[t]}  [{t}]",
    key="trial_pick",
)
st.query_params["trial"] = tid
one = table[table["trial_id"] == tid].iloc[0]
row = trial(str(one["experiment"]), tid)
st.subheader(labels[tid])
m = st.columns(6)
m[0].metric("status", str(row.get("status")))
m[1].metric("stop reason", str(row.get("stop_reason")))
m[2].metric("best val loss (nats)", f"{row.get('best_val_loss', float('nan')):.4g}")
m[3].metric("best val acc", f"{row.get('best_val_acc', float('nan')):.4g}")
m[4].metric("epochs", str(row.get("epochs_run")))
m[5].metric("train time (s)", f"{row.get('train_time_s', float('nan')):.3g}")
if row.get("error"):
    with st.expander("error (traceback)", expanded=True):
        st.code(str(row["error"]))

tabs = st.tabs(["Curves", "Config", "Provenance", "Probes", "Layers", "Checkpoints", "Verdicts"])
with tabs[0]:
    ep = rows("epochs", [tid])
    um = trial_metrics([tid])
    x = st.radio("x axis", list(RUN_X), horizontal=True, key="trial_x")
    xcols = ["epoch", "step", "examples_seen", "elapsed_s"]
    skip = {"experiment", "trial_id", "config_hash", "code_version", *xcols}
    curves = [
        c
        for c in ep.columns
        if c not in skip and pd.api.types.is_numeric_dtype(ep[c]) and ep[c].notna().any()
    ]
    long = ep.melt(id_vars=[c for c in xcols if c in ep], value_vars=curves, var_name="metric")
    if not um.empty:
        steps = ep[["epoch", "step", "examples_seen", "elapsed_s"]] if not ep.empty else None
        u = um[um["epoch"].notna()].rename(columns={"name": "metric"})
        u = u.assign(metric="user: " + u["metric"].astype(str))
        if steps is not None:
            u = u.drop(columns="step").merge(steps, on="epoch", how="left")
        long = pd.concat([long, u[[c for c in long.columns if c in u]]], ignore_index=True)
    long = long[long["value"].notna()]
    if long.empty:
        st.info("This trial wrote no per-epoch rows (a failed or diverged trial may not).")
    else:
        st.caption(f"{long['metric'].nunique()} curves; each panel has its own y scale.")
        show_chart(f"trial-{tid}", trial_curves_chart, long, x)
with tabs[1]:
    cfg = row.get("config_json")
    try:
        st.json(json.loads(cfg) if cfg else {}, expanded=2)
    except ValueError:
        st.code(str(cfg))
with tabs[2]:
    prov = {k: row.get(k) for k in PROVENANCE if k in row}
    st.table(pd.DataFrame({"value": [str(v) for v in prov.values()]}, index=list(prov)))
with tabs[3]:
    pr = rows("probes", [tid])
    if pr.empty:
        st.info("No probes for this trial (measure.sharpness / hessian / noise_scale).")
    else:
        st.dataframe(pr.drop(columns=["experiment", "trial_id"], errors="ignore"), hide_index=True)
with tabs[4]:
    ly = rows("layers", [tid])
    if ly.empty:
        st.info("No per-layer rows (measure.layers).")
    else:
        st.dataframe(ly.drop(columns=["experiment", "trial_id"], errors="ignore"), hide_index=True)
with tabs[5]:
    ck = checkpoints(str(one["experiment"]), tid)
    if ck.empty:
        st.info("No checkpoint files under the storage root for this trial.")
    else:
        st.dataframe(ck, hide_index=True, width="stretch")
with tabs[6]:
    st.caption("The findings' groups (settings) this trial is a seed of, and their tests.")
    if st.toggle("evaluate the findings on the current selection", key="trial_verdicts"):
        judged = dataclasses.replace(f, status=("completed",), trial_id=())  # as on Findings
        contrib = verdict_contributions(findings(judged), row)
        if contrib.empty:
            st.info("This trial is in no tested group of the current selection's findings.")
        else:
            st.dataframe(contrib, hide_index=True, width="stretch")
