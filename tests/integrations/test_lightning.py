"""BatchlabLogger + BatchlabCallback with real Lightning on CPU: a committed trial."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("lightning")
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchlab.integrations.lightning import BatchlabCallback, BatchlabLogger
from tests.integrations.conftest import rows


class Tiny(L.LightningModule):
    def __init__(self, lr: float = 0.1, batch_size: int = 16, width: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        out = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def fit(tmp_path: Path, blobs, *, callback: bool = True, epochs: int = 3, **kw) -> BatchlabLogger:
    x, y = blobs
    L.seed_everything(0)
    model = Tiny(**kw)
    bs = model.hparams.batch_size
    train = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)
    val = DataLoader(TensorDataset(x, y), batch_size=64)
    logger = BatchlabLogger(tmp_path / "runs", experiment="lit")
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[BatchlabCallback()] if callback else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        log_every_n_steps=1,
    )
    trainer.fit(model, train, val)
    return logger


def test_lightning_run_is_a_committed_batchlab_trial_with_measurements(tmp_path, blobs):
    logger = fit(tmp_path, blobs)
    assert logger.result["status"] == "completed"
    root = tmp_path / "runs"
    (t,) = rows(root, "SELECT * FROM trials")
    assert (t["batch_size"], t["lr"], t["seed"], t["status"]) == (16, 0.1, 0, "completed")
    assert t["model"] == "Tiny" and t["epochs_run"] == 3 and t["steps_run"] == 12
    assert t["code_version"].startswith("integration:lightning==")
    assert '"framework": "lightning"' in t["params_json"] and '"width": 8' in t["params_json"]
    eps = rows(root, "SELECT * FROM epochs ORDER BY epoch")
    assert [e["epoch"] for e in eps] == [1, 2, 3]
    assert all(math.isfinite(e["val_loss"]) and 0 <= e["val_acc"] <= 1 for e in eps)
    assert all(e["dist_from_init"] > 0 and e["epoch_distance"] > 0 for e in eps)
    assert eps[0]["dist_from_init"] == pytest.approx(eps[0]["epoch_distance"])
    steps = rows(root, "SELECT * FROM steps ORDER BY step")
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert all(s["update_norm"] > 0 for s in steps[1:]) and all(s["lr"] == 0.1 for s in steps)
    layers = rows(root, "SELECT DISTINCT layer FROM layers ORDER BY layer")
    assert [r["layer"] for r in layers] == [
        "net.0.bias",
        "net.0.weight",
        "net.2.bias",
        "net.2.weight",
    ]


def test_logger_alone_writes_epochs_and_two_batch_sizes_are_two_trials(tmp_path, blobs):
    fit(tmp_path, blobs, callback=False, epochs=2, batch_size=16)
    fit(tmp_path, blobs, callback=False, epochs=2, batch_size=32)
    ts = rows(tmp_path / "runs", "SELECT batch_size, epochs_run, status FROM trials ORDER BY 1")
    assert ts == [
        {"batch_size": 16, "epochs_run": 2, "status": "completed"},
        {"batch_size": 32, "epochs_run": 2, "status": "completed"},
    ]
    from batchlab.cli import main

    assert (
        main(["report", "--storage", str(tmp_path / "runs"), "--output", str(tmp_path / "r.md")])
        == 0
    )
    assert "batch" in (tmp_path / "r.md").read_text().lower()
    eps = rows(tmp_path / "runs", "SELECT val_loss, dist_from_init FROM epochs")
    assert len(eps) == 4 and all(math.isfinite(e["val_loss"]) for e in eps)
    assert all(e["dist_from_init"] is None or math.isnan(e["dist_from_init"]) for e in eps)


def test_a_crashing_script_commits_a_failed_trial(tmp_path, blobs):
    class Boom(Tiny):
        def on_train_epoch_end(self):
            if self.current_epoch == 1:
                raise RuntimeError("user bug at epoch 2")

    x, y = blobs
    logger = BatchlabLogger(tmp_path / "runs", experiment="lit")
    trainer = L.Trainer(
        max_epochs=3,
        logger=logger,
        callbacks=[BatchlabCallback()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    with pytest.raises(RuntimeError, match="user bug"):
        trainer.fit(Boom(), DataLoader(TensorDataset(x, y), batch_size=16))
    (t,) = rows(tmp_path / "runs", "SELECT status, error, epochs_run FROM trials")
    assert t["status"] == "failed" and "user bug at epoch 2" in t["error"]


def grid_main(trial) -> None:
    """A batchlab trainable whose loop is Lightning (the grid's trial id, no second trial)."""
    g = torch.Generator().manual_seed(trial.seed)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    model = Tiny(lr=trial.lr, batch_size=trial.batch_size)
    trainer = L.Trainer(
        max_epochs=trial.max_epochs,
        logger=BatchlabLogger(experiment="ignored"),
        callbacks=[BatchlabCallback()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(x, y), batch_size=trial.batch_size),
        DataLoader(TensorDataset(x, y), batch_size=64),
    )


def test_inside_a_batchlab_grid_it_logs_to_the_grids_trial(tmp_path):
    from scheduler.tasks import execute_trial
    from workers.config import TrialConfig

    cfg = TrialConfig.model_validate(
        {
            "trainable": f"{__name__}:grid_main",
            "batch_size": 16,
            "lr": 0.05,
            "max_epochs": 2,
        }
    )
    out = execute_trial(cfg.canonical_json(), "grid", str(tmp_path), code_version="t")
    assert out["status"] == "completed"
    ts = rows(tmp_path, "SELECT trial_id, experiment, epochs_run, steps_run FROM trials")
    assert ts == [{"trial_id": cfg.trial_id, "experiment": "grid", "epochs_run": 2, "steps_run": 8}]
    eps = rows(tmp_path, "SELECT val_loss, dist_from_init FROM epochs ORDER BY epoch")
    assert len(eps) == 2 and all(e["dist_from_init"] > 0 for e in eps)
