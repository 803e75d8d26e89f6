"""warehouse/sharpness_verdicts.py: F-11, F-15, F-29 judged per sharpness measure, on a
synthetic warehouse whose answer is known by construction, and the 2/lr bound's numbers.

Two lr rules (fixed lr 0.1; linear scaling from bs 32), 4 batch sizes, 3 seeds, every trial
at convergence. Per trial:
- Keskar sharpness rises with batch size under both rules, faster at a fixed lr
  (F-11 and F-15 supported on it);
- batch sharpness falls with batch size (F-11 contradicted on it: the measures disagree);
- lambda_max sits at exactly RATIO x the edge-of-stability bound (2 + 2 beta) / lr, so at a
  fixed lr it is constant (F-11 undecided) and under linear scaling it falls like 1/B;
- the minimum validation loss rises with batch size (F-29's second part)."""

from __future__ import annotations

import json
import math

import pytest

from warehouse import findings as fnd
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.queries import Filters
from warehouse.sharpness_verdicts import (
    agreement,
    eos_prediction,
    measure_label,
    measure_verdicts,
)
from warehouse.store import write_trial

BATCHES = (32, 64, 128, 256)
SEEDS = (0, 1, 2)
LR0, BETA, RATIO = 0.1, 0.9, 0.8


def _lr(rule: str, b: int) -> float:
    return LR0 * (b / 32 if rule == "linear" else 1.0)


def build(root: str, ratio: float = RATIO) -> str:
    layout = Layout.open(root)
    for rule in ("none", "linear"):
        for b in BATCHES:
            lr = _lr(rule, b)
            for seed in SEEDS:
                tid = f"{rule}-b{b}-s{seed}"
                # equal at bs 32, where both rules train alike (the trials are shared)
                k = 5 + (math.log2(b) - 5) * (2.0 if rule == "none" else 1.0) + 0.05 * seed
                probes = [
                    {
                        "epoch": 5,
                        "probe": "keskar_sharpness",
                        "value": 10 + k,
                        "status": "ok",
                        "settings_json": json.dumps({"eps": 1e-3}),
                    },
                    {
                        "epoch": 5,
                        "probe": "batch_sharpness",
                        "value": 100 - 10 * math.log2(b) + 0.1 * seed,
                        "status": "ok",
                    },
                    {
                        "epoch": 5,
                        "probe": "hessian_top_eig",
                        "value": ratio * (2 + 2 * BETA) / lr * (1 + 0.001 * seed),
                        "status": "ok",
                    },
                ]
                epochs = [
                    {
                        "epoch": e,
                        "step": e * 10,
                        "train_loss_eval": 0.01,
                        "train_acc_eval": 1.0,
                        "val_loss": 0.5 + 0.1 * math.log2(b) + 0.01 * seed + 0.1 / e,
                        "val_acc": 0.9,
                    }
                    for e in (1, 2, 3, 4, 5)
                ]
                write_trial(
                    layout,
                    "sv",
                    {
                        "trial_id": tid,
                        "config_hash": tid,
                        "status": "completed",
                        "stop_reason": "target_reached",
                        "dataset": "d",
                        "model": "m",
                        "optimizer": "sgd",
                        "momentum": BETA,
                        "batch_size": b,
                        "lr": LR0,
                        "scaled_lr": lr,
                        "lr_scaling": rule,
                        "base_batch_size": 32,
                        "seed": seed,
                        "epochs_run": 5,
                        "best_epoch": 5,
                        "best_val_loss": 0.5 + 0.1 * math.log2(b) + 0.01 * seed + 0.02,
                    },
                    {"epochs": epochs, "probes": probes},
                )
    return root


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = connect(build(str(tmp_path_factory.mktemp("sv"))))
    yield c
    c.close()


@pytest.fixture(scope="module")
def table(con):
    return measure_verdicts(con, Filters())


def verdict(table, fid: str, measure: str) -> str:
    row = table[(table["id"] == fid) & (table["measure"] == measure)]
    assert len(row) == 1, (fid, measure, table[["id", "measure"]])
    return row["verdict"].iloc[0]


