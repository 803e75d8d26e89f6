"""Findings: every finding of the study, the statistic that tests it on the selected data
(with the seeds' spread), and a verdict, with a link to its figure; the report as Markdown
and HTML."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.common import PAGE_BY_URL, filters, findings, page_link, require_data
from app.report import report_downloads
from warehouse import findings as fnd
from warehouse.findings import CONTRADICTED, NOT_JUDGED, SUPPORTED, group_table

ICONS = {
    SUPPORTED: ":green[:material/check_circle:]",
    CONTRADICTED: ":red[:material/cancel:]",
    getattr(fnd, "MIXED", "mixed"): ":orange[:material/contrast:]",
}
MARKS = {k: v[:-1] + " {}]" for k, v in ICONS.items()}

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
kinds = list(fnd.VERDICTS)
cols = st.columns([1] * len(kinds) + [2])
for col, kind in zip(cols, kinds, strict=False):
    col.metric(kind, int(counts.get(kind, 0)))
with cols[-1]:
    report_downloads(f)

table["page"] = table["page"].map(lambda p: PAGE_BY_URL[p].title if p in PAGE_BY_URL else p)
# Every finding, every word: a static table wraps its text (no cut cells, no scrolling).
st.table(
    table[["id", "verdict", "claim", "statistic", "spread", "page"]].set_index("id"),
    border="horizontal",
)

st.subheader("Each finding: its rule, its figure, every setting's test")
details = group_table(verdicts)
for v in verdicts:
    icon = ICONS.get(v.verdict, ":gray[:material/help:]")
    with st.expander(f"{icon} **{v.id}** ({v.verdict}): {v.claim}"):
        st.markdown(f"**Statistic:** {v.statistic or '-'}  \n**Seeds' spread:** {v.spread or '-'}")
        st.markdown(f"**Rule:** {v.test}")
        if v.page in PAGE_BY_URL:
            page_link(v.page, label=f"figure: {PAGE_BY_URL[v.page].title}")
        mine = details[details["id"] == v.id].drop(columns="id")
        if not mine.empty:
            st.dataframe(mine, hide_index=True, width="stretch", key=f"groups_{v.id}")

st.subheader("Figures")
for url, group in table.assign(url=[v.page for v in verdicts]).groupby("url", sort=False):
    ids = ", ".join(
        MARKS.get(v, ":gray[:material/help: {}]").format(i)
        for i, v in zip(group["id"], group["verdict"], strict=True)
    )
    page_link(url, label=f"{PAGE_BY_URL[url].title}: {ids}" if url in PAGE_BY_URL else None)

with st.expander("Findings not judged here, and why"):
    st.table(
        pd.DataFrame(
            [{"id": k, "claim": c, "why not": why} for k, (c, why) in NOT_JUDGED.items()]
        ).set_index("id")
    )
