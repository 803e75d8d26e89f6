"""Pieces every chart shares: colours, legends that never truncate, bands that survive a log
axis, per-cell text colour with WCAG-AA contrast, smoothing, zoom/pan.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

# Viridis (matplotlib's, which Vega's "viridis" scheme samples) at t = 0, 0.1, ..., 1.
VIRIDIS = (
    "#440154",
    "#482475",
    "#414487",
    "#355f8d",
    "#2a788e",
    "#21918c",
    "#22a884",
    "#44bf70",
    "#7ad151",
    "#bddf26",
    "#fde725",
)
# Batch sizes: viridis without its last, near-white-on-white yellow part.
BS_EXTENT = (0.0, 0.85)
# symbolOpacity 1: a band layer's opacity must not wash the legend's swatches out.
BS_COLOR = alt.Color(
    "batch_size:O",
    title="batch size",
    scale=alt.Scale(scheme=alt.SchemeParams(name="viridis", extent=list(BS_EXTENT))),
    legend=alt.Legend(
        symbolOpacity=1, symbolType="circle", symbolLimit=1000, orient="top", columns=5
    ),
)
# Legend entries are never cut: no label width limit, no entry limit, above the plot (beside
# it, a long legend would take the width of a half-page column), in explicit columns. The
# plot keeps its own size: a chart's `height` is its plot area's (app/show.py draws every
# chart with autosize fit-x), so a long legend makes the chart taller, never the plot smaller.
LEGEND_COLUMNS = 2
SYMBOL_LIMIT = 1000


def legend(columns: int = LEGEND_COLUMNS, *, dash: bool = False) -> alt.Legend:
    """A legend above the plot; `dash`: its symbols are line strokes (they show the dash
    pattern of a strokeDash encoding, not a black dot)."""
    extra = (
        {
            "symbolType": "stroke",
            "symbolStrokeWidth": 2,
            "symbolSize": 400,
            "symbolStrokeColor": "#333",
        }
        if dash
        else {"symbolOpacity": 1}
    )
    return alt.Legend(
        orient="top",
        direction="vertical",
        columns=columns,
        labelLimit=0,
        titleLimit=0,
        symbolLimit=SYMBOL_LIMIT,
        **extra,
    )


# The width a legend may take: a half-page column's plot at a 1400 px window, less margins.
LEGEND_WIDTH = 380
_CHAR_PX, _SYMBOL_PX, _STROKE_PX = 6.3, 34, 52  # an 11 px label's character, a swatch


def fit_legend(labels: object, *, dash: bool = False) -> alt.Legend:
    """`legend` in as many columns (1-4) as its longest label lets fit in LEGEND_WIDTH: a
    two-column legend of long setting names ran 50-100 px past a half-page column."""
    longest = max((len(str(v)) for v in pd.unique(pd.Series(labels))), default=1)
    per = longest * _CHAR_PX + (_STROKE_PX if dash else _SYMBOL_PX)
    return legend(int(max(1, min(4, LEGEND_WIDTH // per))), dash=dash)


SERIES_LEGEND = legend()
DASH_LEGEND = legend(dash=True)
EPOCH_AXIS = alt.Axis(format="d", tickMinStep=1)  # integer epochs, no 2.5 ticks


# Plot-area sizes (CSS px): every chart's plot at least this tall; the width fits the column.
PLOT_HEIGHT = 300
PANEL = 300  # facet panels: width and height


def positive(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    """The rows whose `cols` are all finite and > 0: what a log axis can draw (a zero or a
    NaN collapses Vega's log scale domain)."""
    keep = pd.Series(True, index=df.index)
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce")
        keep &= np.isfinite(v) & (v > 0)
    return df[keep]


def legend_pick(field: str) -> tuple[alt.Parameter, alt.OpacityValue]:
    """Click a legend entry to bring its lines forward (shift-click: more entries; click it
    again to show all): a selection bound to the legend of `field`, and the opacity that
    dims the rest, so a long list of settings stays readable."""
    pick = alt.selection_point(fields=[field], bind="legend")
    return pick, alt.condition(pick, alt.value(1.0), alt.value(0.12))


def series(df: pd.DataFrame) -> pd.DataFrame:
    return df if "series" in df else df.assign(series="all")


def with_band(df: pd.DataFrame, y: str, *, log: bool = False) -> pd.DataFrame:
    """`lo` / `hi` = mean -+ 1 std over seeds. On a log axis a lower edge <= 0 cannot be
    drawn (Vega drops the whole scale's domain to nothing): it is clipped to a tenth of the
    smallest positive mean, and `band_clipped` says so in the tooltip."""
    std = df[f"{y}_std"].fillna(0.0) if f"{y}_std" in df else 0.0
    mean = df[f"{y}_mean"]
    lo, hi = mean - std, mean + std
    out = df.assign(lo=lo, hi=hi)
    if log:
        positive = mean[mean > 0]
        floor = float(positive.min()) / 10 if len(positive) else 1e-12
        out = out.assign(band_clipped=lo <= 0, lo=lo.where(lo > 0, floor))
    return out


def smooth(df: pd.DataFrame, cols: list[str], by: list[str], x: str, weight: float) -> pd.DataFrame:
    """Exponential moving average of `cols` along `x` within each `by` group (TensorBoard's
    smoothing: s_t = w s_(t-1) + (1 - w) v_t); weight 0 leaves the data as is."""
    if weight <= 0 or df.empty:
        return df
    df = df.sort_values([*by, x])
    keys = [df[c].astype(str) for c in by]
    grouped = df[cols].groupby(keys, sort=False, dropna=False)
    out = grouped.transform(lambda s: s.ewm(alpha=1 - weight, ignore_na=True).mean())
    return df.assign(**{c: out[c] for c in cols})


def interactive(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """Zoom (scroll) and pan (drag) on both axes; double-click resets."""
    return chart.interactive(bind_y=True)


def _rgb(hex_color: str) -> np.ndarray:
    h = hex_color.lstrip("#")
    return np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], dtype=float) / 255


def viridis(t: float) -> np.ndarray:
    """The viridis colour at t in [0, 1] (linear between the 11 stops), as RGB in [0, 1]."""
    t = min(max(float(t), 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    return _rgb(VIRIDIS[i]) * (1 - (t - i)) + _rgb(VIRIDIS[i + 1]) * (t - i)


def luminance(rgb: np.ndarray) -> float:
    """WCAG 2 relative luminance of an sRGB colour in [0, 1]."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])


def contrast(l1: float, l2: float) -> float:
    """WCAG 2 contrast ratio of two relative luminances (AA for normal text: >= 4.5)."""
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def text_on(rgb: np.ndarray) -> str:
    """Black or white, whichever contrasts more with the background `rgb` (on viridis the
    worse of the two choices never falls below 4.58:1)."""
    lum = luminance(rgb)
    return "black" if contrast(lum, 0.0) >= contrast(lum, 1.0) else "white"


def viridis_text_colors(values: pd.Series, reverse: bool = False) -> pd.Series:
    """The text colour for each cell of a heat map coloured by `values` on a linear viridis
    scale over [min, max] (reversed: min is yellow)."""
    v = values.astype(float)
    lo, hi = v.min(), v.max()
    span = hi - lo if hi > lo else 1.0
    t = (v - lo) / span
    if reverse:
        t = 1 - t
    return t.map(lambda x: text_on(viridis(x)) if pd.notna(x) else "black")
