"""Putting charts on a page: every chart with its data as CSV (and its SVG), one chart per
experiment when one chart would hold too many settings to tell apart.

PNG: every chart's toolbar (top right, on hover) has Streamlit's "Download as PNG" and "Show
data"; Streamlit does not pass Vega's own action menu through, so the SVG and the CSV are
download buttons under the chart, built only when clicked.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
import streamlit.elements.vega_charts as _vega

from app.common import current_filters, version
from app.disk_cache import persisted
from app.labels import series_label

# More settings than this in one chart: one chart per experiment instead.
MAX_SERIES = 6
SVG_MAX_ROWS = 20_000  # charts with fewer data rows are drawn as SVG
# "svg" or "canvas": every chart drawn so (the browser tests read the plot areas from the SVG).
RENDERER_ENV = "BATCHLAB_APP_RENDERER"


def _svg(spec: dict) -> bytes:
    import vl_convert as vlc  # optional (pip install vl-convert-python)

    return vlc.vegalite_to_svg(spec).encode()


def _has_svg() -> bool:
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        return False
    return True


def to_spec(chart: alt.TopLevelMixin, *, arrow: bool = True) -> dict:
    """The chart's Vega-Lite dict as Streamlit draws it (Streamlit's theme, not Altair's;
    data as Arrow bytes, Streamlit's own transformer, when `arrow`), without re-validating
    the schema (tests/app/test_charts.py validates every builder's output)."""
    datasets: dict[str, Any] = {}
    to_arrow = getattr(_vega, "_to_arrow_dataset", None) if arrow else None
    lock = getattr(_vega, "_altair_globals_lock", None) or contextlib.nullcontext()
    with lock:
        theme = alt.theme.enable("none") if alt.theme.active == "default" else None
        with theme or contextlib.nullcontext():
            if to_arrow is None:
                return chart.to_dict(validate=False)
            # The spec without its data first: the columns it names are all the browser
            # needs (the CSV button keeps every column). A query's other columns would
            # travel to the browser with every chart: megabytes per chart at 10k trials.
            alt.data_transformers.register("batchlab_no_data", lambda data: {"values": []})
            with alt.data_transformers.enable("batchlab_no_data"):
                text = json.dumps(chart.to_dict(validate=False), default=str).replace("\\", "")

            def trimmed(data: Any, datasets: dict) -> Any:
                return to_arrow(_used_columns(data, text), datasets=datasets)

            alt.data_transformers.register("batchlab_arrow", trimmed)
            with alt.data_transformers.enable("batchlab_arrow", datasets=datasets):
                spec = chart.to_dict(validate=False)
    spec["datasets"] = {**spec.get("datasets", {}), **datasets}
    if _small(chart):
        # SVG for charts of modest size: crisp exports, and the browser tests can read
        # the marks (Streamlit's default, canvas, is faster for large data).
        meta = spec.setdefault("usermeta", {})
        meta.setdefault("embedOptions", {})["renderer"] = "svg"
    return spec


# Legends above the plot stack one under the other (Vega places legends of one orient side
# by side by default: a colour and a dash legend ran 100-200 px past a half-page column).
LEGEND_LAYOUT = {"top": {"direction": "vertical", "anchor": "start"}}


def sized(spec: dict) -> dict:
    """`spec` as the app draws it: a chart's `height` is its plot area's (autosize fit-x:
    the width fits the column, legend and axes add to the height; Streamlit's default,
    "fit", squeezed legend, titles and plot into `height` together, and a 14-entry legend
    left the plot 0 px tall), and legends above the plot stacked. Facets keep Streamlit's
    "pad" (their panels have fixed sizes)."""
    out = dict(spec)
    if "facet" not in out and "autosize" not in out:
        out["autosize"] = {"type": "fit-x", "contains": "padding"}
    config = dict(out.get("config", {}))
    legend = dict(config.get("legend", {}))
    legend.setdefault("layout", LEGEND_LAYOUT)
    out["config"] = {**config, "legend": legend}
    return _stroke_symbols(out)


# A dash legend's symbols are strokes; over a line with filled hover points Vega-Lite draws
# them with a transparent stroke (the dash legend showed labels and no dashes).
_STROKE = {"symbols": {"update": {"stroke": {"value": "#333"}, "fill": {"value": "transparent"}}}}


def _stroke_symbols(node: Any) -> Any:
    """`node` with every legend of symbolType "stroke" drawing its strokes (`encode`, a
    Vega-Lite legend property Altair's classes do not expose); data is left alone."""
    if isinstance(node, list):
        return [_stroke_symbols(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in ("datasets", "data", "values"):
            out[k] = v
        elif k == "legend" and isinstance(v, dict) and v.get("symbolType") == "stroke":
            out[k] = {**v, "encode": _STROKE}
        else:
            out[k] = _stroke_symbols(v)
    return out


def _used_columns(data: Any, spec_text: str) -> Any:
    """`data` without the columns whose names the spec never mentions (names are matched
    as text anywhere in the spec: fields, tooltips, expressions)."""
    if not isinstance(data, pd.DataFrame):
        return data
    keep = [c for c in data.columns if not isinstance(c, str) or c in spec_text]
    return data if len(keep) == len(data.columns) else data[keep]


def _small(chart: alt.TopLevelMixin, limit: int = SVG_MAX_ROWS) -> bool:
    rows = 0
    for c in [chart, *getattr(chart, "layer", []), getattr(chart, "spec", None)]:
        d = getattr(c, "data", None)
        if isinstance(d, pd.DataFrame):
            rows += len(d)
    return rows <= limit


@st.cache_data(max_entries=2048, show_spinner=False)
def _cached_spec(name: str, _fn: Callable[..., alt.TopLevelMixin], args: tuple, kwargs: tuple):
    # Keyed on the builder's name and its (hashed) arguments: the query results a page
    # passes are cached per data version, so an unchanged warehouse re-draws from here.
    return to_spec(_fn(*args, **dict(kwargs)))


@st.cache_data(max_entries=2048, show_spinner=False)
@persisted
def _keyed_spec(name: str, key: tuple, _fn: Callable[..., alt.TopLevelMixin], _a: tuple, _k: dict):
    return to_spec(_fn(*_a, **_k))


def show_chart(
    key: str,
    build: Callable[..., alt.TopLevelMixin],
    *args: Any,
    cache_on: tuple | None = None,
    **kwargs: Any,
) -> dict:
    """Draw `build(*args, **kwargs)` full width, with download buttons for its data
    (`args[0]`, CSV) and for itself (SVG, when vl-convert-python is installed; PNG is in the
    chart's toolbar). Returns the spec.

    The spec is cached on the arguments (DataFrames hashed), or - cheaper - with
    `cache_on`, on (data version, this run's filters, `key`, `cache_on`, the arguments that
    are not DataFrames): the caller promises that these determine its DataFrames (query
    results of the filters, cut by the widget values it lists in `cache_on`)."""
    name = f"{build.__module__}.{build.__qualname__}"
    if cache_on is None:
        spec = _cached_spec(name, build, args, tuple(kwargs.items()))
    else:
        plain = tuple(a for a in args if not isinstance(a, pd.DataFrame))
        k = (version(), current_filters(), key, cache_on, plain, tuple(kwargs.items()))
        spec = _keyed_spec(name, k, build, args, kwargs)
    forced = os.environ.get(RENDERER_ENV, "")
    if forced in ("svg", "canvas"):
        meta = spec.get("usermeta", {})
        embed = {**meta.get("embedOptions", {}), "renderer": forced}
        spec = {**spec, "usermeta": {**meta, "embedOptions": embed}}
    facet = "facet" in spec
    spec = sized(spec)
    st.vega_lite_chart(spec, width="content" if facet else "stretch", key=f"chart_{key}")
    data = args[0] if args and isinstance(args[0], pd.DataFrame) else None
    row = st.container(horizontal=True)
    if data is not None:
        row.download_button(
            "CSV",
            data=lambda: data.to_csv(index=False).encode(),
            file_name=f"batchlab-{key}.csv",
            mime="text/csv",
            key=f"csv_{key}",
            icon=":material/download:",
            on_click="ignore",
            help="the chart's data",
        )
    if _has_svg():
        row.download_button(
            "SVG",
            data=lambda: _svg(to_spec(build(*args, **kwargs), arrow=False)),
            file_name=f"batchlab-{key}.svg",
            mime="image/svg+xml",
            key=f"svg_{key}",
            icon=":material/image:",
            on_click="ignore",
            help="the chart as a vector image (PNG: the chart's toolbar)",
        )
    return spec


def per_experiment(
    frames: dict[str, pd.DataFrame], exclude: tuple[str, ...] = ("batch_size",)
) -> Iterator[tuple[str | None, dict[str, pd.DataFrame]]]:
    """(experiment or None, frames with `series`) to draw: all in one chart when the first
    frame has at most MAX_SERIES settings (or one experiment), else one per experiment
    (settings named within it)."""
    main = next(iter(frames.values()))
    exps = sorted(main["experiment"].dropna().unique()) if "experiment" in main else []
    n = series_label(main, exclude).nunique() if not main.empty else 0
    if len(exps) <= 1 or n <= MAX_SERIES:
        yield None, {k: v.assign(series=series_label(v, exclude)) for k, v in frames.items()}
        return
    for e in exps:
        part = {k: v[v["experiment"] == e] for k, v in frames.items()}
        yield e, {k: v.assign(series=series_label(v, exclude)) for k, v in part.items()}


def heading(experiment: str | None) -> None:
    if experiment is not None:
        st.markdown(f"**{experiment}**")