def test_every_measure_judged_for_every_finding(table):
    measures = set(table["measure"])
    assert {"keskar_sharpness@0.001", "batch_sharpness", "hessian_top_eig", "eos_ratio"} <= measures
    assert "lr_over_batch_size" not in measures  # the baseline is no sharpness
    for fid in ("F-11", "F-15", "F-29"):
        assert set(table.loc[table["id"] == fid, "measure"]) == measures


def test_known_verdicts(table):
    # Keskar rises with batch size at a fixed lr; batch sharpness falls
    assert verdict(table, "F-11", "keskar_sharpness@0.001") == fnd.SUPPORTED
    assert verdict(table, "F-11", "batch_sharpness") == fnd.CONTRADICTED
    # lambda_max at a fixed lr is the same at every batch size (the bound is): no trend
    assert verdict(table, "F-11", "hessian_top_eig") == fnd.UNDECIDED
    # F-15 on Keskar: scaled flatter than fixed at bs 256, and still sharper than bs 32
    assert verdict(table, "F-15", "keskar_sharpness@0.001") == fnd.SUPPORTED
    # on lambda_max under linear scaling, large batches are flatter than small ones
    assert verdict(table, "F-15", "hessian_top_eig") == fnd.CONTRADICTED


def test_same_verdict_as_the_findings_engine_on_its_own_measure(con, table):
    """Keskar for F-11 / F-15 and lambda_max for F-29 are what warehouse.findings judges."""
    engine = {v.id: v.verdict for v in fnd.evaluate(con, Filters())}
    assert verdict(table, "F-11", "keskar_sharpness@0.001") == engine["F-11"]
    assert verdict(table, "F-15", "keskar_sharpness@0.001") == engine["F-15"]
    assert verdict(table, "F-29", "hessian_top_eig") == engine["F-29"]


def test_agreement_names_the_disagreement(table):
    a = agreement(table)
    assert set(a) == {"F-11", "F-15", "F-29"}
    assert a["F-11"].startswith("the measures disagree")
    assert measure_label("batch_sharpness") in a["F-11"]
    assert "Keskar (eps 0.001)" in a["F-11"]


def test_eos_prediction_recovers_the_ratio_and_the_bound(con):
    pred = {p["lr_scaling"]: p for p in eos_prediction(con, Filters())}
    assert set(pred) == {"none", "linear"}
    bound = (2 + 2 * BETA) / LR0
    fixed, lin = pred["none"], pred["linear"]
    assert fixed["bound_small"] == pytest.approx(bound)
    assert fixed["bound_large"] == pytest.approx(bound)
    assert lin["bound_large"] == pytest.approx(bound * 32 / 256)
    for p in (fixed, lin):
        assert p["ratio_small"] == pytest.approx(RATIO, rel=0.01)
        assert p["ratio_large"] == pytest.approx(RATIO, rel=0.01)
    # near the bound under linear scaling: F-15's second part is predicted contradicted
    assert "second part contradicted" in lin["text"]
    assert "at every batch size" in fixed["text"]


def test_labels():
    assert measure_label("keskar_sharpness@0.001") == "Keskar (eps 0.001)"
    assert measure_label("adaptive_sharpness_worst_l2@0.5") == "adaptive worst-case (L2) (rho 0.5)"
    assert measure_label("eos_ratio") == "lambda_max x lr / 2"


def test_empty_selection(con):
    assert measure_verdicts(con, Filters(experiment=("nothing",))).empty
    assert eos_prediction(con, Filters(experiment=("nothing",))) == []


def test_eos_prediction_above_the_bound_predicts_nothing(tmp_path):
    c = connect(build(str(tmp_path / "runs"), ratio=3.0))
    try:
        for p in eos_prediction(c, Filters()):
            assert p["ratio_large"] == pytest.approx(3.0, rel=0.01)
            assert "above the bound" in p["text"] and "predicts nothing" in p["text"]
    finally:
        c.close()
