"""batchlab explorer: entrypoint. `batchlab app` runs `streamlit run app/main.py`."""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="batchlab", layout="wide")
nav = st.navigation(
    [
        st.Page(
            str(PAGES / "overview.py"), title="Overview", icon=":material/table:", default=True
        ),
        st.Page(str(PAGES / "curves.py"), title="Curves", icon=":material/show_chart:"),
    ]
)
nav.run()
