"""The "Choose a batch size" page (app/views/choose.py) through AppTest: on the demo it
shows the advisor's answer for the suggested target, the same numbers as
warehouse.advice.advise, the per-measure verdicts, and says which command produces what is
missing; on a warehouse with per-epoch noise-scale probes, lone timings and every sharpness
probe it draws B_simple over training, answers "fastest" from the timings and judges every
measure; on an empty root it explains and does not crash."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.warm import page_test
from warehouse.advice import advise
from warehouse.advice_text import HOW, suggest_target
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.queries import Filters
from warehouse.store import write_trial

DEMO = Path(__file__).resolve().parents[2] / "examples" / "results"
TIMEOUT_S = 180


def open_choose(monkeypatch, root: str):
    monkeypatch.setenv("BATCHLAB_STORAGE", str(root))
    return page_test("choose", TIMEOUT_S).run()


def text_of(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [i.value for i in at.info]
    return "\n".join(parts)


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert at.title and at.title[0].value == "Choose a batch size"


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory) -> str:
    import shutil

    dst = tmp_path_factory.mktemp("choose-demo") / "results"
    shutil.copytree(DEMO, dst)
    return str(dst)


def test_empty_root_explains(monkeypatch, empty_root):
    at = open_choose(monkeypatch, empty_root)
    assert_clean(at)
    assert any("No trials" in i.value for i in at.info)


# The demo's digits study: no target, timing probe or noise scale of its own (the MNIST
# study, demo-advise-mnist, has all three: test_demo_mnist_study).
DIGITS = "demo-keskar-digits"


def test_demo_answer_matches_the_advisor(monkeypatch, demo_copy):
    at = open_choose(monkeypatch, demo_copy)
    assert_clean(at)
    at.selectbox(key="choose_exp").set_value(DIGITS).run()
    assert_clean(at)
    exp = at.selectbox(key="choose_exp").value
    f = Filters(experiment=(exp,))
    con = connect(Layout.open(demo_copy))
    target = suggest_target(con, f)
    # the digits study's grid sets no target_val_error: a suggested validation-error target
    assert target.kind == "val_error" and 0 < target.value < 1
    assert at.radio(key=f"choose_kind_{exp}").value == "val_error"
    res = advise(con, f, target, n_resamples=50, seed=0)
    answered = [a for a in res if a["fewest_examples"] is not None]
    assert answered, "the suggested target is reached by some batch size"
    group = at.selectbox(key=f"choose_group_{exp}").value
    a = res[group]
    text = text_of(at)
    few = a["fewest_examples"]
    assert f"Fewest examples: batch size {few['batch_size']}" in text
    fast = a["fastest"]
    assert f"batch size {fast['batch_size']}" in text
    # the per-batch-size table is the advisor's, row for row
    tables = [d.value for d in at.dataframe]
    per_b = next(t for t in tables if "P(fewest examples)" in t.columns)
    assert [int(str(b).rstrip("*")) for b in per_b["batch size"]] == [
        r["batch_size"] for r in a["table"]
    ]
    # no timing probe and no noise-scale rows in the digits study: said, with the command
    assert HOW["timing"] in text
    assert HOW["noise"] in text
    # the per-measure verdicts (the demo has lambda_max and Keskar probes)
    verdicts = next(t for t in tables if "contradicted" in t.columns and "measure" in t.columns)
    assert {"F-11", "F-15", "F-29"} <= set(verdicts["id"])
    assert "lambda_max" in set(verdicts["measure"])
    assert "What the 2/lr bound predicts" in text
    con.close()


def test_changing_the_target_changes_the_answer(monkeypatch, demo_copy):
    at = open_choose(monkeypatch, demo_copy)
    at.selectbox(key="choose_exp").set_value(DIGITS).run()
    exp = at.selectbox(key="choose_exp").value
    at.number_input(key=f"choose_value_{exp}_val_error").set_value(1e-6).run()
    assert_clean(at)
    assert "No batch size reached the target" in text_of(at)


def test_demo_mnist_study(monkeypatch, demo_copy):
    """The demo's MNIST study (examples/cpu/advise-mnist*.yaml): its grids' stored target,
    "fastest" from the lone timing probe, B_simple over training, the new sharpness measures."""
    exp = "demo-advise-mnist"
    at = open_choose(monkeypatch, demo_copy)
    at.selectbox(key="choose_exp").set_value(exp).run()
    assert_clean(at)
    assert at.radio(key=f"choose_kind_{exp}").value == "stored"
    text = text_of(at)
    assert "Fastest (least wall time on this hardware): batch size" in text
    assert HOW["timing"] not in text and HOW["noise"] not in text
    assert "B_simple over training" in [s.value for s in at.subheader]
    tables = [d.value for d in at.dataframe]
    probe = next(t for t in tables if "s_per_step" in t.columns)
    # a probe row per batch size of the group shown (the page opens on one lr rule's group)
    sizes = list(probe["batch_size"])
    assert len(sizes) >= 3 and set(sizes) <= {16, 32, 64, 128, 256, 512}
    verdicts = next(t for t in tables if "contradicted" in t.columns and "measure" in t.columns)
    assert {"lambda_max", "batch sharpness"} <= set(verdicts["measure"])


def s_per_step(b: int) -> float:
    """The lone timing probe's seconds per step: with S = 100 (1 + 64 / B) the least wall time
    is at B = 32 (the trials' own 0.01 s per step would pick 128)."""
    return 0.002 + 0.0001 * b


def _timings(layout: Layout, experiment: str) -> None:
    from datetime import datetime, timezone

    from warehouse.store import write_rows

    for b in (16, 32, 64, 128):
        row = {
            "experiment": experiment,
            "timing_id": f"t{b}",
            "dataset": "d",
            "model": "m",
            "batchnorm": False,
            "optimizer": "sgd",
            "batch_size": b,
            "s_per_step": s_per_step(b),
            "s_per_step_iqr": 1e-5,
            "s_per_step_all": json.dumps([s_per_step(b) * k for k in (0.99, 1.0, 1.01)]),
            "repeats": 3,
            "steps": 20,
            "torch_threads": 1,
            "ray_num_cpus": 1.0,
            "load1_before": 0.5,
            "load1_after": 0.6,
            "device": "cpu",
            "device_name": "cpu",
            "measured_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        }
        write_rows(layout, "timings", experiment, row["timing_id"], [row])


def _sharpness(b: int, seed: int) -> list[dict]:
    """One row of each sharpness probe (values rising with the batch size)."""
    v = float(b) + seed
    rows = [
        {"probe": "hessian_top_eig", "value": v},
        {"probe": "batch_sharpness", "value": 2 * v},
        {"probe": "keskar_sharpness", "value": v / 10, "settings_json": json.dumps({"eps": 1e-3})},
        {
            "probe": "adaptive_sharpness_worst_linf",
            "value": v / 100,
            "settings_json": json.dumps({"rho": 0.01}),
        },
    ]
    return [{"epoch": 4, "status": "ok", **r} for r in rows]


def _noise_warehouse(root: Path, timings: bool = True) -> str:
    """4 batch sizes x 2 seeds, steps to target on the McCandlish curve, B_simple probed at
    epochs 1..4 and rising (100 x epoch), every sharpness probe, lone timings."""
    layout = Layout.open(str(root))
    if timings:
        _timings(layout, "noise")
    for b in (16, 32, 64, 128):
        for seed in (0, 1):
            tid = f"n-b{b}-s{seed}"
            steps = round(100 * (1 + 64 / b)) + seed
            probes = _sharpness(b, seed) + [
                {
                    "epoch": e,
                    "probe": "noise_scale_two_batch",
                    "value": 100.0 * e + seed,
                    "status": "ok",
                    "measured_at": "epoch" if e < 4 else "final",
                    "settings_json": json.dumps({}),
                }
                for e in (1, 2, 3, 4)
            ]
            epochs = [
                {"epoch": e, "step": e * steps // 4, "val_acc": 0.5 + 0.1 * e, "val_loss": 1.0 / e}
                for e in (1, 2, 3, 4)
            ]
            write_trial(
                layout,
                "noise",
                {
                    "trial_id": tid,
                    "config_hash": tid,
                    "status": "completed",
                    "stop_reason": "target_reached",
                    "dataset": "d",
                    "model": "m",
                    "optimizer": "sgd",
                    "batch_size": b,
                    "lr": 0.1,
                    "scaled_lr": 0.1,
                    "lr_scaling": "none",
                    "base_batch_size": 16,
                    "seed": seed,
                    "steps_to_target": steps,
                    "steps_run": steps,
                    "train_time_s": steps * 0.01,
                    "pack_size": 1,
                    "device_name": "cpu",
                },
                {"epochs": epochs, "probes": probes},
            )
    return str(root)


def test_b_simple_over_training_is_drawn(monkeypatch, tmp_path):
    root = _noise_warehouse(tmp_path / "runs")
    at = open_choose(monkeypatch, root)
    assert_clean(at)
    # a stored target: the radio starts there
    assert at.radio(key="choose_kind_noise").value == "stored"
    text = text_of(at)
    assert "B_simple over training" in [s.value for s in at.subheader]
    assert HOW["noise"] not in text
    # the lone timing probe decides "fastest": 32 (the trials' own seconds would say 128)
    assert "Fastest (least wall time on this hardware): batch size 32" in text
    assert HOW["timing"] not in text
    tables = [d.value for d in at.dataframe]
    probe = next(t for t in tables if "s_per_step" in t.columns)
    assert list(probe["batch_size"]) == [16, 32, 64, 128]
    # every sharpness measure judged, none said to be missing
    assert HOW["measures"] not in text
    verdicts = next(t for t in tables if "contradicted" in t.columns and "measure" in t.columns)
    names = set(verdicts["measure"])
    assert {"lambda_max", "batch sharpness", "Keskar (eps 0.001)"} <= names
    assert "adaptive worst-case (Linf) (rho 0.01)" in names
    charts = at.get("vega_lite_chart")
    specs = [json.loads(c.proto.spec) for c in charts]
    # the fit chart and the B_simple chart, both with a plot area PLOT_HEIGHT tall, fit-x
    assert len(specs) == 2
    for s in specs:
        assert s["autosize"]["type"] == "fit-x"
        heights = [s.get("height")] + [x.get("height") for x in s.get("layer", [])]
        assert any(h and h >= 250 for h in heights), heights
    con = connect(Layout.open(root))
    (a,) = advise(con, Filters(), n_resamples=50, seed=0)
    assert math.isfinite(a["fit"]["b_crit"])
    con.close()


def test_filters_that_select_no_completed_trial(monkeypatch, demo_copy):
    at = open_choose(monkeypatch, demo_copy)
    at.sidebar.multiselect(key="f_experiment").set_value(["quick-mnist1d"]).run()
    assert_clean(at)
    assert at.selectbox(key="choose_exp").value == "quick-mnist1d"


def test_charts_are_valid_vega_lite_with_a_tall_plot():
    """The builders' specs validate against Vega-Lite's schema (to_dict validates), with
    and without estimates, intervals and B_simple rows; the plot area is PLOT_HEIGHT tall."""
    import pandas as pd

    from app.chart_kit import PLOT_HEIGHT
    from app.choose_charts import b_simple_chart, steps_fit_chart

    pts = pd.DataFrame(
        {
            "batch_size": [16, 32, 64],
            "steps": [500.0, 300.0, 200.0],
            "steps_lo": [480.0, float("nan"), 190.0],
            "steps_hi": [520.0, float("nan"), 210.0],
            "best_lr": [0.1] * 3,
            "examples": [8000.0, 9600.0, 12800.0],
        }
    )
    curve = pd.DataFrame({"batch_size": [16.0, 64.0], "steps": [500.0, 200.0]})
    marks = pd.DataFrame({"what": ["B_crit = E_min / S_min"], "value": [64.0]})
    empty = pd.DataFrame(columns=["what", "value"])
    for chart in (
        steps_fit_chart(pts, curve, marks),
        steps_fit_chart(pts, curve.iloc[:0], empty),
    ):
        spec = chart.to_dict()
        assert spec["height"] == PLOT_HEIGHT
    ns = pd.DataFrame(
        {
            "batch_size": [16, 16],
            "lr": [0.1, 0.1],
            "epoch": [1, 2],
            "b_simple_mean": [100.0, 200.0],
            "b_simple_std": [1.0, 2.0],
            "n_seeds": [2, 2],
        }
    )
    assert b_simple_chart(ns).to_dict()["height"] == PLOT_HEIGHT
    one = ns.assign(epoch=3, batch_size=[16, 32])  # one probed epoch: against batch size
    spec = b_simple_chart(one).to_dict()
    assert spec["encoding"]["x"]["field"] == "batch_size"
    assert spec["height"] == PLOT_HEIGHT
