"""The open worker without Ray: user models, data sets, losses, training loops (issue 14).

Every extension point runs through `workers.train.run_trial` (what the Ray task calls) and
is checked against an independent answer: the Hessian of least squares under `loss: mse`,
a streamed data set against the same data on the device, packs of user models against
lone trials, and the demo warehouse's stored trial ids (built-in identities unchanged).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.workers.test_pack import REL, MemoryCheckpoints, assert_same_trial
from workers.config import TrialConfig
from workers.data import load_dataset
from workers.pack import run_pack
from workers.packnet import PackNet, PackUnsupported, VmapNet, make_pack_net
from workers.train import run_trial
from workers.user import UserCodeError, code_info, resolve, use_code_dir

REPO = Path(__file__).resolve().parents[2]
CUSTOM = REPO / "examples" / "custom"


@pytest.fixture(autouse=True)
def _custom_dir():
    use_code_dir(str(CUSTOM))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw) -> TrialConfig:
    base = {
        "model": {"factory": "./nets.py:mlp", "kwargs": {"width": 16}},
        "dataset": {"loader": "./data.py:blobs", "kwargs": {"n": 400}},
        "batch_size": 32,
        "lr": 0.05,
        "max_epochs": 2,
    }
    return TrialConfig.model_validate({**base, **kw})


def test_factory_and_loader_by_file_path_and_by_module(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def build(input_shape, num_classes, width=8):
            return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.ReLU(),
                                 nn.Linear(width, num_classes))
        """)
    )
    data = load_dataset(_cfg().dataset)
    use_code_dir(str(tmp_path))
    r = run_trial(_cfg(model={"factory": "mypkg.nets:build", "kwargs": {"width": 12}}), data=data)
    assert r.status == "completed", r.error
    # 20 inputs -> 12 -> 4 classes: the factory got input_shape and num_classes.
    assert {row["layer"]: row["numel"] for row in r.layers if row["epoch"] == 1} == {
        "1.weight": 240,
        "1.bias": 12,
        "3.weight": 48,
        "3.bias": 4,
    }
    info = code_info({"model.factory": "mypkg.nets:build"})
    assert len(info["hash"]) == 16 and "mypkg.nets:build" in info["version"]
    # A changed source is a different code version.
    (pkg / "__init__.py").write_text("# changed\n")
    assert code_info({"model.factory": "mypkg.nets:build"})["hash"] != info["hash"]


def test_model_kwargs_change_identity_not_builtin_ids():
    a, b = _cfg(), _cfg(model={"factory": "./nets.py:mlp", "kwargs": {"width": 32}})
    assert a.trial_id != b.trial_id and a.shape_key() != b.shape_key()
    # Every trial stored in the committed demo warehouse keeps its id under this code.
    files = sorted((REPO / "examples" / "results" / "tables" / "trials").rglob("*.parquet"))
    assert files
    checked = 0
    for f in files:
        t = pq.read_table(f, columns=["trial_id", "config_json"]).to_pylist()
        for row in t:
            cfg = TrialConfig.model_validate(json.loads(row["config_json"]))
            assert cfg.trial_id == row["trial_id"]
            checked += 1
    assert checked >= 50


def _tensor_and_streamed(tmp_path) -> tuple[str, str]:
    (tmp_path / "twoways.py").write_text(
        textwrap.dedent("""
        import torch
        def _data():
            g = torch.Generator().manual_seed(3)
            x = torch.randn(300, 6, generator=g)
            y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
            return x[:240], y[:240], x[240:], y[240:]
        def tensors():
            return _data()
        class _D(torch.utils.data.Dataset):
            def __init__(self, x, y): self.x, self.y = x, y
            def __len__(self): return len(self.x)
            def __getitem__(self, i): return self.x[i], self.y[i]
        def streamed():
            x, y, xv, yv = _data()
            return {"train": _D(x, y), "val": _D(xv, yv), "num_classes": 3}
        """)
    )
    (tmp_path / "nets.py").write_text((CUSTOM / "nets.py").read_text())
    use_code_dir(str(tmp_path))
    return "./twoways.py:tensors", "./twoways.py:streamed"


