"""Per-trial step summaries (the trials row's `step_*` columns): derived by `write_trial`,
and the queries that read them answer exactly what the same queries over `steps` answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from warehouse import queries as q
from warehouse.compact import compact
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.store import write_trial
from warehouse.summaries import HIST_BINS_PER_DECADE, step_summaries

BATCH_SIZES = (32, 256)


def _steps(rng: np.random.Generator, bs: int, n: int) -> list[dict]:
    u = np.exp(rng.normal(np.log(0.05 / np.sqrt(bs)), 0.8, n))
    g = np.exp(rng.normal(0.0, 1.0, n))
    u[rng.integers(0, n, 3)] = [np.nan, 0.0, np.inf]  # left out: nan/inf; 0 is not in a bin
    return [
        {"step": i + 1, "epoch": 1 + i // 50, "update_norm": float(a), "grad_norm": float(b)}
        for i, (a, b) in enumerate(zip(u, g, strict=True))
    ]


def _epochs(rng: np.random.Generator, bs: int, n: int = 5) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        v = rng.uniform(0.1, 1.0, 8)
        rows.append(
            {"epoch": e, "train_loss_eval": v[0], "train_acc_eval": v[1], "val_loss": v[2],
             "val_acc": v[3], "elapsed_s": e * v[4], "dist_from_init": e * v[5],
             "epoch_time_s": v[6] if e != 2 else float("nan"),  # left out of the mean
             "examples_per_s": bs / v[6], "epoch_distance": v[7]}
        )  # fmt: skip
    return rows


def _write(layout: Layout, *, summarized: bool, n_seeds: int = 3, n_steps: int = 400) -> None:
    rng = np.random.default_rng(0)
    for bs in BATCH_SIZES:
        for seed in range(n_seeds):
            old = not summarized or (seed == 0 and bs == 32 and summarized == "mixed")
            write_trial(
                layout,
                "sum",
                {
                    # NULL summaries: a row as schema version 1 wrote it
                    **({"step_update_norm_n": None, "epochs_n": None} if old else {}),
                    "best_epoch": int(rng.integers(1, 6)),
                    "trial_id": f"bs{bs}-s{seed}",
                    "config_hash": "h",
                    "status": "completed",
                    "batch_size": bs,
                    "lr": 0.1,
                    "lr_scaling": "none",
                    "seed": seed,
                    "dataset": "mnist1d",
                    "model": "mlp",
                },
                {"steps": _steps(rng, bs, n_steps), "epochs": _epochs(rng, bs)},
            )


def test_step_summaries_match_numpy_and_count_every_positive_value():
    rng = np.random.default_rng(1)
    steps = _steps(rng, 64, 1000)
    row = step_summaries(steps)
    x = np.array([r["update_norm"] for r in steps])
    x = x[np.isfinite(x)]
    assert row["step_update_norm_n"] == x.size == 998
    assert row["step_update_norm_median"] == pytest.approx(np.median(x), rel=1e-15)
    assert row["step_update_norm_p10"] == pytest.approx(np.quantile(x, 0.1), rel=1e-15)
    assert (row["step_update_norm_min"], row["step_update_norm_max"]) == (x.min(), x.max())
    assert row["step_grad_norm_n"] == 1000
    counts = dict(
        zip(row["step_update_norm_hist_bin"], row["step_update_norm_hist_n"], strict=True)
    )
    assert sum(counts.values()) == (x > 0).sum() == 997
    for b, n in counts.items():  # each count is the values inside [10^(b/20), 10^((b+1)/20))
        lo, hi = 10 ** (b / HIST_BINS_PER_DECADE), 10 ** ((b + 1) / HIST_BINS_PER_DECADE)
        assert n == ((x >= lo) & (x < hi)).sum()


def test_trial_without_steps_has_zero_counts_not_nulls():
    row = step_summaries([])
    assert (row["step_update_norm_n"], row["step_grad_norm_n"]) == (0, 0)
    assert row["step_update_norm_median"] is None and row["step_update_norm_hist_bin"] == []


@pytest.mark.parametrize("compacted", [False, True])
def test_summaries_answer_exactly_what_steps_answer(tmp_path, compacted):
    """Three warehouses with the same steps and epochs: summarized, unsummarized (as an
    older batchlab wrote them: the queries read `steps` and `epochs`), and mixed; one set
    of answers from every query that reads the summaries."""
    answers = {}
    for kind in (True, False, "mixed"):
        root = tmp_path / str(kind)
        _write(Layout.open(str(root)), summarized=kind)
        if compacted:
            compact(str(root), grace_s=0)
        con = connect(str(root))
        n_stats = con.execute("SELECT count(step_update_norm_n) FROM trials").fetchone()[0]
        assert n_stats == {True: 6, False: 0, "mixed": 5}[kind]
        answers[kind] = {
            "quantiles": q.update_norm_quantiles(con, q.Filters()),
            "generalization": q.generalization_by_batch_size(con, q.Filters()),
            "time": q.time_by_batch_size(con, q.Filters()),
            "distance": q.distance_by_batch_size(con, q.Filters()),
            **{
                f"hist{k}": q.update_norm_histogram(con, q.Filters(), bins_per_decade=k)
                for k in (1, 4, 10, 20)
            },
        }
        con.close()
    for name, ref in answers[False].items():
        for kind in (True, "mixed"):
            got = answers[kind][name]
            pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12, atol=0)
    quant = answers[True]["quantiles"]
    assert list(quant["batch_size"]) == list(BATCH_SIZES)
    assert (quant["n_steps"] == 3 * 398).all() and (quant["n_seeds"] == 3).all()
    # F-9 in this data: the larger batch's updates are smaller.
    assert quant["update_norm_median_mean"].iloc[0] > quant["update_norm_median_mean"].iloc[1]
    for k in (1, 4, 10, 20):
        h = answers[True][f"hist{k}"]
        assert (h.groupby("batch_size")["n_steps"].sum() == 3 * 397).all()
        assert np.allclose(h.groupby("batch_size")["fraction"].sum(), 1.0)
        assert np.allclose(np.log10(h["bin_hi"]) - np.log10(h["bin_lo"]), 1 / k)


def test_histogram_refuses_bins_that_do_not_divide_the_stored_resolution(tmp_path):
    _write(Layout.open(str(tmp_path)), summarized=True, n_seeds=1, n_steps=20)
    con = connect(str(tmp_path))
    with pytest.raises(ValueError, match=r"bins_per_decade: 3 is not allowed; allowed: \[1, 2"):
        q.update_norm_histogram(con, q.Filters(), bins_per_decade=3)
