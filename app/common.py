"""Shared app plumbing: the storage root, a cached connection, sidebar filters."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from warehouse import queries as q
from warehouse.db import connect
from warehouse.layout import Layout, default_root


def storage_root() -> str:
    return os.environ.get("BATCHLAB_STORAGE", default_root())


def data_version(root: str) -> str:
    """Changes whenever a committed file is added, replaced or removed: the cache key."""
    layout = Layout.open(root)
    h = hashlib.sha256()
    for table in ("trials", "landscapes", "analyses"):
        for info in layout.fs.get_file_info(layout.list_files(table)):
            h.update(f"{info.path}:{info.size}:{info.mtime_ns}".encode())
    return h.hexdigest()[:16]


@st.cache_resource(max_entries=4)
def _connection(root: str, version: str):
    # One connection per data version: a new trial gives a new set of views.
    return connect(root, threads=2, memory_limit="2GB")


@st.cache_data(max_entries=256, show_spinner=False)
def _cached(
    name: str, root: str, version: str, filters: q.Filters | None, kwargs_key: tuple
) -> pd.DataFrame:
    con = _connection(root, version).cursor()
    fn: Callable[..., pd.DataFrame] = getattr(q, name)
    kwargs = dict(kwargs_key)
    return fn(con, filters, **kwargs) if filters is not None else fn(con, **kwargs)


def query(name: str, filters: q.Filters | None = None, **kwargs: Any) -> pd.DataFrame:
    """Run the named query `warehouse.queries.<name>` through the cache."""
    root = storage_root()
    return _cached(name, root, data_version(root), filters, tuple(sorted(kwargs.items())))


def options(experiment: tuple[str, ...] = ()) -> dict[str, list]:
    root = storage_root()
    version = data_version(root)
    return _cached_options(root, version, experiment)


@st.cache_data(max_entries=64, show_spinner=False)
def _cached_options(root: str, version: str, experiment: tuple[str, ...]) -> dict[str, list]:
    return q.filter_options(_connection(root, version).cursor(), experiment)


def require_data() -> None:
    """Stop the page with an explanation when the warehouse has no trials yet."""
    if not options()["experiment"]:
        st.info(
            f"No trials in the warehouse at `{storage_root()}` yet. Run a grid first, e.g. "
            "`batchlab demo`, or point the app at results with `batchlab app --storage DIR`."
        )
        st.stop()


def sidebar_filters(include_status: bool = False) -> q.Filters:
    """The filters every page shares, in the sidebar; selections persist across pages."""
    opts = options()
    sb = st.sidebar
    sb.header("Filters")
    exp = sb.multiselect(
        "Experiment", opts["experiment"], default=opts["experiment"][:1], key="f_experiment"
    )
    scoped = options(tuple(exp)) if exp else opts

    def pick(label: str, col: str) -> tuple:
        values = scoped[col]
        if len(values) <= 1:
            return tuple(values)
        return tuple(sb.multiselect(label, values, default=values, key=f"f_{col}"))

    f = q.Filters(
        experiment=tuple(exp),
        dataset=pick("Dataset", "dataset"),
        model=pick("Model", "model"),
        optimizer=pick("Optimizer", "optimizer"),
        lr_scaling=pick("lr rule", "lr_scaling"),
        seed=pick("Seeds", "seed"),
        status=pick("Status", "status") if include_status else ("completed",),
    )
    sb.caption(f"storage: `{storage_root()}`")
    return f