def test_streamed_dataset_trains_exactly_like_the_same_data_on_the_device(tmp_path):
    fast, streamed = _tensor_and_streamed(tmp_path)
    model = {"factory": "./nets.py:mlp", "kwargs": {"width": 8}}
    runs = []
    for loader in (fast, streamed):
        cfg = _cfg(model=model, dataset={"loader": loader}, batch_size=50, max_epochs=3)
        runs.append(run_trial(cfg))
    a, b = runs
    assert a.status == b.status == "completed", (a.error, b.error)
    for ra, rb in zip(a.epochs, b.epochs, strict=True):
        for k in ("train_loss", "val_loss", "val_acc", "dist_from_init"):
            assert math.isclose(ra[k], rb[k], rel_tol=1e-5, abs_tol=1e-7), (k, ra[k], rb[k])
    assert a.summary["n_train"] == b.summary["n_train"] == 240
    assert a.summary["n_val"] == b.summary["n_val"] == 60


def test_hessian_of_least_squares_under_mse_is_the_closed_form():
    cfg = _cfg(
        model={"factory": "./nets.py:linear"},
        dataset={"loader": "./data.py:regression", "kwargs": {"n": 256, "dim": 6}},
        loss="mse",
        max_epochs=1,
        measure={"hessian": {"max_iter": 300, "tol": 1e-7, "n_examples": 192}},
    )
    r = run_trial(cfg)
    assert r.status == "completed", r.error
    assert math.isnan(r.summary["best_val_acc"]), "regression: no accuracy"
    (probe,) = [p for p in r.probes if p["probe"] == "hessian_top_eig"]
    assert json.loads(probe["settings_json"])["loss"] == "mse"
    data = load_dataset(cfg.dataset)
    from workers.probes import probe_subset

    x, _ = probe_subset(data.x_train, data.y_train, 192, cfg.seed)
    a = torch.cat([x, torch.ones(len(x), 1)], 1).double()  # [X 1]: weights and bias
    # mean((Xw + b - y)^2): H = 2 A'A / n in (w, b).
    top = torch.linalg.eigvalsh(2 * a.T @ a / len(x)).max().item()
    assert abs(probe["value"] - top) / top < 1e-3, (probe["value"], top)


def test_bce_and_user_loss():
    (CUSTOM / "losses_tmp.py").unlink(missing_ok=True)
    r = run_trial(
        _cfg(
            model={"factory": "./nets.py:mlp", "kwargs": {"width": 8}},
            dataset={"loader": "./data.py:blobs", "kwargs": {"n": 300, "classes": 2}},
            loss="cross_entropy",
            loss_kwargs={"label_smoothing": 0.1},
        )
    )
    assert r.status == "completed", r.error
    assert 0.0 <= r.summary["best_val_acc"] <= 1.0


