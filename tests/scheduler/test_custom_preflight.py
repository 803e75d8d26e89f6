"""The preflight runs user code in a box (issue 24): a call that exits, is interrupted,
hangs or kills its process is one problem line naming the key, within the time limit, and
`batchlab run` exits 2 with nothing run; labels that would make an absurd model are named."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from batchlab.cli import main as cli_main
from scheduler.preflight import BUILTIN, builtin_size, check_user_code, run_checks
from scheduler.spec import load_spec

USER = """
import math
import os
import sys

import torch
from torch import nn


def build(input_shape, num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def blobs(n=40, top=None, given=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    y = torch.arange(n) % 3
    if top is not None:
        y[7] = top  # a typo in one label
    out = {"x_train": x[:30], "y_train": y[:30], "x_val": x[30:], "y_val": y[30:]}
    return {**out, "num_classes": given} if given else out


def exits():
    sys.exit(0)


def interrupted(input_shape, num_classes):
    raise KeyboardInterrupt


def hangs(input_shape, num_classes):
    while True:
        pass


def dies():
    os._exit(3)
"""


def _grid(tmp_path: Path, **patch) -> Path:
    (tmp_path / "user.py").write_text(USER)
    grid = {
        "experiment": "box",
        "dataset": {"loader": "./user.py:blobs"},
        "model": {"factory": "./user.py:build"},
        "max_epochs": 1,
        "grid": {"batch_size": [8]},
        **patch,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_a_loader_that_calls_sys_exit_fails_the_run_and_runs_nothing(tmp_path, capsys):
    path = _grid(tmp_path, dataset={"loader": "./user.py:exits"})
    rc = cli_main(["run", str(path), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "dataset.loader: './user.py:exits' called sys.exit(0)" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"model": {"factory": "./user.py:interrupted"}},
            "model.factory: './user.py:interrupted' raised KeyboardInterrupt",
        ),
        (
            {"dataset": {"loader": "./user.py:dies"}},
            "dataset.loader: './user.py:dies': the preflight's process ended (exit code 3) "
            "without a result",
        ),
    ],
    ids=["keyboard-interrupt", "os-exit"],
)
def test_an_interrupt_or_a_dead_process_is_one_line_naming_the_key(tmp_path, patch, expected):
    (line,) = check_user_code(load_spec(_grid(tmp_path, **patch)))
    assert line.startswith(expected), line


def test_a_factory_that_never_returns_fails_the_dry_run_within_the_limit(
    tmp_path, capsys, monkeypatch
):
    path = _grid(tmp_path, model={"factory": "./user.py:hangs"}, preflight_timeout_s=300)
    monkeypatch.setenv("BATCHLAB_PREFLIGHT_TIMEOUT_S", "3")  # wins over the grid's 300
    t0 = time.monotonic()
    rc = cli_main(["run", str(path), "--dry-run", "--storage", str(tmp_path / "runs")])
    wall = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "model.factory: './user.py:hangs' did not return within 3 s" in err
    assert "preflight_timeout_s" in err
    assert wall < 60, wall  # the limit, plus the child's start (torch) on a loaded machine
    # The grid's own limit applies without the variable.
    monkeypatch.delenv("BATCHLAB_PREFLIGHT_TIMEOUT_S")
    spec = load_spec(_grid(tmp_path, model={"factory": "./user.py:hangs"}, preflight_timeout_s=2))
    (line,) = run_checks(spec).problems
    assert "did not return within 2 s" in line


def test_an_absurd_number_of_classes_from_the_labels_is_refused_or_warned(tmp_path, capsys):
    path = _grid(tmp_path, dataset={"loader": "./user.py:blobs", "kwargs": {"top": 1_000_000}})
    (line,) = check_user_code(load_spec(path))
    assert line.startswith("dataset.loader: './user.py:blobs': the largest label is 1,000,000")
    assert "num_classes would be 1,000,001" in line and "for 4 distinct labels" in line
    # Said, not refused: 10,000 classes for 4 distinct labels (a warning on the dry run).
    path = _grid(tmp_path, dataset={"loader": "./user.py:blobs", "kwargs": {"top": 9999}})
    assert cli_main(["run", str(path), "--dry-run", "--storage", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "warning: dataset.loader: './user.py:blobs': num_classes is inferred as 10,000" in out
    # Given by the loader: as many classes as it says, no warning.
    kwargs = {"top": 1_000_000, "given": 1_000_001}
    path = _grid(tmp_path, dataset={"loader": "./user.py:blobs", "kwargs": kwargs})
    checks = run_checks(load_spec(path))
    assert checks.problems == [] and checks.notes == []


def test_built_in_shapes_and_sizes_match_the_real_data_sets():
    """The table the preflight uses without loading equals what the loaders give (the data
    sets that are on every machine)."""
    from workers.config import DatasetConfig
    from workers.data import load_dataset

    for name in ("mnist1d", "digits"):
        cfg = DatasetConfig(name=name)
        data = load_dataset(cfg)
        _, shape, classes = BUILTIN[name]
        assert (data.input_shape, data.num_classes) == (shape, classes)
        assert data.n_train == builtin_size(name, cfg.val_fraction)
