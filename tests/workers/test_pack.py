"""Trial packs against lone trials: same seed -> same init, data order and results (CPU, fp32).

A member of a pack must be indistinguishable from the same trial trained alone by
`workers.train.run_trial`, up to float rounding (acceptance: per-epoch losses within 1e-4
relative); a diverging member must not disturb the others; members stop independently.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from workers.config import TrialConfig
from workers.data import load_dataset
from workers.models import build_model
from workers.pack import pack_problem, run_pack
from workers.packnet import PackNet, PackUnsupported
from workers.train import SYSTEM_METRICS, run_trial

REL = 1e-4  # the acceptance tolerance on per-epoch losses


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add overhead on a loaded 2-core CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mnist1d(data_cache):
    return load_dataset(TrialConfig(dataset={"name": "mnist1d", "n_train": 1200}).dataset)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(TrialConfig(dataset={"name": "digits"}).dataset)


class MemoryCheckpoints:
    """workers.train.CheckpointIO in memory, through torch.save/torch.load(weights_only=True)
    exactly as workers.checkpoint_io.TrialCheckpoints (so a non-tensor type in a state fails here)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def save(self, name, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.files[name] = buf.getvalue()

    def load(self, name):
        data = self.files.get(name)
        return None if data is None else torch.load(io.BytesIO(data), weights_only=True)


def _mlp(**kw) -> TrialConfig:
    base = {
        "dataset": {"name": "mnist1d", "n_train": 1200},
        "model": {"name": "mlp", "hidden": [32, 32]},
        "batch_size": 100,
        "max_epochs": 3,
        "measure": {"checkpoints": True},
    }
    return TrialConfig(**{**base, **kw})


def _close(a: float, b: float, rel: float = REL) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= rel * max(1.0, abs(a))


def assert_same_trial(lone, packed, rel: float = REL) -> None:
    """Every row and summary value a lone trial produced, within `rel` (times excluded)."""
    assert (packed.status, packed.stop_reason) == (lone.status, lone.stop_reason), packed.error
    for key in (
        "epochs_run",
        "steps_run",
        "best_epoch",
        "best_step",
        "diverged_step",
        "steps_to_target",
    ):
        assert packed.summary[key] == lone.summary[key], key
    for key in ("best_val_loss", "final_val_loss", "final_train_loss", "final_dist_from_init"):
        assert _close(lone.summary[key], packed.summary[key], rel), key
    for table in ("epochs", "steps", "layers"):
        a, b = getattr(lone, table), getattr(packed, table)
        assert len(a) == len(b), table
        for ra, rb in zip(a, b, strict=True):
            assert set(ra) == set(rb), table
            for k, v in ra.items():
                if k.endswith("_s") or k in ("examples_per_s", *SYSTEM_METRICS):
                    continue  # timings and system metrics: a member's are the pack's
                if isinstance(v, float):
                    assert _close(v, rb[k], rel), (
                        f"{table}.{k} at {ra.get('epoch'), ra.get('step')}: {v} vs {rb[k]}"
                    )
                else:
                    assert v == rb[k], f"{table}.{k}"


def _weights_close(a: dict, b: dict, rel: float = REL) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(1.0, a[k].float().abs().max().item())
        assert (a[k].float() - b[k].float()).abs().max().item() <= rel * scale, k


def test_pack_member_equals_lone_trial_sgd(mnist1d):
    """Per-member lr, scaling rule + warmup, plateau decay, momentum, nesterov, weight decay
    and gradient clipping, all different within one pack; rows and final weights match."""
    cfgs = [
        _mlp(lr=0.05, seed=0),
        _mlp(lr=0.02, seed=1, lr_scaling="linear", base_batch_size=50, warmup_epochs=1.0,
             optimizer={"momentum": 0.9, "weight_decay": 1e-3}),
        _mlp(lr=0.01, seed=2, optimizer={"momentum": 0.5, "nesterov": True}, grad_clip_norm=0.3),
        _mlp(lr=0.1, seed=3, plateau_decay={"patience": 1, "factor": 0.5},
             early_stopping={"patience": 5, "min_delta": 0.5}),
    ]  # fmt: skip
    ck_pack = [MemoryCheckpoints() for _ in cfgs]
    packed = run_pack(cfgs, data=mnist1d, checkpoints=ck_pack)
    for cfg, res, ck in zip(cfgs, packed, ck_pack, strict=True):
        ck_lone = MemoryCheckpoints()
        lone = run_trial(cfg, data=mnist1d, checkpoints=ck_lone)
        assert_same_trial(lone, res)
        # Same init exactly (same seed, same construction), same trained weights to rounding.
        _weights_close(ck_lone.load("init"), ck.load("init"), rel=0.0)
        _weights_close(ck_lone.load("final"), ck.load("final"))
    # The plateau member decayed its lr: epoch 2 is a plateau (min_delta 0.5), epoch 3 pays.
    assert [r["lr"] for r in packed[3].epochs] == pytest.approx([0.1, 0.1, 0.05])


@pytest.mark.parametrize(
    ("batchnorm", "optimizer"),
    [(True, {"name": "sgd", "momentum": 0.9}), (False, {"name": "adam"})],
    ids=["cnn-batchnorm-sgd", "cnn-adam"],
)
def test_pack_member_equals_lone_trial_cnn(digits, batchnorm, optimizer):
    """The conv layout (grouped conv) with BatchNorm running statistics (every eval-mode loss
    uses them), and Adam with different betas and weight decay per member.

    Not Adam with BatchNorm: a conv bias followed by BatchNorm has an exactly-zero gradient in
    exact arithmetic, so in floats it is rounding noise (~1e-9), which Adam divides by its own
    magnitude and turns into lr-sized updates: any reordering of the sums (grouped vs plain
    conv) then moves the first step by ~3e-4 relative, in a pack or not.
    """
    base = {
        "dataset": {"name": "digits"},
        "model": {"name": "cnn", "batchnorm": batchnorm},
        "optimizer": optimizer,
        "batch_size": 64,
        "max_epochs": 2,
    }
    other = {**optimizer, "weight_decay": 1e-4}
    if optimizer["name"] == "adam":
        other["betas"] = (0.8, 0.99)
    cfgs = [
        TrialConfig(**base, lr=1e-3 if batchnorm is False else 0.05, seed=0),
        TrialConfig(
            **{**base, "optimizer": other}, lr=3e-3 if batchnorm is False else 0.02, seed=1
        ),
    ]
    packed = run_pack(cfgs, data=digits)
    for cfg, res in zip(cfgs, packed, strict=True):
        assert_same_trial(run_trial(cfg, data=digits), res)


def test_diverging_member_leaves_the_others_unchanged(mnist1d):
    """A huge lr makes one member NaN; it is marked diverged at the same step as alone, and
    the other members' results are exactly those of a pack without it."""
    good = [_mlp(lr=0.05, seed=0), _mlp(lr=0.02, seed=5, optimizer={"momentum": 0.9})]
    bad = _mlp(lr=1e6, seed=1, optimizer={"momentum": 0.9})
    with_bad = run_pack([good[0], bad, good[1]], data=mnist1d)
    without = run_pack(good, data=mnist1d)
    lone_bad = run_trial(bad, data=mnist1d)
    assert lone_bad.status == "diverged"
    assert_same_trial(lone_bad, with_bad[1])
    for a, b in zip(without, [with_bad[0], with_bad[2]], strict=True):
        assert_same_trial(a, b, rel=1e-6)
        assert b.status == "completed" and b.summary["epochs_run"] == 3
        assert all(
            math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in b.epochs
        )


def test_members_stop_independently(mnist1d):
    """Early stopping by epochs and by steps (inside an epoch), target error and max_epochs
    differ per member; each stops when it would alone, the others go on."""
    cfgs = [
        _mlp(lr=0.05, seed=0, max_epochs=4),  # runs to the end
        _mlp(lr=0.05, seed=1, max_epochs=4, early_stopping={"patience": 1, "min_delta": 10.0}),
        _mlp(lr=0.05, seed=2, max_epochs=4,
             early_stopping={"unit": "steps", "eval_every_steps": 5, "patience": 5, "min_delta": 10.0}),
        _mlp(lr=0.05, seed=3, max_epochs=2),
        _mlp(lr=0.2, seed=4, max_epochs=4, target_val_error=0.85),
    ]  # fmt: skip
    packed = run_pack(cfgs, data=mnist1d)
    stops = [(r.stop_reason, r.summary["epochs_run"], r.summary["steps_run"]) for r in packed]
    assert stops[0] == ("max_epochs", 4, 48)
    assert stops[1] == ("early_stopping", 2, 24)
    assert stops[2] == ("early_stopping", 1, 10)  # mid-epoch: validation at steps 5 and 10
    assert stops[3] == ("max_epochs", 2, 24)
    assert stops[4][0] == "target_reached"
    for cfg, res in zip(cfgs, packed, strict=True):
        assert_same_trial(run_trial(cfg, data=mnist1d), res)


def test_resume_after_a_crash_matches_an_uninterrupted_pack(mnist1d):
    """Per-member resume states in run_trial's format: a pack resumes from them, and so does
    a lone trial, both ending where the uninterrupted pack ends."""
    cfgs = [_mlp(lr=0.05, seed=0, optimizer={"momentum": 0.9}), _mlp(lr=0.1, seed=1)]
    full = run_pack(cfgs, data=mnist1d)

    def crash(trial_id, row):
        if row["epoch"] == 2:
            raise RuntimeError("worker lost")

    cks = [MemoryCheckpoints() for _ in cfgs]
    crashed = run_pack(cfgs, data=mnist1d, checkpoints=cks, on_epoch=crash)
    assert [r.status for r in crashed] == ["failed", "failed"]
    assert all(ck.load("resume")["state"]["epoch"] == 1 for ck in cks)
    lone_ck = MemoryCheckpoints()
    lone_ck.files = dict(cks[1].files)
    resumed = run_pack(cfgs, data=mnist1d, checkpoints=cks)
    for a, b in zip(full, resumed, strict=True):
        assert b.summary["resumed_from_epoch"] == 1
        assert_same_trial(a, b, rel=1e-6)
    lone = run_trial(cfgs[1], data=mnist1d, checkpoints=lone_ck)
    assert lone.summary["resumed_from_epoch"] == 1
    assert_same_trial(full[1], lone)


def test_dropout_members_draw_their_own_masks(digits):
    """LeNet with dropout: members with the same seed share their init but not their dropout
    masks, so their losses differ; every row is still written."""
    base = {"dataset": {"name": "digits"}, "model": {"name": "lenet"}, "batch_size": 128,
            "max_epochs": 2, "lr": 0.05}  # fmt: skip
    cfgs = [TrialConfig(**base, seed=0), TrialConfig(**base, seed=0, warmup_epochs=0.5)]
    a, b = run_pack(cfgs, data=digits)
    assert a.status == b.status == "completed"
    # warmup only changes the lr from step 0 on... the first batch loss is the same init on
    # the same batch, but with different dropout masks.
    assert a.steps[0]["batch_loss"] != b.steps[0]["batch_loss"]
    assert len(a.epochs) == len(b.epochs) == 2 and len(a.steps) == len(b.steps)


def test_pack_problem_and_unsupported_modules():
    assert pack_problem([_mlp(), _mlp(seed=1)]) is None
    problem = pack_problem([_mlp(), _mlp(batch_size=64)])
    assert problem is not None and "shape_key" in problem
    with pytest.raises(ValueError, match="shape_key"):
        run_pack([_mlp(), _mlp(batch_size=64)])
    with pytest.raises(PackUnsupported, match="GELU"):
        PackNet(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)))
    # Every architecture of workers.models compiles.
    for name in ("mlp", "cnn", "lenet", "vgg", "keskar_f1", "keskar_c1"):
        PackNet(build_model(TrialConfig(model={"name": name}).model, (1, 16, 16), 10))