def test_bce_loss_with_one_output(tmp_path):
    (tmp_path / "bin.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn
        def data():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(400, 5, generator=g)
            y = (x.sum(1) > 0).float()
            return x[:300], y[:300], x[300:], y[300:]
        def net(input_shape):
            return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, 1))
        def hinge(out, y):
            return torch.relu(1 - out.squeeze(1) * (2 * y - 1)).mean()
        """)
    )
    use_code_dir(str(tmp_path))
    for loss in ("bce", "./bin.py:hinge"):
        r = run_trial(
            _cfg(
                model={"factory": "./bin.py:net"},
                dataset={"loader": "./bin.py:data"},
                loss=loss,
                max_epochs=4,
                lr=0.1,
            )
        )
        assert r.status == "completed", r.error
        losses = [e["val_loss"] for e in r.epochs]
        assert losses[-1] < losses[0], (loss, losses)
        if loss == "bce":
            assert r.summary["best_val_acc"] > 0.8
        else:  # a user loss of (N, 1) outputs and float targets: no accuracy defined
            assert math.isnan(r.summary["best_val_acc"])


# ----------------------------------------------------------------------------- trainable


def test_trainable_rows_metrics_probes_and_checkpoints():
    ck = MemoryCheckpoints()
    cfg = _cfg(trainable="./train.py:main", max_epochs=3, measure={"hessian": {"max_iter": 20}})
    r = run_trial(cfg, checkpoints=ck)
    assert r.status == "completed" and r.stop_reason == "max_epochs", r.error
    assert [e["epoch"] for e in r.epochs] == [1, 2, 3]
    assert all(e["dist_from_init"] > 0 and e["epoch_distance"] > 0 for e in r.epochs)
    assert [m["name"] for m in r.metrics] == ["weight_norm"] * 3
    assert len(r.layers) == 3 * 6
    assert [p["probe"] for p in r.probes] == ["hessian_top_eig"]
    assert {"init", "final", "resume"} <= set(ck.files)
    final = torch.load(__import__("io").BytesIO(ck.files["final"]), weights_only=True)
    init = torch.load(__import__("io").BytesIO(ck.files["init"]), weights_only=True)
    d = torch.linalg.vector_norm(torch.cat([(final[k] - init[k]).flatten() for k in final])).item()
    assert math.isclose(d, r.epochs[-1]["dist_from_init"], rel_tol=1e-5)


def test_trainable_resumes_from_its_checkpoint_without_duplicate_rows():
    cfg = _cfg(trainable="./train.py:main", max_epochs=4)
    whole = run_trial(cfg, checkpoints=MemoryCheckpoints())

    ck = MemoryCheckpoints()

    class Crash(BaseException):
        pass

    def crash_at_3(row):
        if row["epoch"] == 3:
            raise Crash  # like a SIGKILL after epoch 3's log, before its checkpoint

    with pytest.raises(Crash):
        run_trial(cfg, checkpoints=ck, on_epoch=crash_at_3)
    resumed = run_trial(cfg, checkpoints=ck)
    assert resumed.summary["resumed_from_epoch"] == 2
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3, 4]
    assert [(m["epoch"], m["name"]) for m in resumed.metrics] == [
        (e, "weight_norm") for e in (1, 2, 3, 4)
    ]
    for a, b in zip(whole.epochs, resumed.epochs, strict=True):
        for k in ("train_loss", "val_loss", "dist_from_init", "epoch_distance"):
            assert a[k] == b[k], (k, a[k], b[k])


def test_trainable_divergence_and_early_stopping():
    r = run_trial(_cfg(trainable="./train.py:main", lr=1e6, max_epochs=3))
    assert r.status == "diverged" and r.stop_reason == "diverged"
    assert r.summary["diverged_step"] >= 0
    es = run_trial(
        _cfg(
            trainable="./train.py:main",
            max_epochs=30,
            lr=0.2,
            early_stopping={"patience": 2, "min_delta": 0.05},
        )
    )
    assert es.status == "completed" and es.stop_reason == "early_stopping", es.error
    assert es.summary["epochs_run"] < 30


# ----------------------------------------------------------------------------- bad input

BROKEN = """
import torch
from torch import nn
def raises(**kw):
    raise RuntimeError("my factory is broken")
def not_a_module(**kw):
    return 42
def bad_shapes():
    return torch.randn(10, 3), torch.zeros(9, dtype=torch.long), torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
def bad_labels():
    return torch.randn(10, 3), torch.arange(10) - 1, torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
def int_inputs():
    return torch.zeros(10, 3, dtype=torch.long), torch.zeros(10, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)
def wrong_outputs(input_shape):
    return nn.Linear(input_shape[0], 2)
def never_logs(trial):
    return None
def trainable_raises(trial):
    raise ValueError("user loop failed at epoch 1")
