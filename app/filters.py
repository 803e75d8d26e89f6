"""The sidebar filters every page shares, kept in the URL's query string so a view can be
shared: `?experiment=a&experiment=b&seed=0&runs=<trial_id>&only_runs=1`.

Defaults: every experiment of the warehouse and every value of the other filters (what the
committed report judges), or what the URL says. Clearing a filter selects nothing (the pages
say so and draw nothing) - it never silently means "all"; "Reset filters" selects all again.
The runs picked on the Runs page can restrict every page ("Only the selected runs").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import streamlit as st

from warehouse import queries as q

# (Filters field / query-string key, sidebar label)
COLUMNS = (
    ("dataset", "Dataset"),
    ("model", "Model"),
    ("optimizer", "Optimizer"),
    ("lr_scaling", "lr rule"),
    ("seed", "Seeds"),
)
RUNS_KEY = "_batchlab_runs"  # the Runs page's selected trial ids
_PARAMS = ("experiment", *(c for c, _ in COLUMNS), "status", "runs", "only_runs")


@dataclass(frozen=True)
class Selection:
    filters: q.Filters
    empty: tuple[str, ...] = field(default=())  # labels of filters the user cleared


def _url_values(param: str, values: list) -> list | None:
    """The URL's values of `param` that are among `values` (None: the URL does not say)."""
    if param not in st.query_params:
        return None
    raw = set(st.query_params.get_all(param))
    return [v for v in values if str(v) in raw]


def _multiselect(label: str, values: list, param: str, key: str) -> list:
    """A sidebar multiselect whose selection survives page switches. Streamlit drops the
    state of widgets a page does not render, so the value lives under a second key: a
    callback stores it there on every change, and it is loaded back before the widget is
    created (the pattern of Streamlit's "widget behavior" docs). Its first value: the URL's,
    else every value."""
    keep = f"_keep_{key}"
    if keep not in st.session_state:
        url = _url_values(param, values)
        st.session_state[keep] = list(values) if url is None else url
    st.session_state[key] = [v for v in st.session_state[keep] if v in values]

    def store() -> None:
        st.session_state[keep] = st.session_state[key]

    return st.sidebar.multiselect(label, values, key=key, on_change=store)


def _reset() -> None:
    for k in [k for k in st.session_state if str(k).startswith(("_keep_f_", "f_"))]:
        del st.session_state[k]
    st.session_state.pop(RUNS_KEY, None)
    st.query_params.clear()


def selected_runs() -> list[str]:
    """The trial ids picked on the Runs page (or given by the URL's `runs`)."""
    if RUNS_KEY not in st.session_state:
        st.session_state[RUNS_KEY] = list(st.query_params.get_all("runs"))
    return list(st.session_state[RUNS_KEY])


def set_selected_runs(ids: list[str]) -> None:
    st.session_state[RUNS_KEY] = list(ids)


def sidebar(opts_all: dict[str, list], scoped_options, include_status: bool) -> Selection:
    """Render the filters; `scoped_options(experiments)` gives the other filters' values."""
    st.sidebar.header("Filters")
    empty: list[str] = []
    exp = _multiselect("Experiment", opts_all["experiment"], "experiment", "f_experiment")
    if not exp:
        empty.append("Experiment")
    scoped = scoped_options(tuple(exp)) if exp else {c: [] for c, _ in (*COLUMNS, ("status", 0))}
    # Keys depend on the experiments: their options change with them.
    scope = hashlib.sha1(repr(sorted(exp)).encode()).hexdigest()[:8]
    picked: dict[str, tuple] = {}
    cols = (*COLUMNS, ("status", "Status")) if include_status else COLUMNS
    for col, label in cols:
        values = scoped[col]
        if len(values) <= 1:
            picked[col] = tuple(values)
            continue
        v = _multiselect(label, values, col, f"f_{col}_{scope}")
        if not v:
            empty.append(label)
        picked[col] = tuple(v)
    runs = selected_runs()
    only = False
    if runs:
        keep = "_keep_f_only_runs"
        if keep not in st.session_state:
            st.session_state[keep] = st.query_params.get("only_runs") == "1"
        st.session_state["f_only_runs"] = st.session_state[keep]
        only = st.sidebar.toggle(
            f"Only the {len(runs)} selected run" + ("s" if len(runs) != 1 else ""),
            key="f_only_runs",
            on_change=lambda: st.session_state.__setitem__(keep, st.session_state["f_only_runs"]),
            help="Runs picked in the Runs page's table restrict every page.",
        )
    st.sidebar.button("Reset filters", on_click=_reset, key="f_reset", help="Select everything")
    f = q.Filters(
        experiment=tuple(exp),
        status=picked.pop("status", ("completed",)) if include_status else ("completed",),
        trial_id=tuple(runs) if only else (),
        **picked,
    )
    _write_url(opts_all, scoped, f, runs, only)
    return Selection(f, tuple(empty))


def _write_url(opts_all: dict, scoped: dict, f: q.Filters, runs: list[str], only: bool) -> None:
    """Mirror the selection into the query string; values equal to 'everything' are left
    out (a short URL that still opens the same view)."""
    want: dict[str, list[str]] = {}
    if list(f.experiment) != list(opts_all["experiment"]):
        want["experiment"] = [str(v) for v in f.experiment] or [""]
    for col, _ in (*COLUMNS, ("status", 0)):
        chosen, values = list(getattr(f, col)), list(scoped.get(col, []))
        if col == "status" and chosen == ["completed"]:
            continue
        if values and chosen != values:
            want[col] = [str(v) for v in chosen] or [""]
    if runs:
        want["runs"] = list(runs)
        if only:
            want["only_runs"] = ["1"]
    for k in _PARAMS:
        now = st.query_params.get_all(k)
        if k in want and now != want[k]:
            st.query_params[k] = want[k]
        elif k not in want and k in st.query_params:
            del st.query_params[k]
