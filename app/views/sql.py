"""SQL: a read-only SQL box over the warehouse views, results as a table with CSV download.

Statements go through `warehouse.sql.run_readonly`: one SELECT only; no file access outside
the storage root, no extension installs, no settings changes; capped rows, memory, threads
and time."""

from __future__ import annotations

import streamlit as st

from app.common import storage_root

MAX_ROWS = 10_000
EXAMPLES = {
    "Trials per experiment and status": (
        "SELECT experiment, status, count(*) AS trials\nFROM trials\nGROUP BY ALL\nORDER BY ALL"
    ),
    "Min validation loss by batch size (mean, std over seeds)": (
        "SELECT experiment, lr_scaling, lr, batch_size,\n"
        "       avg(best_val_loss) AS min_val_loss_mean,\n"
        "       stddev_samp(best_val_loss) AS min_val_loss_std,\n"
        "       count(*) AS n_seeds\n"
        "FROM trials WHERE status = 'completed'\nGROUP BY ALL ORDER BY ALL"
    ),
    "Median per-step update norm by batch size": (
        "SELECT t.batch_size, median(s.update_norm) AS median_update_norm, count(*) AS steps\n"
        "FROM steps s JOIN trials t USING (experiment, trial_id)\nGROUP BY ALL ORDER BY ALL"
    ),
    "Keskar sharpness at the end of training": (
        "SELECT t.batch_size, t.lr_scaling, avg(p.value) AS sharpness_pct, count(*) AS n\n"
        "FROM probes p JOIN trials t USING (experiment, trial_id)\n"
        "WHERE p.probe = 'keskar_sharpness'\nGROUP BY ALL ORDER BY ALL"
    ),
    "Tables and columns": "DESCRIBE epochs",
}


def _load_example() -> None:
    st.session_state["sql_text"] = EXAMPLES[st.session_state["sql_example"]]


st.title("SQL")
st.caption(
    "Read-only SQL (DuckDB dialect) over the warehouse views: trials, epochs, steps, layers, "
    "probes, landscapes, analyses. One SELECT per run; writes, file access, extensions and "
    f"settings are refused. At most {MAX_ROWS:,} rows are shown."
)
try:
    from warehouse.sql import run_readonly
except ImportError:  # the hardened engine ships with the warehouse; never fall back to raw SQL
    st.error("The read-only SQL engine (warehouse.sql.run_readonly) is not installed.")
    st.stop()

st.selectbox(
    "Examples",
    list(EXAMPLES),
    index=None,
    key="sql_example",
    on_change=_load_example,
    placeholder="load an example query",
)
if "sql_text" not in st.session_state:
    st.session_state["sql_text"] = next(iter(EXAMPLES.values()))
sql = st.text_area("Query", key="sql_text", height=180)
if st.button("Run", type="primary", key="sql_run"):
    st.session_state["sql_ran"] = sql
ran = st.session_state.get("sql_ran")
if not ran:
    st.stop()
if not ran.strip():
    st.info("Type a query, or load an example.")
    st.stop()
try:
    df = run_readonly(storage_root(), ran, max_rows=MAX_ROWS)
except Exception as exc:  # refused, timed out or invalid: the message says which
    st.error(str(exc))
    st.stop()
if df.attrs.get("truncated"):
    st.warning(f"Only the first {MAX_ROWS:,} rows are shown; add a LIMIT or aggregate.")
st.caption(f"{len(df):,} rows")
st.dataframe(df, hide_index=True, width="stretch")
st.download_button(
    "Download CSV",
    df.to_csv(index=False).encode(),
    file_name="batchlab-query.csv",
    mime="text/csv",
    key="sql_csv",
)