"""

BAD = [
    ({"model": {"factory": "nosuchpkg.nets:build"}}, "model.factory", "nosuchpkg"),
    ({"model": {"factory": "./broken.py:missing"}}, "model.factory", "has no attribute 'missing'"),
    ({"model": {"factory": "./nofile.py:build"}}, "model.factory", "does not exist"),
    ({"model": {"factory": "./broken.py:raises"}}, "model.factory", "my factory is broken"),
    (
        {"model": {"factory": "./broken.py:not_a_module"}},
        "model.factory",
        "expected a torch.nn.Module",
    ),
    (
        {"dataset": {"loader": "./broken.py:bad_shapes"}},
        "dataset.loader",
        "same number of examples",
    ),
    ({"dataset": {"loader": "./broken.py:bad_labels"}}, "dataset.loader", "outside [0, 9)"),
    ({"dataset": {"loader": "./broken.py:int_inputs"}}, "dataset.loader", "floating point"),
    ({"model": {"factory": "./broken.py:wrong_outputs"}}, "model.factory", "needs (2, 4)"),
    ({"loss": "./broken.py:nosuch"}, "loss", "has no attribute"),
]


@pytest.mark.parametrize(("patch", "key", "expected"), BAD, ids=[b[2][:24] for b in BAD])
def test_bad_user_code_is_named_at_dry_run_and_fails_the_trial(tmp_path, patch, key, expected):
    from scheduler.preflight import check_user_code
    from scheduler.spec import parse_spec

    (tmp_path / "broken.py").write_text(BROKEN)
    for f in ("nets.py", "data.py"):
        (tmp_path / f).write_text((CUSTOM / f).read_text())
    grid = {
        "experiment": "bad",
        "max_epochs": 1,
        **_cfg().model_dump(mode="json", include={"model", "dataset"}),
        **patch,
    }
    spec = parse_spec(grid).model_copy(update={"code_dir": str(tmp_path)})
    problems = check_user_code(spec)
    assert len(problems) == 1 and problems[0].startswith(key), problems
    assert expected in problems[0], problems
    # The same config run anyway: a failed trial with the reason, never an exception.
    use_code_dir(str(tmp_path))
    r = run_trial(spec.trials()[0])
    if "needs (2, 4)" in expected:  # the forward itself works; the loss then fails on it
        assert r.status == "failed", r.status
    else:
        assert r.status == "failed" and expected.split("(")[0] in r.error, r.error


def test_trainable_that_never_logs_or_raises_fails_with_the_users_traceback(tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN)
    use_code_dir(str(tmp_path))
    r = run_trial(_cfg(trainable="./broken.py:never_logs"))
    assert r.status == "failed" and "returned without logging an epoch" in r.error
    r = run_trial(_cfg(trainable="./broken.py:trainable_raises"))
    assert r.status == "failed"
    assert "trainable_raises" in r.error and "user loop failed at epoch 1" in r.error


def test_resolve_errors_name_the_key():
    with pytest.raises(UserCodeError, match=r"^trainable: 'no_colon' is not an import path"):
        resolve("no_colon", "trainable")
    with pytest.raises(ValueError, match="import path"):
        TrialConfig.model_validate({"model": {"factory": "not a path"}})


# ----------------------------------------------------------------------------- packs


@pytest.mark.parametrize(
    ("factory", "loss", "executor"),
    [("./nets.py:mlp", "cross_entropy", PackNet), ("./nets.py:residual", "mse", VmapNet)],
)
def test_pack_of_user_models_equals_lone_trials(factory, loss, executor):
    cfgs = [
        _cfg(
            model={"factory": factory, "kwargs": {"width": 16}},
            loss=loss,
            lr=lr,
            seed=s,
            max_epochs=3,
            measure={"checkpoints": True},
        )
        for lr, s in ((0.05, 0), (0.02, 1), (0.1, 2))
    ]
    data = load_dataset(cfgs[0].dataset)
    from workers.models import build_model

    assert isinstance(make_pack_net(build_model(cfgs[0].model, (20,), 4)), executor)
    packed = run_pack(cfgs, data=data, checkpoints=[MemoryCheckpoints() for _ in cfgs])
    for cfg, p in zip(cfgs, packed, strict=True):
        lone = run_trial(cfg, data=data, checkpoints=MemoryCheckpoints())
        assert_same_trial(lone, p, rel=REL)


def test_models_with_buffers_outside_packnet_are_refused_with_a_reason():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.norm = nn.BatchNorm1d(3)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.norm(self.lin(x)))

    with pytest.raises(PackUnsupported, match="buffers"):
        make_pack_net(Odd(), torch.randn(3, 4))
