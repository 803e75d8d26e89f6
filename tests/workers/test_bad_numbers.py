"""Bad numbers in the input are refused as bad input, never stored as findings (issue 24).

NaN/inf inputs from a loader, or an lr that the scaling rule makes infinite, used to end
the trial as `diverged` (a finding about the lr); a typo label (1000000 among 0..3) made a
1,000,001-class model. Each is now a `failed` trial (or a config error) whose message names
the field and the value.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from pydantic import ValidationError

from workers.config import TrialConfig
from workers.data import load_dataset
from workers.data_checks import BadDataError, check_finite
from workers.pack import run_pack
from workers.train import run_trial
from workers.user import use_code_dir

LOADERS = """
import torch

def data(bad="", where="x_train"):
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(64, 5, generator=g), torch.randn(32, 5, generator=g)
    y, yv = torch.arange(64) % 4, torch.arange(32) % 4
    t = {"x_train": x, "x_val": xv}[where]
    if bad == "nan":
        t[7, 2] = float("nan")
    elif bad == "inf":
        t[3, 0] = float("inf")
        t[9, 1] = -float("inf")
    elif bad == "label":
        y[5] = 1000000
    return x, y, xv, yv
"""


@pytest.fixture(autouse=True)
def _loaders(tmp_path):
    (tmp_path / "bad.py").write_text(textwrap.dedent(LOADERS))
    use_code_dir(str(tmp_path))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw) -> TrialConfig:
    base = {"model": {"name": "mlp", "hidden": [4]}, "batch_size": 16, "lr": 0.05, "max_epochs": 1}
    return TrialConfig.model_validate({**base, **kw})


def _loader(bad: str, where: str = "x_train") -> dict:
    return {"loader": "./bad.py:data", "kwargs": {"bad": bad, "where": where}}


@pytest.mark.parametrize(
    ("bad", "where", "count", "first"),
    [("nan", "x_train", 1, 7), ("inf", "x_train", 2, 3), ("nan", "x_val", 1, 7)],
)
def test_non_finite_inputs_fail_the_trial_naming_dataset_and_tensor(bad, where, count, first):
    r = run_trial(_cfg(dataset=_loader(bad, where)))
    assert r.status == "failed" and r.stop_reason == "error", (r.status, r.error)
    last = r.error.strip().splitlines()[-1]
    assert "BadDataError" in last and "dataset.loader './bad.py:data'" in last
    assert f"{where} holds {count} non-finite values" in last and f"example {first} of" in last


def test_finite_data_passes_the_check_unchanged():
    ds = load_dataset(_cfg(dataset=_loader("")).dataset)
    assert check_finite(ds) is ds
    ds.x_val[0, 0] = float("nan")
    with pytest.raises(BadDataError, match="x_val holds 1 non-finite"):
        check_finite(ds)


@pytest.mark.parametrize(("rule", "batch"), [("linear", 256), ("sqrt", 4096)])
def test_lr_scaled_to_infinity_is_refused_naming_lr_rule_and_value(rule, batch):
    with pytest.raises(ValidationError) as err:
        _cfg(lr=1e308, lr_scaling=rule, batch_size=batch)
    msg = str(err.value)
    assert f"lr: 1e+308 scaled by lr_scaling '{rule}'" in msg and "is inf" in msg
    assert f"batch_size {batch} / base_batch_size 32" in msg
    with pytest.raises(ValidationError, match=r"is 0\.0; the scaled lr must be finite and > 0"):
        _cfg(lr=5e-324, lr_scaling="linear", batch_size=16)


def test_lr_scaled_to_infinity_fails_in_the_worker_not_diverged():
    """A config derived with model_copy (as the grid derives its trials) skips the
    validator: the worker refuses it as `failed`, lone and packed, never `diverged`."""
    ok = _cfg(dataset={"name": "digits", "n_train": 64}, lr_scaling="linear", batch_size=64)
    bad = ok.model_copy(update={"lr": 1e308})
    assert bad.scaled_lr == float("inf")
    r = run_trial(bad)
    assert r.status == "failed" and "scaled lr must be finite" in r.error, (r.status, r.error)
    packed = run_pack([bad, ok.model_copy(update={"seed": 1})])
    assert [p.status for p in packed] == ["failed", "failed"]
    assert "lr: 1e+308 scaled by lr_scaling 'linear'" in packed[0].error


def test_typo_label_does_not_make_a_million_class_model():
    r = run_trial(_cfg(dataset=_loader("label")))
    assert r.status == "failed", (r.status, r.error)
    last = r.error.strip().splitlines()[-1]
    assert "num_classes" in last and "1,000,001" in last and "5 distinct labels" in last, last
