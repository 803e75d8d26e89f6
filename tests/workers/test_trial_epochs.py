"""The trainable API cannot lose rows (issue 24).

`trial.log_epoch` for epochs 1, 3, 2 used to lose epoch 3 and 60 of 90 step rows; logging
an epoch twice stored 60 of 120 step rows; nothing said so. Now an epoch that does not
increase or is beyond max_epochs is refused loudly (the trial is `failed` with a message
naming the epochs, even when the loop catches the error), and every step row logged is
kept, filed under the epoch logged after it. The first epoch a resumed attempt logs may go
back (a loop that restarts): its rows replace the old ones, none twice.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.workers.test_pack import MemoryCheckpoints
from workers.config import TrialConfig
from workers.train import run_trial
from workers.trial_epochs import epoch_problem, file_rows
from workers.user import use_code_dir

STEPS = 30  # steps logged per epoch

LOOPS = """
import torch

def loop(trial):
    p = trial.params
    start = trial.start_epoch if p.get("resume") else 0
    for epoch in p.get("order") or range(start + 1, trial.max_epochs + 1):
        for _ in range(30):
            trial.log_step(loss=1.0, lr=0.1)
        try:
            trial.log_epoch(epoch, train_loss=1.0 / epoch, val_loss=1.0 / epoch)
        except ValueError:
            if not p.get("swallow"):
                raise
        trial.save_checkpoint({"epoch": epoch})
        if epoch == p.get("crash_after"):
            raise SystemExit  # the worker dies (a BaseException: not recorded as failed)
"""


@pytest.fixture(autouse=True)
def _loops(tmp_path):
    (tmp_path / "loops.py").write_text(textwrap.dedent(LOOPS))
    use_code_dir(str(tmp_path))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(max_epochs: int = 3, **params) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "trainable": "./loops.py:loop",
            "params": params,
            "max_epochs": max_epochs,
            "dataset": {"name": "digits", "n_train": 64},
            "measure": {"store_steps": True},
        }
    )


def _last_line(r) -> str:
    return r.error.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("order", "swallow", "says"),
    [
        ([1, 3, 2], False, "epoch=2 after epoch 3; epochs must increase"),
        ([1, 1], False, "epoch=1 after epoch 1; epochs must increase"),
        ([1, 2, 3, 4], False, "epoch=4 is beyond max_epochs=3"),
        ([1, 3, 2], True, "epoch=2 after epoch 3"),  # caught by the loop: still failed
    ],
)
def test_non_increasing_or_excess_epochs_fail_the_trial_loudly(order, swallow, says):
    r = run_trial(_cfg(order=order, swallow=swallow))
    assert r.status == "failed", (r.status, r.error)
    assert "TrialAPIError" in _last_line(r) and says in _last_line(r), _last_line(r)


def test_every_step_row_is_kept_under_the_epoch_logged_after_it():
    r = run_trial(_cfg(max_epochs=5, order=[1, 3, 5]))  # gaps are allowed
    assert r.status == "completed", r.error
    assert [e["epoch"] for e in r.epochs] == [1, 3, 5]
    assert len(r.steps) == 3 * STEPS and [s["step"] for s in r.steps] == list(range(1, 91))
    assert [s["epoch"] for s in r.steps] == [1] * STEPS + [3] * STEPS + [5] * STEPS


@pytest.mark.parametrize("resume", [True, False])
def test_a_resumed_attempt_continues_or_restarts_without_losing_or_doubling_rows(resume):
    """Attempt 1 dies after epoch 2 (its checkpoint holds epochs 1-2); attempt 2 either
    continues from trial.start_epoch or restarts from epoch 1 (the rows are replaced)."""
    ck = MemoryCheckpoints()
    with pytest.raises(SystemExit):
        run_trial(_cfg(crash_after=2, resume=resume), checkpoints=ck)
    r = run_trial(_cfg(resume=resume), checkpoints=ck)
    assert r.status == "completed", r.error
    assert [e["epoch"] for e in r.epochs] == [1, 2, 3]
    by_epoch = [sum(s["epoch"] == e for s in r.steps) for e in (1, 2, 3)]
    assert by_epoch == [STEPS] * 3
    steps = [s["step"] for s in r.steps]
    assert len(set(steps)) == len(steps) == 3 * STEPS


def test_epoch_rules_and_row_filing():
    assert epoch_problem(2, 1, 3, False) is None and epoch_problem(3, 1, 3, False) is None
    assert "after epoch 2" in epoch_problem(2, 2, 3, False)
    assert epoch_problem(1, 2, 3, True) is None  # a resumed attempt's first epoch
    assert "beyond max_epochs=3" in epoch_problem(4, 3, 3, True)
    assert "expected an int >= 1" in epoch_problem(True, 0, 3, False)
    rows = [{"epoch": 1, "i": 0}, {"epoch": 2, "i": 1}, {"epoch": 3, "i": 2}, {"epoch": 3, "i": 3}]
    filed = file_rows([dict(r) for r in rows], 2, 2, replace=True)
    assert [(r["epoch"], r["i"]) for r in filed] == [(1, 0), (2, 2), (2, 3)]
