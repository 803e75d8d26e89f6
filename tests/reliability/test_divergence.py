"""Non-finite values at every point of a trial: the trial is stored as `diverged` with the
step, the other trials of the grid are untouched (bit-identical to running them alone).

One grid, six trials, each with its own fault (scheduler/faults.py, `BATCHLAB_FAULT_PLAN`):
NaN in the very first step's batch; inf in the middle of epoch 2; NaN in the last step of
epoch 2; NaN in the validation of epoch 2 (training finite); NaN only inside the
end-of-training probes (sharpness, Hessian); nothing. Loss explosion by a huge lr is covered
by tests/scheduler/test_run.py::test_diverging_trial_is_recorded_and_others_complete.

Decision (docs/reliability.md): a probe that meets a non-finite loss does not make the
trial diverged: training finished and its rows are valid; the probe row gets status
`diverged` and value NaN, and queries of probe values filter on status = 'ok'.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from scheduler.runner import plan, run_grid
from scheduler.spec import parse_spec
from scheduler.tasks import execute_trial
from tests.reliability.helpers import (
    DIGITS_TRAIN,
    assert_readers_see_only_committed,
    tiny_grid,
)
from warehouse.db import connect
from warehouse.layout import Layout
from workers.train import steps_per_epoch

MAX_EPOCHS = 3
SPE = steps_per_epoch(DIGITS_TRAIN, 128)  # 12
MEASURE = {
    "train_eval": False,
    "sharpness": {"eps": [1e-3], "max_iter": 2, "n_examples": 64},
    "hessian": {"max_iter": 3, "n_examples": 64},
}
TRAINING_COLS = "epoch, step, train_loss, val_loss, val_acc, dist_from_init, grad_norm_mean"


def not_a_number(v: float | None) -> bool:
    """NaN as stored: the warehouse writes NaN floats as NULL (warehouse/schemas.to_table)."""
    return v is None or math.isnan(v)


def _rows(root: str, trial_id: str) -> tuple[list, list, list]:
    con = connect(root)
    ep = con.execute(
        f"SELECT {TRAINING_COLS} FROM epochs WHERE trial_id = ? ORDER BY epoch", [trial_id]
    ).fetchall()
    st = con.execute(
        "SELECT step, batch_loss FROM steps WHERE trial_id = ? ORDER BY step", [trial_id]
    ).fetchall()
    pr = con.execute(
        "SELECT probe, epoch, status, value FROM probes WHERE trial_id = ? ORDER BY probe",
        [trial_id],
    ).fetchall()
    return ep, st, pr


@pytest.mark.slow
def test_non_finite_values_anywhere_give_diverged_with_the_step_and_spare_the_others(
    ray_local, tmp_path, monkeypatch
):
    spec = parse_spec(tiny_grid("nan", list(range(6)), max_epochs=MAX_EPOCHS, measure=MEASURE))
    first, mid, last, val, probe, clean = spec.trials()
    ref_root = str(tmp_path / "ref")
    threads = torch.get_num_threads()
    try:
        for t in (probe, clean):
            execute_trial(t.model_dump_json(), "nan", ref_root, code_version="r", device="cpu",
                          num_threads=1)  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    monkeypatch.setenv(
        "BATCHLAB_FAULT_PLAN",
        json.dumps({
            first.trial_id: {"NONFINITE_AT_STEP": 1},
            mid.trial_id: {"NONFINITE_AT_STEP": SPE + SPE // 2, "NONFINITE": "inf"},
            last.trial_id: {"NONFINITE_AT_STEP": 2 * SPE},
            val.trial_id: {"NONFINITE_EVAL_AFTER_EPOCH": 1},
            probe.trial_id: {"NONFINITE_EVAL_AFTER_EPOCH": MAX_EPOCHS},
        }),
    )  # fmt: skip
    root = str(tmp_path / "runs")
    report = run_grid(spec, root, progress=False)
    assert report.counts == {"completed": 2, "diverged": 4, "failed": 0}, report.results

    con = connect(root)
    got = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT trial_id, status, stop_reason, diverged_step, epochs_run FROM trials"
        ).fetchall()
    }
    # (status, stop_reason, diverged_step, epochs completed before the divergence)
    assert got[first.trial_id] == ("diverged", "diverged", 1, 0)
    assert got[mid.trial_id] == ("diverged", "diverged", SPE + SPE // 2, 1)
    assert got[last.trial_id] == ("diverged", "diverged", 2 * SPE, 1)
    # Validation diverged at the end of epoch 2: the step is the epoch's last one.
    assert got[val.trial_id] == ("diverged", "diverged", 2 * SPE, 2)
    assert got[probe.trial_id] == ("completed", "max_epochs", -1, MAX_EPOCHS)
    assert got[clean.trial_id] == ("completed", "max_epochs", -1, MAX_EPOCHS)

    # Rows of a diverged trial stop where it diverged; no probe runs on a diverged model.
    ep, st, pr = _rows(root, val.trial_id)
    assert [r[0] for r in ep] == [1, 2] and not_a_number(ep[1][3]) and math.isfinite(ep[1][2])
    assert len(st) == 2 * SPE and pr == []
    for t, n_epochs in ((first, 0), (mid, 1), (last, 1)):
        ep, st, pr = _rows(root, t.trial_id)
        assert (len(ep), len(st), pr) == (n_epochs, n_epochs * SPE, []), t.seed

    # A probe that meets NaN: its rows say so, training results are untouched.
    ep, st, pr = _rows(root, probe.trial_id)
    ref_ep, ref_st, ref_pr = _rows(ref_root, probe.trial_id)
    assert (ep, st) == (ref_ep, ref_st)
    assert [(p, e, s) for p, e, s, _ in pr] == [
        ("hessian_top_eig", MAX_EPOCHS, "diverged"),
        ("keskar_sharpness", MAX_EPOCHS, "diverged"),
    ]
    assert all(not_a_number(v) for *_, v in pr)
    assert {p[2] for p in ref_pr} == {"ok"}
    # The untouched trial equals its lone run, probes included.
    assert _rows(root, clean.trial_id) == _rows(ref_root, clean.trial_id)

    assert_readers_see_only_committed(root, "nan")
    # Diverged is a result, not an error: a re-run does not run those trials again.
    assert plan(spec, Layout.open(root)).to_run == []
