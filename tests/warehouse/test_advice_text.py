"""warehouse/advice_text.py: the suggested target, the answer in words and its table (the
advisor's numbers, not others), and the report's sections, on a small warehouse of known
answers: steps to a validation-error target on the McCandlish curve S = 100 (1 + 64 / B)."""

from __future__ import annotations

import math

import pytest

from warehouse.advice import Target, advise
from warehouse.advice_text import (
    TARGET_MARGIN,
    answer_lines,
    report_section,
    suggest_target,
    table_frame,
)
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.queries import Filters
from warehouse.store import write_trial

BATCHES = (16, 32, 64, 128)
SEEDS = (0, 1, 2)


def steps(b: int, seed: int) -> int:
    return round(100 * (1 + 64 / b)) + 4 * seed


def best_error(b: int) -> float:
    """Each batch size's best validation error: larger batches end a bit worse."""
    return 0.05 + 0.01 * math.log2(b / 16)


def build(root: str, stored: bool) -> str:
    layout = Layout.open(root)
    for b in BATCHES:
        for seed in SEEDS:
            s = steps(b, seed)
            tid = f"b{b}-s{seed}"
            # 1 - val_acc falls to best_error(b) at epoch 4; 0.5 is crossed at the step s
            epochs = [
                {"epoch": 1, "step": s // 2, "val_acc": 0.3},
                {"epoch": 2, "step": s, "val_acc": 0.6},
                {"epoch": 3, "step": 2 * s, "val_acc": 0.8},
                {"epoch": 4, "step": 3 * s, "val_acc": 1 - best_error(b) - 0.001 * seed},
            ]
            write_trial(
                layout,
                "txt",
                {
                    "trial_id": tid,
                    "config_hash": tid,
                    "status": "completed",
                    "dataset": "d",
                    "model": "m",
                    "optimizer": "sgd",
                    "batch_size": b,
                    "lr": 0.1,
                    "scaled_lr": 0.1,
                    "lr_scaling": "none",
                    "base_batch_size": 16,
                    "seed": seed,
                    "steps_to_target": s if stored else -1,
                    "steps_run": 3 * s,
                    "train_time_s": 3 * s * 0.01,
                    "pack_size": 1,
                    "device_name": "cpu",
                },
                {"epochs": epochs},
            )
    return root


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    c = connect(build(str(tmp_path_factory.mktemp("txt-stored")), stored=True))
    yield c
    c.close()


@pytest.fixture(scope="module")
def unstored(tmp_path_factory):
    c = connect(build(str(tmp_path_factory.mktemp("txt-none")), stored=False))
    yield c
    c.close()


def test_suggested_target(stored, unstored):
    assert suggest_target(stored, Filters()) == Target()
    t = suggest_target(unstored, Filters())
    assert t.kind == "val_error"
    # the loosest batch size (128), its one lr's worst seed (2: error + 0.002), x 1.1
    assert t.value == pytest.approx(TARGET_MARGIN * (best_error(128) + 0.002), rel=1e-3)
    (a,) = advise(unstored, Filters(), t, n_resamples=20, seed=0)
    assert all(r["n_reached"] == r["n_seeds"] == 3 for r in a["table"])  # every seed


def test_answer_and_table_are_the_advisors(stored):
    (a,) = advise(stored, Filters(), n_resamples=100, seed=0)
    lines = answer_lines(a)
    few = a["fewest_examples"]
    assert few["batch_size"] == 16  # E = 100 B + 6400: least at the smallest batch size
    assert any(f"Fewest examples: batch size {few['batch_size']}" in x for x in lines)
    assert any("Fewest examples" in x and "(3 of 3 seeds reached it)" in x for x in lines)
    assert any("B_crit" in x and "McCandlish" in x for x in lines)
    b_crit = a["fit"]["b_crit"]
    assert b_crit == pytest.approx(64, rel=0.1)
    assert any(f"{b_crit:.3g}" in x for x in lines)
    t = table_frame(a)
    assert list(t["batch size"]) == [str(b) for b in BATCHES]
    assert list(t["reached"]) == ["3/3"] * len(BATCHES)
    for row, r in zip(t.itertuples(), a["table"], strict=True):
        assert row.steps.startswith(f"{r['steps']:.3g}")


def test_no_answer_says_how(stored):
    (a,) = advise(stored, Filters(), Target("val_error", 1e-9), n_resamples=0)
    (line,) = answer_lines(a)
    assert line.startswith("No batch size reached the target")
    assert "target_val_error" in line


def test_report_section(unstored):
    md = "\n".join(report_section(unstored, Filters()))
    assert "## Which batch size should I use?" in md
    assert "### txt" in md
    assert "no trial has a stored target" in md
    assert "| batch size | best lr |" in md
    assert "No noise-scale probes" in md  # and which setting produces them
    assert "probe_every_epochs" in md
    assert "## F-11, F-15, F-29 on each sharpness measure" in md
    assert "No sharpness probes" in md
    assert report_section(unstored, Filters()) == report_section(unstored, Filters())
