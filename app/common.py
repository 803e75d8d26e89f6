"""Shared app plumbing: the storage root, the data version, cached queries, sidebar filters,
the page registry.

Every page reads the warehouse only through `query` (a named query of `warehouse.queries`)
or `findings` (`warehouse.findings`), both cached on (data version, filters): a new or
replaced file gives a new version, so a running app never shows stale results, and an
unchanged warehouse answers from the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd
import pyarrow.fs as pafs
import streamlit as st

from warehouse import findings as fnd
from warehouse import queries as q
from warehouse.db import connect
from warehouse.layout import Layout, default_root
from warehouse.schemas import SCHEMAS


@dataclass(frozen=True)
class PageInfo:
    url_path: str
    file: str  # under app/views/
    title: str
    icon: str
    default: bool = False  # served at the root URL


# Every page, in navigation order. The Findings page links to figures by `url_path`.
PAGES: tuple[PageInfo, ...] = (
    PageInfo("findings", "findings.py", "Findings", ":material/fact_check:", default=True),
    PageInfo("overview", "overview.py", "Overview", ":material/table:"),
    PageInfo("curves", "curves.py", "Curves", ":material/show_chart:"),
    PageInfo(
        "generalization", "generalization.py", "Generalization gap", ":material/compare_arrows:"
    ),
    PageInfo("time", "timing.py", "Time", ":material/timer:"),
    PageInfo("distance", "distance.py", "Distance", ":material/straighten:"),
    PageInfo("sharpness", "sharpness.py", "Sharpness", ":material/landscape:"),
    PageInfo("landscapes", "landscapes.py", "Landscapes", ":material/terrain:"),
    PageInfo("lr_batch", "lr_batch.py", "lr x batch size", ":material/grid_on:"),
    PageInfo("sql", "sql.py", "SQL", ":material/terminal:"),
)
PAGE_BY_URL = {p.url_path: p for p in PAGES}
_FILTERS_KEY = "_batchlab_filters"


def storage_root() -> str:
    return os.environ.get("BATCHLAB_STORAGE", default_root())


def data_version(root: str) -> str:
    """Changes whenever a committed file is added, replaced or removed: the cache key.

    Local roots: the modification times of the partition directories (a rename into place,
    a new file or a deletion updates its directory), a few stat calls whatever the number
    of files. Object stores have no directory times: every file's path, size and time."""
    layout = Layout.open(root)
    h = hashlib.sha256(root.encode())
    for table in SCHEMAS:
        base = layout.path("tables", table)
        if layout.is_local:
            sel = pafs.FileSelector(base, recursive=False, allow_not_found=True)
            infos = [i for i in layout.fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
            infos.append(layout.fs.get_file_info(base))
        else:
            infos = layout.fs.get_file_info(layout.list_files(table))
        for info in sorted(infos, key=lambda i: i.path):
            h.update(f"{info.path}:{info.type}:{info.size}:{info.mtime_ns}".encode())
    return h.hexdigest()[:16]


@st.cache_resource(max_entries=2, show_spinner=False)
def _connection(root: str, version: str) -> duckdb.DuckDBPyConnection:
    # One connection per data version: a new trial gives a new set of views.
    return connect(root, threads=2, memory_limit="2GB")


def _con() -> duckdb.DuckDBPyConnection:
    root = storage_root()
    return _connection(root, data_version(root)).cursor()


@st.cache_data(max_entries=512, show_spinner=False)
def _cached(
    name: str, root: str, version: str, filters: q.Filters | None, kwargs_key: tuple
) -> pd.DataFrame:
    con = _connection(root, version).cursor()
    fn: Callable[..., pd.DataFrame] = q.NAMED_QUERIES.get(name) or getattr(q, name)
    kwargs = dict(kwargs_key)
    return fn(con, filters, **kwargs) if filters is not None else fn(con, **kwargs)


def query(name: str, filters: q.Filters | None = None, **kwargs: Any) -> pd.DataFrame:
    """Run the named query `warehouse.queries.<name>` through the cache."""
    root = storage_root()
    version = data_version(root)
    try:
        return _cached(name, root, version, filters, tuple(sorted(kwargs.items())))
    except duckdb.IOException:
        # A file listed by the cached connection was compacted away meanwhile: reconnect.
        _connection.clear()
        return _cached(name, root, version, filters, tuple(sorted(kwargs.items())))


@st.cache_data(max_entries=64, show_spinner=False)
def _cached_findings(root: str, version: str, filters: q.Filters) -> list[fnd.Verdict]:
    return fnd.evaluate(_connection(root, version).cursor(), filters)


def findings(filters: q.Filters) -> list[fnd.Verdict]:
    """Every judged finding's verdict on the selected trials (cached)."""
    root = storage_root()
    return _cached_findings(root, data_version(root), filters)


def options(experiment: tuple[str, ...] = ()) -> dict[str, list]:
    root = storage_root()
    return _cached_options(root, data_version(root), experiment)


@st.cache_data(max_entries=64, show_spinner=False)
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


def _multiselect(label: str, values: list, default: list, key: str) -> list:
    """A sidebar multiselect whose selection survives page switches. Streamlit drops the
    state of widgets a page does not render, so the value lives under a second key: a
    callback stores it there on every change, and it is loaded back before the widget is
    created (the pattern of Streamlit's "widget behavior" docs)."""
    keep = f"_keep_{key}"
    if keep not in st.session_state:
        st.session_state[keep] = list(default)
    st.session_state[key] = [v for v in st.session_state[keep] if v in values]

    def store() -> None:
        st.session_state[keep] = st.session_state[key]

    return st.sidebar.multiselect(label, values, key=key, on_change=store)


def sidebar_filters(include_status: bool = False) -> q.Filters:
    """The filters every page shares, in the sidebar. `app/main.py` renders them before the
    page on every run; a page run on its own renders them itself."""
    opts = options()
    st.sidebar.header("Filters")
    exp = _multiselect("Experiment", opts["experiment"], opts["experiment"][:1], "f_experiment")
    scoped = options(tuple(exp)) if exp else opts
    # The other selections reset when the experiments change (their options change).
    scope = hashlib.sha1(repr(sorted(exp)).encode()).hexdigest()[:8]

    def pick(label: str, col: str) -> tuple:
        values = scoped[col]
        if len(values) <= 1:
            return tuple(values)
        return tuple(_multiselect(label, values, values, f"f_{col}_{scope}"))

    f = q.Filters(
        experiment=tuple(exp),
        dataset=pick("Dataset", "dataset"),
        model=pick("Model", "model"),
        optimizer=pick("Optimizer", "optimizer"),
        lr_scaling=pick("lr rule", "lr_scaling"),
        seed=pick("Seeds", "seed"),
        status=pick("Status", "status") if include_status else ("completed",),
    )
    st.sidebar.caption(f"storage: `{storage_root()}`")
    return f


def set_filters(f: q.Filters) -> None:
    st.session_state[_FILTERS_KEY] = f


def clear_filters() -> None:
    st.session_state.pop(_FILTERS_KEY, None)


def filters(include_status: bool = False) -> q.Filters:
    """This run's filters: the ones `app/main.py` rendered, else rendered here."""
    f = st.session_state.get(_FILTERS_KEY)
    if f is None:
        f = sidebar_filters(include_status)
    return f


def page_link(url_path: str, label: str | None = None) -> None:
    """A link to another page (only inside the full app: a page run alone has no others)."""
    info = PAGE_BY_URL.get(url_path)
    if info is None or _FILTERS_KEY not in st.session_state:
        return
    st.page_link(f"views/{info.file}", label=label or info.title, icon=info.icon)


def no_data(what: str, how: str = "") -> None:
    """Explain an empty chart instead of drawing it."""
    st.info(f"No {what} for the selected trials." + (f" {how}" if how else ""))


def series_label(df: pd.DataFrame, exclude: tuple[str, ...] = ("batch_size",)) -> pd.Series:
    """A short name per row for the configuration columns that vary in `df` (other than
    batch size): 'none, lr 0.01' - lines of different settings stay apart in a chart."""
    cols = [c for c in q.GROUP if c in df.columns and c not in exclude]
    if df.empty:
        return pd.Series([], dtype=str, index=df.index)
    # Name a column only if it tells settings apart that the columns before it do not
    # (e.g. batchnorm is left out when each model has one batchnorm value).
    varying: list[str] = []
    seen = 1
    for c in cols:
        n = df.groupby([*varying, c], dropna=False).ngroups
        if n > seen:
            varying.append(c)
            seen = n
    if not varying:
        return pd.Series(["all"] * len(df), index=df.index)

    def one(r: pd.Series) -> str:
        out = []
        for c in varying:
            v = r[c]
            if c == "lr":
                out.append(f"lr {v:g}")
            elif c == "batchnorm":
                out.append("BN" if bool(v) else "no BN")
            elif c == "workers":
                out.append(f"{int(v)} worker" + ("s" if int(v) != 1 else ""))
            else:
                out.append(str(v))
        return ", ".join(out)

    return df.apply(one, axis=1).astype(str)
