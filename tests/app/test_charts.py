"""Chart builders on the fixture warehouse's query results: the Vega-Lite specs carry the
expected fields, axis titles with units, and one series per batch size / setting."""

from __future__ import annotations

import pandas as pd
import pytest

from app import charts
from app.common import series_label
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
        assert line["encoding"]["x"] == {"field": field, "title": title, "type": "quantitative"}
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
    (bars, rows), (line, _) = marks(charts.batch_chart(df, "min_val_loss", "min val loss (nats)"))
    x = line["encoding"]["x"]
    assert x["field"] == "batch_size" and x["scale"] == {"base": 2, "type": "log"}
    assert "examples" in x["title"]
    assert line["encoding"]["color"]["field"] == "series"
    assert mark_type(bars) == "rule"
    series = {r["series"] for r in rows}
    assert "mlp, fixed lr" not in series and any("lr 0.08" in s for s in series)
    a = [r for r in rows if r["series"] == "mlp, none, lr 0.01, 1 worker" and r["batch_size"] == 64]
    assert a and a[0]["min_val_loss_mean"] == pytest.approx(0.35)


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
    assert series_label(df).tolist() == ["none", "linear"]
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


def test_interpolation_chart(con):
    df = q.landscape_1d(con, F)
    (_rules, rrows), (line, rows) = marks(charts.interpolation_chart(df))
    assert [r["alpha"] for r in rrows] == [0.0, 1.0]
    assert line["encoding"]["color"]["field"] == "split"
    assert line["encoding"]["detail"]["field"] == "run"
    assert {r["split"] for r in rows} == {"train", "val"}
    assert min(r["alpha"] for r in rows) == -1 and max(r["alpha"] for r in rows) == 2


def test_surface_chart_side_by_side(con):
    df = q.landscape_2d(con, F)
    df = df[df["split"] == "train"]
    chart = charts.surface_chart(df)
    spec = chart.to_dict()
    assert spec["facet"]["column"]["field"] == "panel"
    [(rect, rows)] = marks(chart)
    assert mark_type(rect) == "rect"
    assert rect["encoding"]["color"]["field"] == "log_loss" and rect["encoding"]["color"]["bin"]
    assert len({r["panel"] for r in rows}) == 4
    assert {r["panel"].split(" (")[0] for r in rows} == {"bs 32", "bs 256"}


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
    assert layers[1][0]["encoding"]["x"]["scale"] == {"type": "log"}
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
