"""Chart builders on the fixture warehouse's query results: the Vega-Lite specs carry the
expected fields, axis titles with units, and one series per batch size / setting."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import pytest

from app import charts, landscape_charts
from app.chart_kit import contrast, luminance, smooth
from app.common import series_label
from app.labels import analysis_labels
from warehouse import queries as q
from warehouse.db import connect

F = q.Filters(experiment=("support",))


@pytest.fixture(scope="module")
def con(fixture_root):
    c = connect(fixture_root)
    yield c
    c.close()


def marks(chart) -> list[tuple[dict, list[dict]]]:
    """Every leaf mark of a (layered / faceted) chart with the rows it draws."""
    spec = chart.to_dict()
    datasets = spec.get("datasets", {})
    out = []

    def walk(node: dict, data: dict | None) -> None:
        data = node.get("data", data)
        if "layer" in node:
            for child in node["layer"]:
                walk(child, data)
        elif "spec" in node:
            walk(node["spec"], data)
        else:
            rows = datasets.get(data["name"], []) if data and "name" in data else []
            out.append((node, rows))

    walk(spec, None)
    return out


def mark_type(node: dict) -> str:
    m = node["mark"]
    return m if isinstance(m, str) else m["type"]


def test_curve_chart_every_x_axis(con):
    df = q.curves(con, F).assign(series=lambda d: series_label(d))
    for x, (field, title) in charts.X_AXES.items():
        layers = marks(charts.curve_chart(df, "val_loss", x, "validation loss (nats)"))
        (band, rows), (line, _) = layers
        assert mark_type(band) == "area" and mark_type(line) == "line"
        enc_x = line["encoding"]["x"]
        assert (enc_x["field"], enc_x["title"], enc_x["type"]) == (field, title, "quantitative")
        if field == "epoch":  # integer epochs: no fractional ticks
            assert enc_x["axis"] == {"format": "d", "tickMinStep": 1}
        assert line["encoding"]["y"]["field"] == "val_loss_mean"
        assert line["encoding"]["y"]["title"] == "validation loss (nats)"
        assert line["encoding"]["color"]["field"] == "batch_size"
        assert band["encoding"]["y"]["field"] == "lo" and band["encoding"]["y2"]["field"] == "hi"
        assert {r["batch_size"] for r in rows} == {32, 64, 128, 256}
        assert all(r["lo"] <= r["val_loss_mean"] <= r["hi"] for r in rows)
    assert charts.X_AXES["wall time"][1].endswith("(s)")


def test_batch_chart_log2_axis_and_error_bars(con):
    df = q.generalization_by_batch_size(con, F)
    df = df.assign(series=series_label(df))
    (bars, rows), (line, _), (dots, seeds) = marks(
        charts.batch_chart(df, "min_val_loss", "min val loss (nats)")
    )
    x = line["encoding"]["x"]
    assert x["field"] == "batch_size" and x["scale"] == {"base": 2, "type": "log"}
    assert "examples" in x["title"]
    assert line["encoding"]["color"]["field"] == "series"
    assert mark_type(bars) == "rule"
    series = {r["series"] for r in rows}
    assert "mlp, fixed lr" not in series and any("lr 0.08" in s for s in series)
    a = [
        r
        for r in rows
        if r["series"] == "mlp, fixed lr, lr 0.01, 1 worker" and r["batch_size"] == 64
    ]
    assert a and a[0]["min_val_loss_mean"] == pytest.approx(0.35)
    # every seed's own value is a point; their mean is the line, their count n_seeds
    assert mark_type(dots) == "point" and dots["encoding"]["y"]["field"] == "min_val_loss"
    assert {"seed", "min_val_loss"} <= set(dots["encoding"]["tooltip"][i]["field"] for i in (2, 3))
    for r in rows:
        mine = [
            p for p in seeds if (p["series"], p["batch_size"]) == (r["series"], r["batch_size"])
        ]
        assert len(mine) == r["n_seeds"] and len({p["seed"] for p in mine}) == len(mine)
        got = np.mean([p["min_val_loss"] for p in mine])
        assert got == pytest.approx(r["min_val_loss_mean"])


def test_series_label_names_only_varying_settings():
    df = pd.DataFrame(
        {
            "experiment": ["e", "e"],
            "model": ["mlp", "mlp"],
            "lr_scaling": ["none", "linear"],
            "lr": [0.01, 0.01],
            "batch_size": [32, 64],
        }
    )
    assert series_label(df).tolist() == ["fixed lr", "linear scaling"]
    assert series_label(df.iloc[:1]).tolist() == ["all"]


def test_update_norm_chart_has_medians(con):
    hist = q.update_norm_histogram(con, F).assign(series="s")
    quant = q.update_norm_quantiles(con, F).assign(series="s")
    (lines, hrows), (rules, qrows) = marks(charts.update_norm_chart(hist, quant))
    assert lines["encoding"]["x"]["scale"] == {"type": "log"}
    assert lines["encoding"]["y"]["field"] == "fraction"
    assert (
        mark_type(rules) == "rule" and rules["encoding"]["x"]["field"] == "update_norm_median_mean"
    )
    assert {r["batch_size"] for r in qrows} == {32, 64, 128, 256}
    assert all(r["bin_lo"] < r["center"] < r["bin_hi"] for r in hrows)


def test_critical_batch_chart_fit_and_estimates(con):
    steps = q.steps_to_target(con, F)
    best = steps[steps["is_best_lr"]].assign(series=lambda d: series_label(d, ("batch_size", "lr")))
    fit = q.critical_batch_size(con, F)
    fit = fit.assign(series=series_label(fit, ("batch_size", "lr")))
    layers = marks(charts.critical_batch_chart(best, fit))
    kinds = [mark_type(n) for n, _ in layers]
    assert kinds == ["point", "line", "rule"]
    fitted = layers[1][1]
    assert min(r["batch_size"] for r in fitted) == pytest.approx(32)
    whats = {r["what"] for r in layers[2][1]}
    assert whats == {"B_crit (fit)", "B_simple (noise scale)"}
    bcrit = [r["value"] for r in layers[2][1] if r["what"] == "B_crit (fit)"]
    assert all(v == pytest.approx(100, rel=0.02) for v in bcrit)


def test_interpolation_chart_is_keskar_fig3(con):
    """F-10 opens on one curve per batch-size pair, train and validation, the seeds'
    interpolations as a min-max band around their mean (Keskar et al. Fig. 3)."""
    df = q.landscape_1d(con, F)
    (_rules, rrows), (band, _brows), (line, rows) = marks(landscape_charts.interpolation_chart(df))
    assert [r["alpha"] for r in rrows] == [0.0, 1.0]
    assert mark_type(band) == "area" and band["encoding"]["y2"]["field"] == "loss_max"
    assert line["encoding"]["color"]["field"] == "pair"
    assert line["encoding"]["strokeDash"]["field"] == "split"
    assert line["encoding"]["y"]["scale"]["type"] == "log"
    assert {r["pair"] for r in rows} == {"bs 32 -> 256"}  # one curve per pair, not per seed
    assert {r["split"] for r in rows} == {"train", "val"}
    n_seeds = df["analysis_id"].nunique()
    assert n_seeds >= 2 and {r["n"] for r in rows} == {n_seeds}
    for (split, alpha), g in df.groupby(["split", "alpha"]):
        (r,) = [r for r in rows if r["split"] == split and r["alpha"] == alpha]
        assert r["loss"] == pytest.approx(g["loss"].mean())
        assert (r["loss_min"], r["loss_max"]) == (g["loss"].min(), g["loss"].max())
    assert min(r["alpha"] for r in rows) == -1 and max(r["alpha"] for r in rows) == 2
    (_r, _b, (acc, _)) = marks(landscape_charts.interpolation_chart(df, "accuracy"))
    assert acc["encoding"]["y"]["field"] == "acc"


def test_log_axes_leave_out_zeros_and_nan():
    """A zero or NaN on a log axis collapses Vega's scale: such rows are left out."""
    df = pd.DataFrame(
        {
            "series": ["s"] * 4,
            "batch_size": [32, 64, 128, 256],
            "value_mean": [1.0, 0.0, np.nan, 2.0],
            "value_std": [0.1, 0.1, 0.1, 3.0],
            "n_seeds": [2] * 4,
        }
    )
    layers = marks(charts.batch_chart(df, "value", "v (log)", log_y=True))
    drawn = {r["batch_size"] for _, rows in layers for r in rows}
    assert drawn == {32, 256}
    assert all(r["lo"] > 0 for _, rows in layers for r in rows if "lo" in r)


