"""Findings: every finding of the study, the statistic that tests it on the selected data
(with the seeds' spread), and a verdict, with a link to its figure."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.common import PAGE_BY_URL, filters, findings, page_link, require_data
from warehouse.findings import CONTRADICTED, NOT_JUDGED, SUPPORTED, group_table

MARKS = {
    SUPPORTED: ":green[:material/check_circle: {}]",
    CONTRADICTED: ":red[:material/cancel: {}]",
}
COLORS = {SUPPORTED: "#d7f5dd", CONTRADICTED: "#fadada"}

st.title("Findings: does your data support them?")
st.caption(
    "Each claim of FINDINGS.md that the warehouse can test, the statistic that tests it on the "
    "trials selected in the sidebar, the seeds' spread behind it, and a verdict. A claim is "
    "supported when its direction holds beyond the seeds' spread in at least one setting and "
    "is contradicted in none; one conclusive counter-example contradicts it; otherwise there "
    "is not enough data (too few batch sizes or seeds, or an effect within the spread). "
    "The rules are in docs/app.md."
)
require_data()
f = filters()
verdicts = findings(f)
table = pd.DataFrame([v.as_row() for v in verdicts])
counts = table["verdict"].value_counts()
c1, c2, c3 = st.columns(3)
c1.metric("supported", int(counts.get(SUPPORTED, 0)))
c2.metric("contradicted", int(counts.get(CONTRADICTED, 0)))
c3.metric(
    "not enough data", int(len(table) - counts.get(SUPPORTED, 0) - counts.get(CONTRADICTED, 0))
)

table["figure"] = table["page"].map(lambda p: f"./{p}")
table["page"] = table["page"].map(lambda p: PAGE_BY_URL[p].title if p in PAGE_BY_URL else p)
shown = table[["id", "verdict", "claim", "statistic", "spread", "page", "figure", "test"]]


def _color(v: str) -> str:
    return f"background-color: {COLORS[v]}" if v in COLORS else ""


st.dataframe(
    shown.style.map(_color, subset=["verdict"]),
    hide_index=True,
    width="stretch",
    key="findings_table",
    column_config={
        "id": st.column_config.TextColumn("id", width="small"),
        "claim": st.column_config.TextColumn("claim", width="large"),
        "statistic": st.column_config.TextColumn("statistic", width="large"),
        "figure": st.column_config.LinkColumn("figure", display_text="open"),
        "test": st.column_config.TextColumn("test (rule)", width="medium"),
    },
)

st.subheader("Figures")
for url, group in table.groupby(table["figure"].str[2:], sort=False):
    ids = ", ".join(
        MARKS.get(v, ":gray[:material/help: {}]").format(i)
        for i, v in zip(group["id"], group["verdict"], strict=True)
    )
    page_link(url, label=f"{PAGE_BY_URL[url].title}: {ids}" if url in PAGE_BY_URL else None)

with st.expander("Every setting's test (the detail behind each verdict)"):
    st.dataframe(group_table(verdicts), hide_index=True, width="stretch")
with st.expander("Findings not judged here, and why"):
    st.dataframe(
        pd.DataFrame([{"id": k, "claim": c, "why not": why} for k, (c, why) in NOT_JUDGED.items()]),
        hide_index=True,
        width="stretch",
    )
