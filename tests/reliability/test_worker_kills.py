"""A worker process SIGKILLed during a trial, again and again: the trial resumes from its last
epoch checkpoint (not from scratch), ends exactly like an uninterrupted run, one set of rows.

One grid on the session's local Ray, three trials: one killed at the end of epoch 2 on its
first attempt and of epoch 4 on its second, one killed right after a random optimizer step
(drawn from a seed) on each of its first two attempts, one left alone. The expected resume
points are computed from the same fault settings; the reference results come from running
each trial once, in this process, without faults.
"""

from __future__ import annotations

import json

import pytest
import torch

from scheduler.faults import kill_step
from scheduler.runner import run_grid
from scheduler.spec import parse_spec
from scheduler.tasks import execute_trial
from tests.reliability.helpers import (
    DIGITS_TRAIN,
    assert_readers_see_only_committed,
    tiny_grid,
)
from warehouse.db import connect
from warehouse.layout import Layout
from workers.config import TrialConfig
from workers.train import steps_per_epoch

MAX_EPOCHS = 4
BATCH = 128
SPE = steps_per_epoch(DIGITS_TRAIN, BATCH)  # 12 steps per epoch
TOTAL = MAX_EPOCHS * SPE

# Columns that must be bit-identical to an uninterrupted run (times are not).
EPOCH_COLS = (
    "epoch, step, lr, train_loss, val_loss, val_acc, dist_from_init, epoch_distance, "
    "examples_seen, update_norm_median, update_norm_max, grad_norm_mean, grad_norm_p90"
)
STEP_COLS = "step, epoch, lr, update_norm, grad_norm, batch_loss"
LAYER_COLS = "epoch, layer, numel, dist_from_init, rel_dist_from_init, param_norm"
SUMMARY_COLS = (
    "steps_run, epochs_run, best_val_loss, best_val_acc, best_epoch, final_val_loss, "
    "final_dist_from_init"
)


def random_kills(seed: int, trial_id: str, attempts=(1, 2)) -> list[tuple[int, int, int]]:
    """Where the seeded kills land: [(attempt, global step killed after, resume epoch)]."""
    out, resume = [], 0
    for a in attempts:
        s = kill_step(seed, trial_id, a, TOTAL)
        if s > TOTAL - resume * SPE:
            break  # this attempt finishes before its kill step
        g = resume * SPE + s  # killed right after global step g: epochs < ceil(g/SPE) saved
        resume = (g - 1) // SPE
        out.append((a, g, resume))
    return out


def pick_seed(trial_id: str) -> int:
    """The first seed whose two kills both land mid-epoch, the first after epoch 1 and the
    second one epoch further (so both resumes are visible in the step counts)."""
    for seed in range(10_000):
        k = random_kills(seed, trial_id)
        if (
            len(k) == 2
            and k[0][2] >= 1
            and k[1][2] > k[0][2]
            and all(g % SPE not in (0, 1) for _, g, _ in k)
        ):
            return seed
    raise AssertionError("no seed found")


def rows(root: str, trial_id: str) -> dict[str, list[tuple]]:
    con = connect(root)
    q = "SELECT {} FROM {} WHERE trial_id = ? ORDER BY ALL"
    return {
        "epochs": con.execute(q.format(EPOCH_COLS, "epochs"), [trial_id]).fetchall(),
        "steps": con.execute(q.format(STEP_COLS, "steps"), [trial_id]).fetchall(),
        "layers": con.execute(q.format(LAYER_COLS, "layers"), [trial_id]).fetchall(),
        "summary": con.execute(q.format(SUMMARY_COLS, "trials"), [trial_id]).fetchall(),
    }


def reference(cfg: TrialConfig, root: str) -> dict[str, list[tuple]]:
    """The trial run once, uninterrupted, in this process (one thread, like a Ray worker)."""
    threads = torch.get_num_threads()
    try:
        execute_trial(
            cfg.model_dump_json(), "ref", root, code_version="ref", device="cpu", num_threads=1
        )
    finally:
        torch.set_num_threads(threads)
    return rows(root, cfg.trial_id)


@pytest.mark.slow
def test_repeated_sigkills_resume_from_checkpoints_and_match_an_uninterrupted_run(
    ray_local, tmp_path, monkeypatch
):
    grid = tiny_grid("kills", [0, 1, 2], max_epochs=MAX_EPOCHS)
    spec = parse_spec(grid)
    by_epoch, by_step, untouched = spec.trials()
    refs = {t.trial_id: reference(t, str(tmp_path / "ref")) for t in spec.trials()}
    assert all(len(r["steps"]) == TOTAL for r in refs.values())

    seed = pick_seed(by_step.trial_id)
    kills = random_kills(seed, by_step.trial_id)
    monkeypatch.setenv(
        "BATCHLAB_FAULT_PLAN",
        json.dumps({
            # attempt 1 dies at the end of epoch 2 (resumes from 1), attempt 2 at the end of
            # epoch 4 (resumes from 3), attempt 3 finishes.
            by_epoch.trial_id: {"KILL_AT_EPOCH": "2,4", "KILL_ATTEMPTS": "1,2"},
            by_step.trial_id: {"KILL_SEED": seed, "KILL_MAX_STEP": TOTAL, "KILL_ATTEMPTS": "1,2"},
        }),
    )  # fmt: skip
    root = str(tmp_path / "runs")
    report = run_grid(spec, root, progress=False)
    assert report.counts == {"completed": 3, "diverged": 0, "failed": 0}, report.results

    con = connect(root)
    got = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT trial_id, attempt, resumed_from_epoch, steps_run, status FROM trials"
        ).fetchall()
    }
    # Resumed from the last checkpoint before each kill, not from scratch: the attempt count
    # says how many times it was killed, resumed_from_epoch where the last attempt started.
    assert got[by_epoch.trial_id] == (3, 3, TOTAL, "completed")
    assert got[by_step.trial_id] == (3, kills[-1][2], TOTAL, "completed"), kills
    assert got[untouched.trial_id] == (1, 0, TOTAL, "completed")

    # Bit-identical to the uninterrupted run (CPU), and exactly one set of rows each.
    for tid, ref in refs.items():
        assert rows(root, tid) == ref, f"trial {tid} differs from its uninterrupted run"
    committed = assert_readers_see_only_committed(root, "kills")
    assert len(committed) == 3
    counts = con.execute(
        "SELECT (SELECT count(*) FROM epochs), (SELECT count(*) FROM steps), "
        "(SELECT count(*) FROM layers)"
    ).fetchone()
    assert counts == (3 * MAX_EPOCHS, 3 * TOTAL, 3 * MAX_EPOCHS * 4)
    # The resume checkpoints are gone once the rows are committed.
    layout = Layout.open(root)
    for t in spec.trials():
        assert not layout.exists(layout.checkpoint_file("kills", t.trial_id, "resume"))
