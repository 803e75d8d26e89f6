"""`batchlab advise --dataset --model` (scheduler/advise_study.py, docs/advise.md): the ladder
and lr-bracket logic as pure functions, and one tiny study end to end through local Ray."""

from __future__ import annotations

import json
import math
import time

import pytest

from scheduler.advise_study import (
    StudyOptions,
    bracket_lrs,
    derive_target,
    ladder_decision,
    stage_epochs,
    stage_grid,
)


def test_bracket_lrs_brackets_none_sqrt_and_linear_from_the_small_batch_and_the_last_stage():
    # from lr0 = 0.1 at B0 = 32 to 128: none 0.1, sqrt 0.2, linear 0.4
    assert bracket_lrs(0.1, 32, 128) == [0.1, 0.2, 0.4]
    # and from the previous stage's best (0.3 at 64): 0.3, 0.424, 0.6, merged and sorted
    assert bracket_lrs(0.1, 32, 128, prev_lr=0.3, prev_b=64) == [0.1, 0.2, 0.3, 0.4, 0.424, 0.6]
    # near-duplicates (within 5%) collapse: the previous best on the linear rule
    assert bracket_lrs(0.1, 32, 128, prev_lr=0.2, prev_b=64) == [0.1, 0.2, 0.283, 0.4]
    assert bracket_lrs(0.1, 32, 32) == [0.1]


def test_derive_target_is_the_factor_times_the_best_error_inside_0_1():
    assert derive_target(0.2, 1.1) == pytest.approx(0.22)
    assert derive_target(0.0, 1.1) == pytest.approx(0.001)  # never the unreachable 0
    assert derive_target(0.95, 1.1) == 0.999
    with pytest.raises(ValueError):
        derive_target(math.nan)


def test_ladder_stops_on_diminishing_returns_an_unreached_target_or_the_cap():
    assert ladder_decision({32: 1000.0}, 1024) == (False, "")
    assert ladder_decision({32: 1000.0, 64: 520.0}, 1024) == (False, "")
    stop, why = ladder_decision({32: 1000.0, 64: 520.0, 128: 450.0}, 1024)
    assert stop and "diminishing returns" in why and "13%" in why
    stop, why = ladder_decision({32: 1000.0, 64: math.nan}, 1024)
    assert stop and "did not reach" in why
    stop, why = ladder_decision({32: 1000.0, 64: 500.0}, 64)
    assert stop and "largest batch size allowed (64)" in why
    assert ladder_decision({32: 1000.0, 64: 850.0}, 1024, min_gain=0.1) == (False, "")


def test_stage_budget_is_stage_0_steps_or_twice_the_previous_batch_sizes_steps():
    opts = StudyOptions(dataset="mnist1d", model="mlp", min_batch_size=32, epochs=20)
    # B=64, previous (32) took 2000 steps: stage 0's 20 x 2 = 40 epochs is the smaller
    assert stage_epochs(opts, 64, 2000.0, 4000) == 40
    # B=1024, previous (512) took 232 steps: 2 x 232 x 1024 / 4000 -> 119 epochs, not 640
    assert stage_epochs(opts, 1024, 232.0, 4000) == 119
    assert stage_epochs(StudyOptions("d", "m", max_epochs_cap=50), 1024, 1e6, 10) == 50


def test_stage_grid_is_a_valid_grid_whose_trial_ids_do_not_depend_on_resources():
    from scheduler.spec import parse_spec

    opts = StudyOptions(dataset="mnist1d", model="mlp", seeds=2)
    data = stage_grid(opts, 64, [0.1, 0.2], 40, 0.3)
    spec = parse_spec(data)
    assert spec.experiment == "advise-mnist1d-mlp" and spec.n_trials == 4
    assert {t.batch_size for t in spec.trials()} == {64}
    assert {t.scaled_lr for t in spec.trials()} == {0.1, 0.2}
    assert all(t.target_val_error == 0.3 and t.max_epochs == 40 for t in spec.trials())
    other = parse_spec({**data, "resources": {"cpus_per_trial": 2}})
    assert [t.trial_id for t in spec.trials()] == [t.trial_id for t in other.trials()]
    assert StudyOptions(dataset="./d.py:load", model="./n.py:build").name() == (
        "advise-.-d.py-load-.-n.py-build"
    )


def test_advise_from_a_dataset_and_a_model_runs_the_study_and_resumes(ray_local, storage, capsys):
    from batchlab.cli import main
    from warehouse.db import connect
    from warehouse.layout import Layout

    argv = [
        "advise",
        "--dataset",
        "mnist1d",
        "--model",
        "mlp",
        "--storage",
        storage,
        "--min-batch-size",
        "128",
        "--max-batch-size",
        "256",
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--lr-grid",
        "0.3,1",
        "--resamples",
        "20",
    ]
    t0 = time.perf_counter()
    assert main(argv) == 0
    first_s = time.perf_counter() - t0
    cap = capsys.readouterr()
    assert "probe s" in cap.out and "least wall time: batch size" in cap.out
    assert "timing probe's median s/step" in cap.out
    assert "ladder stopped: the largest batch size allowed (256)" in cap.err
    layout = Layout.open(storage)
    folder = "studies/experiment=advise-mnist1d-mlp"
    for f in ("stage-0-b128.yaml", "stage-1-b256.yaml", "study.json"):
        assert layout.exists(layout.path(*folder.split("/"), f)), f
    study = json.loads(layout.get_bytes(layout.path(*folder.split("/"), "study.json")))
    assert study["target_val_error"] > 0 and len(study["timings"]) == 2
    con = connect(layout)
    try:
        rows = con.execute("SELECT * FROM timings ORDER BY batch_size").fetchdf()
        n_trials = con.execute("SELECT count(*) FROM trials").fetchone()[0]
    finally:
        con.close()
    assert list(rows["batch_size"]) == [128, 256]
    assert (rows["s_per_step"] > 0).all() and rows["code_version"].notna().all()
    assert (rows["ray_num_cpus"] == 2).all()  # the whole (embedded, 2-CPU) node reserved
    # re-running skips every stored trial and timing, and gives the same answer
    assert main(argv) == 0
    again = capsys.readouterr()
    assert "0 to run" in again.err and "timing of batch size 128: stored" in again.err
    assert again.out == cap.out
    con = connect(layout)
    try:
        assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == n_trials
    finally:
        con.close()
    assert first_s < 60
    # advising from the stored study alone takes its target from study.json
    assert (
        main(
            [
                "advise",
                "--storage",
                storage,
                "--experiment",
                "advise-mnist1d-mlp",
                "--resamples",
                "20",
            ]
        )
        == 0
    )
    alone = capsys.readouterr()
    assert alone.out == cap.out and "(study.json)" in alone.err