def test_surface_chart_side_by_side(con):
    df = q.landscape_2d(con, F)
    df = df[df["split"] == "train"]
    names = analysis_labels(df)
    chart = landscape_charts.surface_chart(df, names)
    spec = chart.to_dict()
    assert spec["facet"]["field"] == "panel"
    assert spec["columns"] == landscape_charts.SURFACE_COLUMNS  # wrapped: never wider than the page
    assert spec["spec"]["width"] >= 300 and spec["spec"]["height"] >= 300
    # Each panel its own colour scale (a flat surface is not one colour of a shared scale).
    assert spec["resolve"]["scale"]["color"] == "independent"
    [(rect, rows)] = marks(chart)
    assert mark_type(rect) == "rect"
    assert rect["encoding"]["color"]["field"] == "rise" and "bin" not in rect["encoding"]["color"]
    panels = {r["panel"] for r in rows}
    assert len(panels) == 4 and all(p.startswith(("bs 32, seed", "bs 256, seed")) for p in panels)
    for p in panels:  # more than one colour in every panel, the centre at 0
        rise = [r["rise"] for r in rows if r["panel"] == p]
        assert min(rise) <= 0 < max(rise), p
    shared = landscape_charts.surface_chart(df, names, mode="shared").to_dict()
    assert "resolve" not in shared


