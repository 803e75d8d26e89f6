"""Running: the trials of the grids that run now, with their live curves (issue 15).

Reads only the live area (`warehouse/live.py`, through `warehouse/status.py` with
`read_committed=False`): never the committed tables, so a refresh costs a few small files
whatever the size of the warehouse. Refreshes itself every few seconds (st.fragment
run_every) only while a driver is alive or a trial runs; otherwise it renders once.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app.chart_kit import PLOT_HEIGHT, fit_legend, positive
from app.common import storage_root
from warehouse import live
from warehouse.layout import Layout
from warehouse.status import experiment_status

REFRESH_S = 3.0

st.title("Running")
layout = Layout.open(storage_root())


def _states() -> list[dict]:
    return [
        experiment_status(layout, e, read_committed=False) for e in live.live_experiments(layout)
    ]


def _busy(states: list[dict]) -> bool:
    return any(
        s["driver"] == "alive" or any(r["state"] == "running" for r in s["rows"]) for s in states
    )


def _render() -> None:
    states = _states()
    if not states:
        st.info(
            "Nothing runs under this storage root (No trials in its live area): "
            "`batchlab run grid.yaml` publishes its trials here while they train (also "
            "`batchlab status --watch` in a terminal)."
        )
        return
    rows = live.live_epochs(layout).to_pandas()
    for s in states:
        run = s["run"] or {}
        driver = {
            "alive": f"driver alive (pid {run.get('pid')} on {run.get('host')})",
            "not alive": "driver NOT ALIVE: running trials will not be retried; run the "
            "same command again to resume",
        }.get(s["driver"], f"driver {s['driver']}")
        st.subheader(f"{s['experiment']}")
        counts = ", ".join(f"{v} {k}" for k, v in sorted(s["counts"].items()))
        st.caption(f"run {run.get('run_id', '-')}: {driver}; {counts}")
        table = pd.DataFrame(s["rows"])
        if not table.empty:
            keep = [
                "trial",
                "state",
                "epoch",
                "max_epochs",
                "train_loss",
                "val_loss",
                "best_val",
                "ex/s",
                "eta",
                "host",
            ]
            st.dataframe(table[[c for c in keep if c in table]], hide_index=True, width="stretch")
        mine = rows[rows["experiment"] == s["experiment"]] if not rows.empty else rows
        if mine.empty:
            continue
        long = mine.melt(
            id_vars=["trial_id", "epoch"],
            value_vars=["train_loss", "val_loss"],
            var_name="split",
            value_name="loss",
        ).dropna()
        long = positive(long, "loss")  # log axis
        chart = (
            alt.Chart(long, title="live curves (not yet committed)")
            .mark_line(point=True, strokeDash=[4, 2])
            .encode(
                x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
                y=alt.Y("loss:Q", title="loss (nats)", scale=alt.Scale(type="log")),
                color=alt.Color("trial_id:N", title="trial", legend=fit_legend(long["trial_id"])),
                strokeDash=alt.StrokeDash(
                    "split:N", title="split", legend=fit_legend(["train_loss"], dash=True)
                ),
                tooltip=["trial_id", "epoch", "split", alt.Tooltip("loss:Q", format=".4g")],
            )
            # the height is the plot's; the legend above it adds to the chart (app/show.py)
            .properties(
                height=PLOT_HEIGHT, autosize=alt.AutoSizeParams(type="fit-x", contains="padding")
            )
            .interactive()
        )
        st.altair_chart(chart, width="stretch")


if _busy(_states()):

    @st.fragment(run_every=REFRESH_S)
    def _live() -> None:
        _render()

    _live()
else:
    _render()
