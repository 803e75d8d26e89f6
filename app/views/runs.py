"""Runs: every selected trial with every hyperparameter and summary column; filter and sort
by any of them, select rows - the selection drives the Trial and Compare pages and, with
"Only the selected runs" in the sidebar, every other page."""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from app.common import filters, page_link, require_data
from app.filters import selected_runs, set_selected_runs
from app.runs_data import runs, varying

st.title("Runs")
st.caption(
    "One row per trial: its settings, the resolved config's hyperparameters (`cfg.*`) and its "
    "results. Click a column header to sort; add filters on any column below; tick rows to "
    "select runs for the Trial and Compare pages (the selection is kept in the URL)."
)
require_data()
# Every run of the sidebar's filters, also when "Only the selected runs" is on (to pick more).
f = dataclasses.replace(filters(include_status=True), trial_id=())
df = runs(f)
if df.empty:
    st.info("No trials match the sidebar's filters.")
    st.stop()

# Default columns: identity, the settings that vary, the main results.
MAIN = ["experiment", "trial_id", "status", "stop_reason", "model", "dataset", "optimizer"]
MAIN += ["batch_size", "lr", "lr_scaling", "scaled_lr", "seed"]
RESULTS = ["best_val_loss", "best_val_acc", "best_epoch", "epochs_run", "steps_run"]
RESULTS += ["final_dist_from_init", "train_time_s", "wall_time_s", "diverged_step"]
show_all = st.toggle("every column", key="runs_all_cols", help="else: settings that vary, results")
if show_all:
    columns = list(df.columns)
else:
    vary = varying(df, [c for c in df.columns if c.startswith("cfg.")])
    columns = [c for c in MAIN if c in df.columns] + vary + [c for c in RESULTS if c in df]
    columns = list(dict.fromkeys(columns))

with st.expander("Filter rows by any column", expanded=False):
    pick = st.multiselect("columns to filter on", list(df.columns), key="runs_filter_cols")
    keep = pd.Series(True, index=df.index)
    for col in pick:
        s = df[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            finite = s[s.notna()].astype(float)
            if finite.empty or finite.min() == finite.max():
                st.caption(f"{col}: a single value")
                continue
            lo, hi = float(finite.min()), float(finite.max())
            a, b = st.slider(col, lo, hi, (lo, hi), key=f"runs_rng_{col}")
            keep &= s.between(a, b) | (s.isna() & (a == lo) & (b == hi))
        else:
            values = sorted(s.astype(str).unique())
            chosen = st.multiselect(col, values, default=values, key=f"runs_val_{col}")
            keep &= s.astype(str).isin(chosen)
    text = st.text_input(
        "pandas query (optional)",
        key="runs_query",
        placeholder="best_val_acc > 0.9 and batch_size <= 64",
        help="DataFrame.query on the table's columns (backquote names with dots: `cfg.x`)",
    )
    if text.strip():
        try:
            keep &= df.index.isin(df.query(text).index)
        except Exception as exc:  # a bad expression: say why, keep the rows
            st.error(f"query not applied: {exc}")
view = df[keep].reset_index(drop=True)
st.caption(f"{len(view):,} of {len(df):,} trials")

chosen_ids = [t for t in selected_runs() if t in set(view["trial_id"])]
default_rows = [int(i) for i in view.index[view["trial_id"].isin(chosen_ids)]]
event = st.dataframe(
    view[columns],
    hide_index=True,
    width="stretch",
    height=min(36 * (len(view) + 1) + 4, 640),
    key="runs_table",
    on_select="rerun",
    selection_mode="multi-row",
    selection_default={"selection": {"rows": default_rows}},
    column_config={
        "trial_id": st.column_config.TextColumn("trial_id", width="small"),
        "best_val_acc": st.column_config.NumberColumn("best_val_acc", format="%.4f"),
        "best_val_loss": st.column_config.NumberColumn("best_val_loss", format="%.4f"),
    },
)
rows = list(event.selection.rows) if event is not None and hasattr(event, "selection") else []
ids = [str(view.at[i, "trial_id"]) for i in rows if i < len(view)]
# Runs selected earlier but hidden by a filter now stay selected.
hidden = [t for t in selected_runs() if t not in set(view["trial_id"])]
if ids + hidden != selected_runs():
    set_selected_runs(ids + hidden)
sel = selected_runs()
c1, c2, c3 = st.columns([2, 1, 1])
c1.markdown(f"**{len(sel)} selected**" + (f" ({len(hidden)} hidden by a filter)" if hidden else ""))
with c2:
    page_link("trial", label="open in Trial")
with c3:
    page_link("compare", label="compare them")
st.download_button(
    "CSV of the filtered table",
    data=lambda: view.to_csv(index=False).encode(),
    file_name="batchlab-runs.csv",
    mime="text/csv",
    key="runs_csv",
    icon=":material/download:",
    on_click="ignore",
)