def test_surface_relative_to_centre_when_losses_differ_by_decades():
    """The demo's bug: a large-batch surface whose losses all fall in one bin of a shared
    scale. Relative to its centre, on its own scale, it spans the whole colour range."""
    grid = [(a, b) for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)]
    rows = []
    for aid, bs, base, scale in (("s", 32, 0.02, 5.0), ("l", 256, 0.5, 0.01)):
        for a, b in grid:
            rows.append(
                {"analysis_id": aid, "batch_size_a": bs, "batch_size_b": None, "seed": 0,
                 "alpha": a, "beta": b, "split": "train", "loss": base + scale * (a * a + b * b),
                 "acc": 0.9}
            )  # fmt: skip
    data = landscape_charts.surface_data(pd.DataFrame(rows))
    for aid in ("s", "l"):
        part = data[data["analysis_id"] == aid]
        assert part["rise"].min() == 0 and part["rise"].max() > 0
        assert part["rise"].nunique() == 3  # centre, edges, corners


def test_analysis_labels_are_human_and_unique():
    df = pd.DataFrame(
        {
            "analysis_id": ["a1", "a2", "a3", "a4"],
            "batch_size_a": [32, 32, 32, 32],
            "batch_size_b": [256, 256, 256, 256],
            "seed": [0, 0, 1, 0],
            "experiment": ["e"] * 4,
            "lr_scaling": ["none", "linear", "none", "none"],
            "lr": [0.05, 0.05, 0.05, 0.05],
        }
    )
    got = analysis_labels(df)
    assert got["a3"] == "bs 32 vs bs 256, seed 1"
    assert got["a2"] == "bs 32 vs bs 256, seed 0, linear scaling"
    assert got["a1"].startswith("bs 32 vs bs 256, seed 0, fixed lr")
    assert len(set(got.values())) == 4  # a1 and a4 are alike in everything: the id tells


def test_layer_chart_log_axis_with_bands_reaching_zero():
    """Two seeds far apart: mean - std <= 0 must not break the log axis (the demo's flat line
    without ticks); the lower edge is clipped, the mean and the upper edge are kept."""
    df = pd.DataFrame(
        {
            "batch_size": [32, 256, 32, 256],
            "layer": ["0.weight", "0.weight", "2.weight", "2.weight"],
            "numel": [10, 10, 5, 5],
            "dist_from_init_mean": [1.0, 0.5, 0.2, 0.1],
            "dist_from_init_std": [1.5, 0.2, 0.3, 0.01],
            "n_seeds": [2, 2, 2, 2],
        }
    )
    (_bars, rows), (line, _) = marks(charts.layer_chart(df, "dist_from_init", "d"))
    assert line["encoding"]["y"]["scale"] == {"type": "log"}
    assert all(r["lo"] > 0 for r in rows)
    assert all(r["lo"] <= r["dist_from_init_mean"] <= r["hi"] for r in rows)
    assert sorted(r["band_clipped"] for r in rows) == [False, False, True, True]


