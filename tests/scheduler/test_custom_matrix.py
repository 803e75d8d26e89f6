"""Every kind of data x every kind of user code, through the real scheduler (issue 23).

{built-in data set, user tensors, user torch `Dataset`} x {built-in model, user factory} x
{built-in loss, user loss} x {built-in loop, user trainable}: `batchlab run --dry-run` for
every cell, and a one-epoch run on local Ray for every cell whose data is on the machine.
The built-in data set is mnist1d (generated offline: always here) and cifar10 from an empty
folder (its files are not here: the dry run checks the user code on a random batch of its
shape and says so). User tensors and user Datasets are one loader, `kind` a grid axis; the
loss is a grid axis; model and loop are the grid files. Tiny data, one epoch: the whole
matrix (24 trials, 12 dry runs) costs about a minute of CPU.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from batchlab.cli import main as cli_main
from scheduler.runner import run_grid
from scheduler.spec import load_spec
from warehouse.db import connect

CODE = """
import math

import torch
import torch.nn.functional as F
from torch import nn

from batchlab import trial


def build(input_shape, num_classes, width=8):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def ce(outputs, targets):
    return F.cross_entropy(outputs, targets)


def load(kind="tensors", n=96, dim=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(classes, dim, generator=g)[y] + torch.randn(n, dim, generator=g)
    k = n * 3 // 4
    if kind == "tensors":
        return x[:k], y[:k], x[k:], y[k:]
    ds = torch.utils.data.TensorDataset
    return {"train": ds(x[:k], y[:k]), "val": ds(x[k:], y[k:]), "num_classes": classes}


def loop():
    model = trial.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=trial.lr)
    x, y = trial.data.x_train, trial.data.y_train
    for epoch in range(1, trial.max_epochs + 1):
        total = 0.0
        for i in range(0, len(x), trial.batch_size):
            loss = trial.loss(model(x[i : i + trial.batch_size]), y[i : i + trial.batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x[i : i + trial.batch_size])
        val_loss, val_acc = trial.evaluate(model, "val")
        trial.log_epoch(epoch, train_loss=total / len(x), val_loss=val_loss, val_acc=val_acc)
"""

DATA = {
    "mnist1d": {"dataset": {"name": "mnist1d", "n_train": 64}},
    "cifar10": {"dataset": {"name": "cifar10", "n_train": 64}, "data_dir": "./no-files"},
    "user": {
        "dataset": {"loader": "./code.py:load"},
        "grid_axes": {"dataset.kwargs.kind": ["tensors", "dataset"]},
    },
}
MODELS = {"builtin": {"name": "mlp", "hidden": [8]}, "user": {"factory": "./code.py:build"}}
LOOPS = {"builtin": None, "user": "./code.py:loop"}
LOSSES = ["cross_entropy", "./code.py:ce"]


def _write_grids(project: Path) -> dict[tuple[str, str, str], Path]:
    (project / "code.py").write_text(CODE)
    (project / "no-files").mkdir()
    grids = {}
    for data, model, loop in itertools.product(DATA, MODELS, LOOPS):
        d = dict(DATA[data])
        axes = d.pop("grid_axes", {})
        grid = {
            "experiment": f"m-{data}-{model}-{loop}",
            **d,
            "model": MODELS[model],
            "trainable": LOOPS[loop],
            "max_epochs": 1,
            "grid": {"batch_size": [32], "lr": [5e-2], "loss": LOSSES, **axes},
            "resources": {"cpus_per_trial": 1},
        }
        path = project / f"{grid['experiment']}.yaml"
        path.write_text(yaml.safe_dump(grid))
        grids[(data, model, loop)] = path
    return grids


def test_every_kind_of_data_with_every_kind_of_user_code_dry_runs_and_runs(
    ray_local, tmp_path, capsys
):
    project = tmp_path / "proj"
    project.mkdir()
    storage = str(tmp_path / "runs")
    grids = _write_grids(project)
    ran: set[str] = set()
    for (data, model, loop), path in grids.items():
        rc = cli_main(["run", str(path), "--dry-run", "--storage", storage])
        out, err = capsys.readouterr()
        cell = (data, model, loop)
        assert rc == 0, (cell, err)
        n = 4 if data == "user" else 2  # loss x (user data: tensors, Dataset)
        assert f"{n} trials in the grid, 0 already in storage (skipped), {n} to run" in out, cell
        shape_note = "note: dataset 'cifar10': its files are not on this machine"
        # The dry step runs the user code on a random batch of CIFAR-10's shape, and says so.
        assert (shape_note in out) == (data == "cifar10"), (cell, out)
        if data == "cifar10":
            assert "random batch of the data set's shape (2, 3, 32, 32)" in out
            continue  # no files here: dry run only
        report = run_grid(load_spec(path), storage, progress=False)
        assert report.counts.get("completed") == n, (cell, report.results)
        ran.add(path.stem)
    con = connect(storage)
    rows = con.execute(
        "SELECT t.trial_id, t.experiment, t.loss, coalesce(t.model_factory, ''),"
        " coalesce(t.trainable, ''),"
        " coalesce(t.dataset_loader, ''), t.status, count(e.epoch), max(e.epoch),"
        " bool_and(isfinite(e.val_loss)) FROM trials t JOIN epochs e USING (trial_id)"
        " GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert {r[1] for r in rows} == ran and len(ran) == 8
    assert len(rows) == 24  # 8 grids: 4 x 2 on mnist1d, 4 x 4 on user data (tensors, Dataset)
    for _, exp, loss, factory, trainable, loader, status, n_epochs, last, finite in rows:
        _, data, model, loop = exp.split("-")
        assert status == "completed" and n_epochs == 1 and last == 1 and finite, exp
        assert loss in LOSSES
        assert (factory == "./code.py:build") == (model == "user"), exp
        assert (trainable == "./code.py:loop") == (loop == "user"), exp
        assert (loader == "./code.py:load") == (data == "user"), exp
    # Both kinds of user data ran: device tensors and a streamed torch Dataset.
    kinds = con.execute(
        "SELECT DISTINCT json_extract_string(config_json, '$.dataset.kwargs.kind') FROM trials"
        " WHERE dataset_loader IS NOT NULL"
    ).fetchall()
    assert sorted(k for (k,) in kinds) == ["dataset", "tensors"]


@pytest.mark.parametrize("name", ["digits", "mnist", "fashion-mnist"])
def test_user_factory_dry_runs_on_every_built_in_data_set(name, tmp_path, capsys):
    """The other built-in data sets: real examples where the files are here (digits always;
    MNIST from the shared folder when it exists), else a random batch, said in a note."""
    from tests.conftest import SHARED

    (tmp_path / "code.py").write_text(CODE)
    here = (SHARED / "data" / name).is_dir()
    grid = {
        "experiment": f"b-{name}",
        "dataset": name,
        "data_dir": str(SHARED / "data") if here else str(tmp_path),
        "model": {"factory": "./code.py:build", "kwargs": {"width": 4}},
        "loss": "./code.py:ce",
        "grid": {"lr": [1e-3]},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    rc = cli_main(["run", str(path), "--dry-run", "--storage", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    real = name == "digits" or here
    assert ("its files are not on this machine" in out) == (not real), out
    if not real:
        assert "(2, 1, 28, 28)" in out
