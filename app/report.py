"""The Findings report for download: `warehouse.report.render_report` (Markdown, the text
`batchlab report` writes) on the sidebar's selection, and the same as a standalone HTML page."""

from __future__ import annotations

import html

import streamlit as st

from app.common import storage_root, version
from app.disk_cache import persisted
from warehouse import queries as q


@st.cache_data(max_entries=16, show_spinner=False)
@persisted
def report_markdown(root: str, v: str, f: q.Filters) -> str:
    from warehouse.report import render_report

    return render_report(root, f)


def markdown_to_html(md: str, title: str = "batchlab findings report") -> str:
    """A standalone HTML page of the report (Python-Markdown with tables when installed,
    else the Markdown text in a <pre>)."""
    try:
        import markdown

        body = markdown.markdown(md, extensions=["tables"])
    except ImportError:
        body = f"<pre>{html.escape(md)}</pre>"
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
        "color:#111}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;"
        "padding:4px 8px;vertical-align:top;text-align:left}th{background:#eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>"
    )


def report_downloads(f: q.Filters) -> None:
    """Download buttons for the report of the current selection (built on click)."""
    root, v = storage_root(), version()
    a, b = st.columns(2)
    a.download_button(
        "Report (Markdown)",
        data=lambda: report_markdown(root, v, f).encode(),
        file_name="batchlab-report.md",
        mime="text/markdown",
        key="report_md",
        icon=":material/download:",
        on_click="ignore",
    )
    b.download_button(
        "Report (HTML)",
        data=lambda: markdown_to_html(report_markdown(root, v, f)).encode(),
        file_name="batchlab-report.html",
        mime="text/html",
        key="report_html",
        icon=":material/download:",
        on_click="ignore",
    )
