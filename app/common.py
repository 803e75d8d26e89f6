"""Shared app plumbing: the storage root, the data version, cached queries, sidebar filters,
the page registry.

Every page reads the warehouse only through `query` (a named query of `warehouse.queries`)
or `findings` (`warehouse.findings`), both cached on (data version, filters): a new or
replaced file gives a new version, so a running app never shows stale results, and an
unchanged warehouse answers from the cache.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import duckdb
import pandas as pd
import streamlit as st

from app.disk_cache import persisted
from app.filters import Selection
from app.filters import sidebar as filter_sidebar
from app.labels import series_label  # noqa: F401 (re-exported: the pages' import)
from app.pages import PAGE_BY_URL, PAGES, PageInfo  # noqa: F401 (re-exported: the pages' import)
from app.warm import start_background
from warehouse import findings as fnd
from warehouse import queries as q
from warehouse.db import connect
from warehouse.layout import default_root
from warehouse.version import data_version

_FILTERS_KEY = "_batchlab_filters"
LAST_RENDER_S = float("nan")  # app/main.py: its last run's time (benchmarks/app_pages.py)


def storage_root() -> str:
    return os.environ.get("BATCHLAB_STORAGE", default_root())


@st.cache_resource(max_entries=2, show_spinner=False)
def _connection(root: str, version: str) -> duckdb.DuckDBPyConnection:
    # One connection per data version: a new trial gives a new set of views.
    return connect(root, threads=2, memory_limit="2GB")


_VERSION_KEY = "_batchlab_version"


def refresh_version() -> str:
    """Take the data version once per script run (app/main.py calls it first): every query
    of one run answers from the same snapshot, and the stat calls happen once."""
    root = storage_root()
    v = data_version(root)
    st.session_state[_VERSION_KEY] = (root, v, time.monotonic())
    if _SEEN.get(root) != v:
        _SEEN[root] = v
        _warm_in_background(root, v)
    return v


_SEEN: dict[str, str] = {}  # this server's last data version per root


def _warm_in_background(root: str, version: str) -> None:
    """A version this server has not seen (its start, or new data): fill the disk cache for
    every page in a background process (app/warm.py), so the other pages' first renders
    read it. Only in a real server: not inside a warmer, not under AppTest (whose runtime
    is a mock)."""
    from unittest.mock import Mock

    from streamlit.runtime import Runtime

    if Runtime.exists() and not isinstance(Runtime.instance(), Mock):
        start_background(root, version)


def version() -> str:
    """This run's data version (`refresh_version`), or a fresh one for a page run alone."""
    root = storage_root()
    got = st.session_state.get(_VERSION_KEY)
    if got and got[0] == root and time.monotonic() - got[2] < 5.0:
        return got[1]
    return refresh_version()


def con() -> duckdb.DuckDBPyConnection:
    """A cursor on this version's cached connection (for the app's own small queries)."""
    return _connection(storage_root(), version()).cursor()


@st.cache_data(max_entries=512, show_spinner=False)
@persisted
def _cached(
    name: str, root: str, version: str, filters: q.Filters | None, kwargs_key: tuple
) -> pd.DataFrame:
    con = _connection(root, version).cursor()
    fn: Callable[..., pd.DataFrame] = q.NAMED_QUERIES.get(name) or getattr(q, name)
    kwargs = dict(kwargs_key)
    return fn(con, filters, **kwargs) if filters is not None else fn(con, **kwargs)


def query(name: str, filters: q.Filters | None = None, **kwargs: Any) -> pd.DataFrame:
    """Run the named query `warehouse.queries.<name>` through the cache."""
    root, v = storage_root(), version()
    return _retrying(lambda: _cached(name, root, v, filters, tuple(sorted(kwargs.items()))))


def _retrying(fn: Callable[[], Any]) -> Any:
    """A file listed by the cached connection may be compacted away meanwhile: reconnect and
    retry (warehouse/retry.py); while a compaction keeps rewriting them, say so and stop."""
    from warehouse.retry import CompactionInProgress, retry_vanished

    try:
        return retry_vanished(fn, reset=_connection.clear)
    except CompactionInProgress as exc:
        st.info(str(exc))
        st.stop()


@st.cache_data(max_entries=64, show_spinner=False)
@persisted
def _cached_findings(root: str, version: str, filters: q.Filters) -> list[fnd.Verdict]:
    return fnd.evaluate(_connection(root, version).cursor(), filters)


def findings(filters: q.Filters) -> list[fnd.Verdict]:
    """Every judged finding's verdict on the selected trials (cached)."""
    root, v = storage_root(), version()
    return _retrying(lambda: _cached_findings(root, v, filters))


def options(experiment: tuple[str, ...] = ()) -> dict[str, list]:
    root, v = storage_root(), version()
    if experiment:  # every experiment: the same answer as no experiment filter
        every = options()
        if set(experiment) == set(every["experiment"]):
            return every
    return _retrying(lambda: _cached_options(root, v, experiment))


@st.cache_data(max_entries=64, show_spinner=False)
@persisted
def _cached_options(root: str, version: str, experiment: tuple[str, ...]) -> dict[str, list]:
    return q.filter_options(_connection(root, version).cursor(), experiment)


def has_data() -> bool:
    return bool(options()["experiment"])


def require_data() -> None:
    """Stop the page with an explanation when the warehouse has no trials yet."""
    if not has_data():
        st.info(
            f"No trials in the warehouse at `{storage_root()}` yet. Run a grid first, e.g. "
            "`batchlab demo`, or point the app at results with `batchlab app --storage DIR`."
        )
        st.stop()


def sidebar_filters(include_status: bool = False) -> Selection:
    """The filters every page shares, in the sidebar (app/filters.py). `app/main.py`
    renders them before the page on every run; a page run on its own renders them itself."""
    sel = filter_sidebar(options(), options, include_status)
    st.sidebar.caption(f"storage: `{storage_root()}`")
    return sel


def set_filters(sel: Selection) -> None:
    st.session_state[_FILTERS_KEY] = sel


def clear_filters() -> None:
    st.session_state.pop(_FILTERS_KEY, None)


def current_filters() -> q.Filters | None:
    """The filters `app/main.py` rendered in this run (None for a page run alone)."""
    sel = st.session_state.get(_FILTERS_KEY)
    return sel.filters if sel is not None else None


def filters(include_status: bool = False) -> q.Filters:
    """This run's filters: the ones `app/main.py` rendered, else rendered here. A filter the
    user cleared selects nothing: the page says so and stops (never 'all' silently)."""
    sel = st.session_state.get(_FILTERS_KEY)
    if sel is None:
        sel = sidebar_filters(include_status)
    if sel.empty:
        st.warning(
            "Nothing selected under " + ", ".join(f"**{e}**" for e in sel.empty) + " in the "
            "sidebar, so there is nothing to show. Pick at least one value, or press "
            "*Reset filters* to select everything."
        )
        st.stop()
    return sel.filters


def page_link(url_path: str, label: str | None = None) -> None:
    """A link to another page (only inside the full app: a page run alone has no others)."""
    info = PAGE_BY_URL.get(url_path)
    if info is None or _FILTERS_KEY not in st.session_state:
        return
    st.page_link(f"views/{info.file}", label=label or info.title, icon=info.icon)


def no_data(what: str, how: str = "") -> None:
    """Explain an empty chart instead of drawing it."""
    st.info(f"No {what} for the selected trials." + (f" {how}" if how else ""))
