"""BatchlabCallback with a real transformers.Trainer on CPU (a tiny custom nn.Module, no
hub download, no network): a committed trial with per-step and per-epoch rows."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from batchlab.integrations.huggingface import BatchlabCallback
from tests.integrations.conftest import rows


class Net(nn.Module):
    """A model the Trainer drives: forward(x, labels) returns the loss and the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x, labels=None):
        logits = self.body(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def train(tmp_path, blobs, epochs: int = 2, lr: float = 0.1, **cb) -> BatchlabCallback:
    x, y = blobs
    callback = BatchlabCallback(tmp_path / "runs", experiment="hf", **cb)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        learning_rate=lr,
        num_train_epochs=epochs,
        eval_strategy="epoch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=3,
        optim="sgd",
        lr_scheduler_type="constant",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=Net(),
        args=args,
        train_dataset=Pairs(x, y),
        eval_dataset=Pairs(x, y),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    trainer.train()
    return callback


def test_trainer_run_is_a_committed_batchlab_trial_with_measurements(tmp_path, blobs):
    cb = train(tmp_path, blobs, params={"width": 8})
    assert cb.result["status"] == "completed"
    root = tmp_path / "runs"
    (t,) = rows(root, "SELECT * FROM trials")
    assert (t["batch_size"], t["lr"], t["seed"], t["epochs_run"]) == (16, 0.1, 3, 2)
    assert t["model"] == "Net" and t["steps_run"] == 8 and t["status"] == "completed"
    assert t["code_version"].startswith("integration:transformers==")
    assert '"framework": "transformers"' in t["params_json"] and '"width": 8' in t["params_json"]
    eps = rows(root, "SELECT * FROM epochs ORDER BY epoch")
    assert [e["epoch"] for e in eps] == [1, 2]
    assert all(math.isfinite(e["val_loss"]) and 0 <= e["val_acc"] <= 1 for e in eps)
    assert all(math.isfinite(e["train_loss"]) and e["dist_from_init"] > 0 for e in eps)
    steps = rows(root, "SELECT * FROM steps ORDER BY step")
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert all(s["grad_norm"] > 0 and s["lr"] == pytest.approx(0.1) for s in steps)
    assert all(s["update_norm"] > 0 for s in steps[1:])
    m = rows(root, "SELECT DISTINCT name FROM metrics")
    assert "eval_runtime" in {r["name"] for r in m}


def test_a_diverging_run_is_stored_diverged_and_training_stops(tmp_path, blobs):
    x, y = blobs
    cb = train(tmp_path, (x * 1e6, y), epochs=3, lr=10.0)
    (t,) = rows(tmp_path / "runs", "SELECT status, epochs_run FROM trials")
    assert t["status"] == "diverged" and cb.result["status"] == "diverged"


def grid_main(trial) -> None:
    """A batchlab trainable whose loop is the HF Trainer (logs to the grid's trial)."""
    g = torch.Generator().manual_seed(trial.seed)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    args = TrainingArguments(
        output_dir="/tmp/batchlab-hf-grid-out",
        per_device_train_batch_size=trial.batch_size,
        learning_rate=trial.lr,
        num_train_epochs=trial.max_epochs,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        optim="sgd",
        disable_tqdm=True,
    )
    Trainer(
        model=Net(),
        args=args,
        train_dataset=Pairs(x, y),
        eval_dataset=Pairs(x, y),
        callbacks=[BatchlabCallback(experiment="ignored")],
    ).train()


def test_inside_a_batchlab_grid_it_logs_to_the_grids_trial(tmp_path):
    from scheduler.tasks import execute_trial
    from workers.config import TrialConfig

    cfg = TrialConfig.model_validate(
        {"trainable": f"{__name__}:grid_main", "batch_size": 16, "lr": 0.05, "max_epochs": 2}
    )
    out = execute_trial(cfg.canonical_json(), "grid", str(tmp_path), code_version="t")
    assert out["status"] == "completed"
    ts = rows(tmp_path, "SELECT trial_id, epochs_run, steps_run FROM trials")
    assert ts == [{"trial_id": cfg.trial_id, "epochs_run": 2, "steps_run": 8}]
    eps = rows(tmp_path, "SELECT val_loss, dist_from_init FROM epochs ORDER BY epoch")
    assert len(eps) == 2 and all(e["dist_from_init"] > 0 for e in eps)
