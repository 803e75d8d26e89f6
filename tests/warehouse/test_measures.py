"""warehouse/measures.py: the sharpness-measure table and the granulated Kendall ranking on
a synthetic warehouse whose answer is known by construction."""

from __future__ import annotations

import json
import math

import pytest

from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.measures import granulated_kendall, measure_ranking, sharpness_measures
from warehouse.queries import Filters
from warehouse.store import write_trial

BATCHES = (32, 64, 128, 256)
LRS = (0.01, 0.02, 0.04)
SEEDS = (0, 1)


def _gap(bs: int, lr: float, seed: int) -> float:
    """Grows with the batch size, shrinks with the lr (a distinct value per trial)."""
    return math.log2(bs) - 2.0 * math.log2(lr / 0.01) + 0.01 * seed


def build(root: str) -> str:
    """12 x 2 trials; probes: `keskar_sharpness` (eps 1e-3) = the gap itself (tracks it along
    every axis: granulated tau 1), `hessian_top_eig` = log2(bs) + log2(lr) (tracks it along
    the batch size, against it along the lr: 0), `batch_sharpness` = minus the gap (-1);
    plus a broken row (status diverged) and a `best` row that must be ignored."""
    layout = Layout.open(root)
    for bs in BATCHES:
        for lr in LRS:
            for seed in SEEDS:
                tid = f"t-b{bs}-lr{lr}-s{seed}"
                g = _gap(bs, lr, seed)
                probes = [
                    {
                        "epoch": 3,
                        "probe": "keskar_sharpness",
                        "value": 10 + g,
                        "status": "ok",
                        "settings_json": json.dumps({"eps": 1e-3}),
                    },
                    {
                        "epoch": 3,
                        "probe": "hessian_top_eig",
                        "status": "ok",
                        "value": math.log2(bs) + math.log2(lr / 0.01) + 0.001 * seed,
                    },
                    {"epoch": 3, "probe": "batch_sharpness", "value": 5 - g, "status": "ok"},
                    {"epoch": 3, "probe": "batch_sharpness", "value": 99.0, "status": "diverged"},
                    {
                        "epoch": 3,
                        "probe": "hessian_top_eig",
                        "value": -50.0,
                        "status": "ok",
                        "measured_at": "best",
                    },
                ]
                epochs = [
                    {
                        "epoch": e,
                        "step": e * 10,
                        "train_loss_eval": 0.1,
                        "val_loss": 0.1 + g * e / 3,
                        "train_acc_eval": 0.99,
                        "val_acc": 0.99 - 0.01 * g * e / 3,
                    }
                    for e in (1, 2, 3)
                ]
                write_trial(
                    layout,
                    "rank",
                    {
                        "trial_id": tid,
                        "config_hash": tid,
                        "status": "completed",
                        "dataset": "d",
                        "model": "m",
                        "optimizer": "sgd",
                        "momentum": 0.9,
                        "batch_size": bs,
                        "lr": lr,
                        "scaled_lr": lr,
                        "lr_scaling": "none",
                        "base_batch_size": 32,
                        "seed": seed,
                    },
                    {"epochs": epochs, "probes": probes},
                )
    return root


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = connect(build(str(tmp_path_factory.mktemp("rank"))))
    yield c
    c.close()


def test_sharpness_measures_table(con):
    df = sharpness_measures(con, Filters())
    want = {
        "keskar_sharpness@0.001",
        "hessian_top_eig",
        "batch_sharpness",
        "eos_ratio",
        "eos_ratio_momentum",
        "batch_eos_ratio",
        "lr_over_batch_size",
    }
    assert set(df["measure"]) == want
    assert (df.groupby("measure").size() == 24).all()  # one per trial; best/diverged ignored
    r = df[(df.measure == "eos_ratio_momentum") & (df.trial_id == "t-b64-lr0.04-s1")].iloc[0]
    lam = 6 + 2 + 0.001
    assert r["value"] == pytest.approx(lam * 0.04 / (2 + 2 * 0.9))
    e = df[(df.measure == "eos_ratio") & (df.trial_id == "t-b64-lr0.04-s1")].iloc[0]
    assert e["value"] == pytest.approx(lam * 0.04 / 2)
    k = df[(df.measure == "keskar_sharpness@0.001") & (df.trial_id == "t-b64-lr0.04-s1")].iloc[0]
    assert k["gap_loss"] == pytest.approx(_gap(64, 0.04, 1))
    assert k["gap_error"] == pytest.approx(0.01 * _gap(64, 0.04, 1))


