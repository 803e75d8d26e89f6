"""One trial, three drivers: the same grid trained lone (`run_trial`), packed (`run_pack`)
and through a trainable that reproduces batchlab's loop with the user-loop API
(`trial.log_step` / `trial.log_epoch`, docs/custom.md) gives equal summary rows, field by
field, because all three share the trial contract (workers/trial/: state, epoch-end
bookkeeping, summary). The grid holds the edge cases where the three copies of the summary
used to differ: NaN validation accuracy (a regression under mse: the pack said 0.0),
diverged epochs (a NaN loss in epoch 1; a loss above divergence_loss in epoch 3) and plateau decay (the user loop follows it through
`trial.lr_decay`).

Tolerances, per field (TOLERANCE below):
- counters and decisions (status, stop_reason, epochs_run, steps_run, best_epoch, best_step,
  diverged_step, steps_to_target, n_train, n_val, steps_per_epoch, resumed_from_epoch):
  equal. Except, for a diverged trial, steps_run of the user loop (<=): it sees each loss
  at its log_step and stops at the first bad one, while batchlab's loops look once per
  epoch (no per-step host sync) and run the epoch to its end; and a user loop's
  steps_per_epoch, derived from its logged epochs, is None before it logged one;
- losses, accuracies and distances: the user loop runs the same ops on the same model as a
  lone trial (rel 1e-6); a pack member runs them batched (abs 1e-4, the pack tests'
  tolerance); NaN only where the other is NaN;
- times, memory and provenance: not compared (the pack's times are the pack's).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from workers.config import TrialConfig
from workers.pack import run_pack
from workers.stepping import epoch_permutation, lr_at, make_optimizer, steps_per_epoch
from workers.train import run_trial
from workers.trial import SUMMARY_COLUMNS
from workers.user import use_code_dir

REPO = Path(__file__).resolve().parents[2]
CUSTOM = REPO / "examples" / "custom"
THIS = Path(__file__).resolve()

EXACT = ("status", "stop_reason", "epochs_run", "steps_run", "best_epoch", "best_step",
         "diverged_step", "steps_to_target", "n_train", "n_val", "steps_per_epoch",
         "resumed_from_epoch", "scaled_lr")  # fmt: skip
CLOSE = ("best_val_loss", "best_val_acc", "final_train_loss", "final_val_loss",
         "final_dist_from_init")  # fmt: skip
NOT_COMPARED = ("train_time_s", "wall_time_s", "peak_memory_mb")
TOLERANCE = {"user": {"rel": 1e-6, "abs": 1e-7}, "pack": {"rel": 0.0, "abs": 1e-4}}


def builtin_loop(trial) -> None:
    """batchlab's own loop written with the user-loop API (what a user may write)."""
    cfg, dev = trial.config, trial.device
    data = trial.data  # before build_model: the model's init follows manual_seed(seed)
    model = trial.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, params)
    n, bs = data.n_train, cfg.batch_size
    spe, step = steps_per_epoch(n, bs), 0
    for epoch in range(1, cfg.max_epochs + 1):
        perm = epoch_permutation(cfg.seed, epoch, n, dev)
        losses = []
        for i in range(spe):
            idx = perm[i * bs : (i + 1) * bs]
            lr = lr_at(cfg, step, spe, trial.lr_decay)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = trial.loss(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
            opt.step()
            step += 1
            losses.append(loss.detach())
            trial.log_step(loss=loss, lr=lr)  # a NaN / exploding loss ends the trial here
        train_eval = {}
        if cfg.measure.train_eval:
            tl, ta = trial.evaluate(model, "train")
            train_eval = {"train_loss_eval": tl, "train_acc_eval": ta}
        vl, va = trial.evaluate(model, "val")
        seen = (epoch - 1) * n + min(n, spe * bs)
        trial.log_epoch(epoch, train_loss=torch.stack(losses).mean().item(), lr=lr,
                        val_loss=vl, val_acc=va, examples_seen=seen, **train_eval)  # fmt: skip
        if trial.should_stop:
            break


@pytest.fixture(autouse=True)
def _custom_dir():
    use_code_dir(str(CUSTOM))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BASE = {"dataset": {"name": "digits", "n_train": 320}, "model": {"hidden": [32]},
        "batch_size": 32, "max_epochs": 4, "measure": {"store_steps": True}}  # fmt: skip
PLATEAU = {"factor": 0.5, "patience": 1, "max_decays": 3}
# One pack: plain trials, plateau decay, and a trial whose lr makes it diverge.
CLASSIFY = [
    {**BASE, "lr": 0.05, "seed": 0},
    {**BASE, "lr": 0.05, "seed": 1, "plateau_decay": PLATEAU},
    {**BASE, "lr": 0.8, "seed": 0, "plateau_decay": PLATEAU},
    {**BASE, "lr": 0.8, "seed": 1, "plateau_decay": PLATEAU, "max_epochs": 6},
    # No full train-set evaluation: final_train_loss is NaN (the user loop's copy fell back
    # to the mean mini-batch loss).
    {**BASE, "lr": 0.05, "seed": 3, "measure": {"train_eval": False}},
    {**BASE, "lr": 1e4, "seed": 2},  # NaN in epoch 1
    # Warmup to a too large lr: a loss above divergence_loss in epoch 3, after two epochs.
    {
        **BASE,
        "lr": 0.1,
        "seed": 0,
        "lr_scaling": "linear",
        "base_batch_size": 1,
        "warmup_epochs": 4,
        "divergence_loss": 10.0,
        "max_epochs": 5,
    },
]
# Another pack: a regression under mse (no accuracy: NaN validation accuracy).
REGRESS = [
    {"model": {"factory": "./nets.py:mlp", "kwargs": {"width": 16}},
     "dataset": {"loader": "./data.py:regression", "kwargs": {"n": 256, "dim": 6}},
     "loss": "mse", "batch_size": 32, "lr": 0.02, "seed": s, "max_epochs": 3,
     "plateau_decay": PLATEAU}
    for s in (0, 1)
]  # fmt: skip


def _three_ways(grid: list[dict]) -> tuple[list, list, list]:
    cfgs = [TrialConfig.model_validate(g) for g in grid]
    lone = [run_trial(c) for c in cfgs]
    packed = run_pack(cfgs)
    user = [run_trial(c.model_copy(update={"trainable": f"{THIS}:builtin_loop"})) for c in cfgs]
    for r in (*lone, *packed, *user):
        assert r.status != "failed", r.error
    return lone, packed, user


def _same(a: float, b: float, tol: dict[str, float]) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=tol["rel"], abs_tol=tol["abs"])


