"""batchlab explorer: entrypoint. `batchlab app` runs `streamlit run app/main.py`.

Registers every page (`app.common.PAGES`, one file each under app/views/) and renders the
shared sidebar filters before the page on every run. The folder is not named `pages/`: with
a `pages/` folder next to the entrypoint Streamlit serves a page's URL by running that file
alone, without this entrypoint (its legacy multipage mode), until st.navigation has run once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

import app.common as common
from app.common import (
    PAGES,
    clear_filters,
    has_data,
    refresh_version,
    set_filters,
    sidebar_filters,
)

HERE = Path(__file__).resolve().parent
STATUS_PAGES = (
    "overview",
    "runs",
    "trial",
    "compare",
    "parallel",
)  # pages that show failed / diverged trials too

_t0 = time.perf_counter()
st.set_page_config(page_title="batchlab", layout="wide")
nav = st.navigation(
    [
        st.Page(
            str(HERE / "views" / p.file),
            title=p.title,
            icon=p.icon,
            url_path=p.url_path,
            default=p.default,
        )
        for p in PAGES
    ]
)
refresh_version()
if has_data():
    set_filters(sidebar_filters(include_status=nav.url_path in STATUS_PAGES))
else:
    clear_filters()
try:
    nav.run()
finally:  # the page's own render time on the server (benchmarks/app_pages.py reads it)
    common.LAST_RENDER_S = time.perf_counter() - _t0