def test_measure_ranking_known_answer(con):
    rank = measure_ranking(con, Filters(), gap="loss")
    by = rank.set_index("measure")
    assert by.loc["keskar_sharpness@0.001", "granulated_tau"] == pytest.approx(1.0)
    assert by.loc["keskar_sharpness@0.001", "overall_tau"] == pytest.approx(1.0)
    h = by.loc["hessian_top_eig"]
    assert h["batch_size_tau"] == pytest.approx(1.0) and h["lr_tau"] == pytest.approx(-1.0)
    assert h["granulated_tau"] == pytest.approx(0.0)
    assert h["batch_size_groups"] == 6 and h["lr_groups"] == 8  # 3 lrs x 2 seeds; 4 bs x 2
    assert by.loc["batch_sharpness", "granulated_tau"] == pytest.approx(-1.0)
    assert rank["measure"].iloc[0] == "keskar_sharpness@0.001"
    # lr / batch size falls with the batch size and rises with the lr: -1 as well
    assert by.loc["lr_over_batch_size", "granulated_tau"] == pytest.approx(-1.0)
    assert set(rank["measure"].iloc[-3:]) == {
        "batch_sharpness",
        "batch_eos_ratio",
        "lr_over_batch_size",
    }
    assert set(by.loc["keskar_sharpness@0.001", "axes"].split(",")) == {"lr", "batch_size"}
    assert bool(by.loc["lr_over_batch_size", "is_baseline"])
    err = measure_ranking(con, Filters(), gap="error").set_index("measure")
    assert err.loc["keskar_sharpness@0.001", "granulated_tau"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        measure_ranking(con, Filters(), gap="accuracy")


def test_granulated_kendall_ignores_constant_groups():
    import pandas as pd

    df = pd.DataFrame(
        {
            "experiment": "e",
            "seed": 0,
            "lr": [1, 2, 1, 2],
            "batch_size": [1, 1, 2, 2],
            "v": [1.0, 1.0, 1.0, 2.0],
            "g": [1.0, 2.0, 3.0, 4.0],
        }
    )
    r = granulated_kendall(df, "v", "g", axes=("lr", "batch_size"))
    # lr: group bs=1 has a constant measure (tau undefined, left out), group bs=2 tau = 1
    assert r["lr_groups"] == 1 and r["lr_tau"] == pytest.approx(1.0)


def test_cli_advise_sharpness_rank(tmp_path, capsys):
    from batchlab.cli import main

    root = build(str(tmp_path / "w"))
    assert main(["advise", "--storage", root, "--sharpness", "loss"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sharpness measures vs the generalization gap (loss)")
    assert out[2].split()[:2] == ["keskar_sharpness@0.001", "1.00"]
    assert main(["advise", "--storage", root, "--sharpness", "error", "--format", "json"]) == 0
    assert '"granulated_tau": 1.0' in capsys.readouterr().out


def test_kendall_tau_b_equals_scipy_with_ties():
    """The pairwise-sign tau-b (small groups) is scipy's tau-b, ties and constants included."""
    import numpy as np
    from scipy import stats

    from warehouse.measures import EXACT_MAX_N, kendall_tau_b

    rng = np.random.default_rng(3)
    for n in (2, 3, 4, 9, 40, EXACT_MAX_N + 5):
        for _ in range(30):
            x = rng.integers(0, 4, n).astype(float)
            y = rng.integers(0, 3, n).astype(float)
            want = stats.kendalltau(x, y).statistic
            got = kendall_tau_b(x, y)
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert math.isnan(kendall_tau_b([1.0], [2.0]))
    assert math.isnan(kendall_tau_b([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