def _assert_equal(lone, other, way: str) -> None:
    for a, b in zip(lone, other, strict=True):
        sa, sb = a.summary, b.summary
        diverged = a.status == "diverged"
        for k in ("status", "stop_reason"):
            assert getattr(a, k) == getattr(b, k), (way, k, getattr(a, k), getattr(b, k))
        for k in EXACT[2:]:
            if diverged and way == "user" and k == "steps_run":
                assert sb[k] <= sa[k], (way, k, sa[k], sb[k])
                continue
            if way == "user" and k == "steps_per_epoch" and sb["epochs_run"] == 0:
                assert sb[k] is None, (way, k, sb[k])
                continue
            assert sa[k] == sb[k], (way, a.trial_id, k, sa[k], sb[k])
        for k in CLOSE:
            assert _same(sa[k], sb[k], TOLERANCE[way]), (way, a.trial_id, k, sa[k], sb[k])
        assert len(a.epochs) == len(b.epochs), way
        for ea, eb in zip(a.epochs, b.epochs, strict=True):
            for k in ("train_loss", "val_loss", "val_acc", "lr", "dist_from_init"):
                assert _same(ea[k], eb[k], TOLERANCE[way]), (way, ea["epoch"], k, ea[k], eb[k])


def test_summary_keys_cover_the_contract():
    assert set(SUMMARY_COLUMNS) == {*EXACT[2:], *CLOSE, *NOT_COMPARED}


def test_lone_packed_and_user_loop_give_equal_summaries():
    lone, packed, user = _three_ways(CLASSIFY)
    # The edge cases are there: a diverged epoch, plateau decay (a lower lr in some epoch).
    diverged = [r.summary for r in lone if r.status == "diverged"]
    assert [(s["epochs_run"], s["diverged_step"] > 0) for s in diverged] == [(0, True), (2, True)]
    assert any(e["lr"] < r.summary["scaled_lr"] for r in lone for e in r.epochs)
    no_eval = [r for r in user if r.epochs and "train_loss_eval" not in r.epochs[-1]]
    assert len(no_eval) == 1 and math.isnan(no_eval[0].summary["final_train_loss"])
    _assert_equal(lone, packed, "pack")
    _assert_equal(lone, user, "user")


def test_nan_validation_accuracy_is_nan_in_every_summary():
    lone, packed, user = _three_ways(REGRESS)
    for r in (*lone, *packed, *user):
        assert r.status == "completed", r.error
        assert math.isnan(r.summary["best_val_acc"]), r.summary["best_val_acc"]
    _assert_equal(lone, packed, "pack")
    _assert_equal(lone, user, "user")


def test_rows_use_the_warehouse_column_names():
    from warehouse import schemas

    lone, packed, user = _three_ways(CLASSIFY[:1])
    trials = set(schemas.TRIALS.names)
    for r in (*lone, *packed, *user):
        assert set(SUMMARY_COLUMNS) <= trials
        for rows, schema in ((r.epochs, schemas.EPOCHS), (r.steps, schemas.STEPS),
                             (r.layers, schemas.LAYERS)):  # fmt: skip
            names = set(schema.names)
            for row in rows:
                assert set(row) <= names, set(row) - names


DRIVERS = ("train.py", "pack.py", "pack_stack.py", "pack_loop.py", "pack_resume.py",
           "pack_memory.py", "trial_api.py", "stepping.py", "evaluation.py",
           "trial_measures.py", "trial/state.py", "trial/rows.py", "trial/result.py")  # fmt: skip


def test_the_contract_is_pure_python_and_the_drivers_import_no_private_names():
    import ast
    import subprocess
    import sys

    code = "import sys, workers.trial; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)
    for rel in DRIVERS:
        path = REPO / "workers" / rel
        assert len(path.read_text().splitlines()) < 500, rel
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workers"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (rel, node.module, private)
            if isinstance(node, ast.ImportFrom) and rel == "trial_api.py":
                assert node.module != "workers.train", "trial_api must not import train"
