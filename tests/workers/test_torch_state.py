"""Global torch settings changed by user code do not leak into the next trial (issue 24).

A model factory that calls `torch.set_default_dtype(torch.float64)` used to make every later
trial on the same worker process train in float64: the seed and threads were reset per
trial, the global dtype was not. `workers.torch_state.isolated` (entered by run_trial and
run_pack, so lone, packed and user-loop trials alike) puts every global setting back.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from workers import torch_state
from workers.config import TrialConfig
from workers.data import load_dataset
from workers.pack import run_pack
from workers.train import run_trial
from workers.user import use_code_dir

# Every global switch a user's code could flip, and the value it flips it to.
MESSY = """
import torch
from torch import nn

def mess():
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.autograd.set_detect_anomaly(True)
    torch.set_float32_matmul_precision("medium")
    torch.set_num_threads(2)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = True

def mlp(input_shape, num_classes):
    mess()
    n = 1
    for d in input_shape:
        n *= d
    net = nn.Sequential(nn.Flatten(), nn.Linear(n, 8), nn.ReLU(), nn.Linear(8, num_classes))
    return net.float()  # the data is float32; the switches stay flipped

def loop(trial):
    mess()
    model = trial.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=trial.lr)
    x, y = trial.data.x_train, trial.data.y_train
    for epoch in range(1, trial.max_epochs + 1):
        loss = trial.loss.fn(model(x.to(torch.get_default_dtype())), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        trial.log_epoch(epoch, train_loss=loss.item(), val_loss=loss.item())
"""


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw) -> TrialConfig:
    base = {"dataset": {"name": "digits", "n_train": 128}, "batch_size": 32, "lr": 0.05,
            "max_epochs": 2, "model": {"name": "mlp", "hidden": [8]}}  # fmt: skip
    return TrialConfig.model_validate({**base, **kw})


def _numbers(r) -> list[float]:
    return [row[k] for row in r.epochs for k in ("train_loss", "val_loss", "dist_from_init")]


def test_isolated_restores_every_setting_and_reports_it():
    before = torch_state.snapshot()
    assert {"default_dtype", "num_threads", "deterministic_algorithms", "anomaly",
            "grad_enabled", "float32_matmul_precision", "cudnn.benchmark",
            "default_device"} <= set(before)  # fmt: skip
    with torch_state.isolated(num_threads=1) as rec:
        assert rec["torch_threads"] == 1 == torch.get_num_threads()
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        torch.use_deterministic_algorithms(True)
        torch.set_default_device("meta")
    assert torch_state.snapshot() == before
    assert torch.empty(1).dtype == torch.float32 and torch.empty(1).device.type == "cpu"
    assert {"default_dtype", "grad_enabled", "deterministic_algorithms", "default_device"} <= set(
        rec["restored"]
    )


@pytest.mark.parametrize("how", ["lone", "pack", "trainable"])
def test_a_factory_setting_float64_does_not_change_the_next_trial(tmp_path, how):
    """A trial whose user code flips every global switch, then a plain trial in the same
    process: the plain trial's numbers equal a run in a clean process state, bit for bit,
    and every setting is back after each trial (lone, packed, and user-loop trials)."""
    (tmp_path / "messy.py").write_text(textwrap.dedent(MESSY))
    use_code_dir(str(tmp_path))
    data = load_dataset(_cfg().dataset)
    plain = _cfg(seed=3)
    clean = run_trial(plain, data=data)
    before = torch_state.snapshot()
    if how == "lone":
        r = run_trial(_cfg(model={"factory": "./messy.py:mlp"}), data=data)
    elif how == "trainable":
        r = run_trial(_cfg(trainable="./messy.py:loop"), data=data)
    else:
        cfgs = [_cfg(model={"factory": "./messy.py:mlp"}, seed=s) for s in (1, 2)]
        r = run_pack(cfgs, data=data)[0]
    assert r.status == "completed", r.error
    assert torch_state.snapshot() == before
    assert torch.get_default_dtype() == torch.float32
    after = run_trial(plain, data=data)
    assert _numbers(after) == _numbers(clean)
    if how != "pack":  # the lone trial's record names what its code changed
        restored = json.loads(r.summary["perf_json"])["torch_settings_restored"]
        assert "default_dtype" in restored and "num_threads" in restored
    assert json.loads(after.summary["perf_json"])["torch_threads"] == 1


def test_a_data_set_loads_to_the_same_bits_whatever_the_process_threads():
    """mnist1d's normalization (one mean and std over 160,000 values) summed in an order set
    by the thread count: 1 and 2 threads gave inputs that differed in their last bits."""
    from workers.config import DatasetConfig
    from workers.data import load_dataset_cached

    cfg, other = DatasetConfig(name="mnist1d"), DatasetConfig(name="digits")
    loaded = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        load_dataset_cached(other)  # the cache holds one data set: mnist1d is loaded again
        loaded.append(load_dataset_cached(cfg).x_train.clone())
        assert torch.get_num_threads() == threads
    assert torch.equal(loaded[0], loaded[1])
    torch.set_num_threads(1)
    assert torch.equal(load_dataset(cfg).x_train, loaded[0])