def _all_encodings(spec: dict):
    if isinstance(spec, dict):
        for k, v in spec.items():
            if k == "encoding":
                yield v
            yield from _all_encodings(v)
    elif isinstance(spec, list):
        for v in spec:
            yield from _all_encodings(v)


def test_legends_never_truncate(con):
    df = q.curves(con, q.Filters()).assign(series=lambda d: series_label(d))
    spec = charts.curve_chart(df, "val_loss").to_dict()
    legends = [
        ch["legend"]
        for enc in _all_encodings(spec)
        for ch in enc.values()
        if isinstance(ch, dict) and ch.get("legend")
    ]
    assert legends
    for lg in legends:
        assert lg.get("symbolLimit", 0) >= 1000, lg
        assert lg.get("orient") == "top", lg  # above the plot: never squeezes it
        if "labelLimit" in lg:
            assert lg["labelLimit"] == 0 and lg["columns"] >= 1
    dash = [lg for lg in legends if lg.get("symbolType") == "stroke"]
    assert dash, "the setting legend shows dash strokes"
    bs = spec["layer"][0]["encoding"]["color"]
    assert bs["scale"]["scheme"]["extent"][1] < 1  # no near-white yellow swatch
    assert bs["legend"]["symbolOpacity"] == 1  # the band's opacity does not wash it out


def test_heatmap_text_contrast_wcag_aa(con):
    """Every number on the lr x batch size heat map has >= 4.5:1 contrast with its cell,
    computed on matplotlib's viridis (what Vega's scheme samples)."""
    mpl = pytest.importorskip("matplotlib")
    cmap = mpl.colormaps["viridis"]
    df = q.lr_batch_table(con, q.Filters(experiment=("support",)))
    df = df[(df["model"] == "mlp") & (df["lr_scaling"] == "none") & (df["workers"] == 1)]
    df = df.assign(series="mlp")
    (rect, rows), (text, _), _ring = marks(charts.lr_heatmap(df))
    dom = rect["encoding"]["color"]["scale"]["domain"]
    assert rect["encoding"]["color"]["scale"]["reverse"] is True
    assert "condition" in text["encoding"]["color"]
    lums = {"white": 1.0, "black": 0.0}
    for r in rows:
        t = 1 - (r["min_val_loss_mean"] - dom[0]) / (dom[1] - dom[0])
        bg = luminance(np.array(cmap(t)[:3]))
        assert contrast(bg, lums[r["text_color"]]) >= 4.5, r
    # The worst case of the rule itself, over the whole colour map.
    worst = min(
        max(contrast(luminance(np.array(cmap(t)[:3])), w) for w in (0.0, 1.0))
        for t in np.linspace(0, 1, 257)
    )
    assert worst >= 4.5


@pytest.mark.parametrize("name", ["curves", "distance", "landscape"])
def test_specs_validate_against_the_vega_lite_schema(con, name):
    """The app draws specs built with validate=False (speed): the schema check is here."""
    if name == "curves":
        df = q.curves(con, F).assign(series="s")
        for x in charts.X_AXES:
            charts.curve_chart(df, "val_loss", x, log_y=True, smoothing=0.6).to_dict()
    elif name == "distance":
        charts.layer_chart(q.distance_by_layer(con, F).assign(series="s")).to_dict()
        charts.ratio_chart(q.epoch_distance_ratio(con, F).assign(series="s")).to_dict()
    else:
        one = q.landscape_1d(con, F)
        landscape_charts.interpolation_chart(one).to_dict()
        landscape_charts.interpolation_chart(one, "accuracy").to_dict()
        landscape_charts.surface_chart(q.landscape_2d(con, F)).to_dict()
        charts.lr_heatmap(q.lr_batch_table(con, F).assign(series="s")).to_dict()


def test_smoothing_is_an_ema_per_line():
    df = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3, "x": [1, 2, 3] * 2, "v": [0, 1, 1, 5, 5, 5]})
    out = smooth(df, ["v"], ["g"], "x", 0.5)
    a = out[out["g"] == "a"]["v"].tolist()
    assert a[0] == 0 and 0 < a[1] < 1 and a[1] < a[2] < 1
    assert out[out["g"] == "b"]["v"].tolist() == [5, 5, 5]
    assert smooth(df, ["v"], ["g"], "x", 0.0) is df


