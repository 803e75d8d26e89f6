"""Overview: experiments, trial status counts, and the trials table."""

from __future__ import annotations

import streamlit as st

from app.common import filters, query, require_data

st.title("Experiments and trials")
require_data()
f = filters(include_status=True)

exps = query("experiments")
st.subheader("Experiments")
st.dataframe(exps, hide_index=True, width="stretch")

trials = query("trial_table", f)
if trials.empty:
    st.info("No trials match the filters.")
    st.stop()
cols = st.columns(4)
for col, status in zip(cols, ("completed", "diverged", "failed", None), strict=True):
    n = len(trials) if status is None else int((trials["status"] == status).sum())
    col.metric(status or "selected", n)
st.subheader("Trials")
st.dataframe(trials, hide_index=True, width="stretch")