def test_lr_charts_mark_best_lr(con):
    df = q.lr_batch_table(con, F)
    df = df[(df["model"] == "mlp") & (df["lr_scaling"] == "none") & (df["workers"] == 1)]
    df = df.assign(series="mlp")
    (rect, _), (text, _), (_ring, best) = marks(charts.lr_heatmap(df))
    assert mark_type(rect) == "rect" and rect["encoding"]["color"]["field"] == "min_val_loss_mean"
    assert mark_type(text) == "text"
    assert {(r["batch_size"], r["lr"]) for r in best} == {
        (32, 0.01),
        (64, 0.01),
        (128, 0.08),
        (256, 0.08),
    }
    layers = marks(charts.lr_curve_chart(df))
    assert [mark_type(n) for n, _ in layers] == ["rule", "line", "point"]
    assert layers[1][0]["encoding"]["x"]["scale"]["type"] == "log"  # (padded: the end marks fit)
    assert len(layers[2][1]) == 4 and all(r["is_best_lr"] for r in layers[2][1])


def test_distance_charts(con):
    layers = q.distance_by_layer(con, F).assign(series="s")
    (_bars, rows), (line, _) = marks(charts.layer_chart(layers, "dist_from_init", "d"))
    assert line["encoding"]["color"]["field"] == "layer"
    assert {r["layer"] for r in rows} == {"0.weight", "2.weight"}
    ratio = q.epoch_distance_ratio(con, F).assign(series="s")
    (_band, rrows), (rline, _) = marks(charts.ratio_chart(ratio))
    assert rline["encoding"]["y"]["field"] == "ratio"
    assert {r["pair"] for r in rrows} == {"32 / 256"}


def test_workers_chart(con):
    dp = q.time_by_workers(con, F)
    (_bars, rows), (line, _) = marks(charts.workers_chart(dp))
    assert line["encoding"]["color"]["field"] == "workers"
    assert {r["workers"] for r in rows} == {1, 4}
    assert line["encoding"]["y"]["title"] == "time per epoch (s)"


def test_svg_export(con):
    """The SVG download button's bytes: the chart drawn by vl-convert, offline."""
    pytest.importorskip("vl_convert")
    from app.show import _svg, to_spec

    df = q.lr_batch_table(con, F).assign(series="s")
    svg = _svg(to_spec(charts.lr_heatmap(df), arrow=False)).decode()
    assert svg.startswith("<svg") and "min val loss (nats)" in svg


def test_curve_chart_drops_hover_points_on_large_data(con):
    df = q.curves(con, F).assign(series=lambda d: series_label(d))
    small = marks(charts.curve_chart(df, "val_loss"))[1][0]
    assert small["mark"]["point"]  # a hover point per row
    big = pd.concat([df] * (charts.MAX_HOVER_POINTS // len(df) + 1), ignore_index=True)
    with alt.data_transformers.disable_max_rows():  # (the app sends data its own way)
        line = marks(charts.curve_chart(big, "val_loss"))[1][0]
    assert line["mark"].get("point") is False and line["encoding"]["tooltip"]


def test_charts_are_drawn_with_the_plot_height_their_own():
    """The spec the app draws: autosize fit-x (the height is the plot area's, the legend adds
    to it; Streamlit's "fit" squeezed the plot to 0 px under a long legend) and legends
    above the plot stacked; facets keep their fixed panels."""
    from app.show import sized

    df = pd.DataFrame({"series": ["a"], "batch_size": [32], "v_mean": [1.0], "n_seeds": [1]})
    got = sized(charts.batch_chart(df, "v", "v").to_dict())
    assert got["autosize"] == {"type": "fit-x", "contains": "padding"}
    assert got["config"]["legend"]["layout"]["top"]["direction"] == "vertical"
    assert got["layer"][0].get("height", got.get("height")) == 300
    facet = sized({"facet": {"field": "p"}, "spec": {}})
    assert "autosize" not in facet
    # dash legends draw their strokes (Vega-Lite made them transparent over hover points)
    curves = df.assign(epoch=1, v_std=0.0)
    line = sized(charts.curve_chart(curves, "v").to_dict())["layer"][1]
    enc = line["encoding"]["strokeDash"]["legend"]["encode"]["symbols"]["update"]
    assert enc["stroke"]["value"] != "transparent"
