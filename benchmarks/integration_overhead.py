"""The cost of the framework integrations per epoch, against the same run without them.

Same process, same data, alternating variants: a Lightning fit (MLP 32-256-256-10, 2,048
synthetic examples, batch 32 = 64 steps per epoch, validation every epoch) without any
logger, with `BatchlabLogger` alone, and with `BatchlabLogger` + `BatchlabCallback`
(batchlab's measurements: update/gradient norms every step, distances every epoch); the
same model under a `transformers.Trainer` without and with `BatchlabCallback`. Per variant:
the steady-state epoch's CPU time of this process (median over epochs 2..N of the time from
one epoch's start to the next's, i.e. with the epoch-end logging and the trial's thread)
and the whole fit's CPU and wall time (which add the trial's start and its commit), each
the median of `--repeats`. CPU time, not wall time: on a shared 2-core machine the wall
clock measures the neighbours (torch runs 1 thread, so CPU time is the work done).

    python benchmarks/integration_overhead.py [--epochs 6] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

N, D, C, BS = 2048, 32, 10, 32


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, (x[:, :C]).argmax(1)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(D, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, C)
    )


class Lit(L.LightningModule):
    def __init__(self, lr: float = 0.05, batch_size: int = BS) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = mlp()

    def training_step(self, b, _):
        loss = nn.functional.cross_entropy(self.net(b[0]), b[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, b, _):
        self.log("val_loss", nn.functional.cross_entropy(self.net(b[0]), b[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class LitClock(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, *a) -> None:
        self.starts.append(time.process_time())

    def on_train_end(self, *a) -> None:
        self.starts.append(time.process_time())


def run_lightning(variant: str, epochs: int, root: str) -> tuple[list[float], float, float]:
    from batchlab.integrations.lightning import BatchlabCallback, BatchlabLogger

    x, y = data()
    clock = LitClock()
    cbs: list = [clock]
    logger: object = False
    if variant != "plain":
        logger = BatchlabLogger(root, experiment=f"bench-{variant.replace('+', '-')}")
    if variant == "logger+callback":
        cbs.append(BatchlabCallback())
    t0, c0 = time.perf_counter(), time.process_time()
    L.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=cbs,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=root,
        log_every_n_steps=1,
    ).fit(
        Lit(),
        DataLoader(TensorDataset(x, y), batch_size=BS, shuffle=True),
        DataLoader(TensorDataset(x, y), batch_size=512),
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)], wall, cpu


class HFNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, x, labels=None):
        logits = self.body(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class HFClock(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_epoch_begin(self, *a, **k) -> None:
        self.starts.append(time.process_time())

    def on_train_end(self, *a, **k) -> None:
        self.starts.append(time.process_time())


def run_hf(variant: str, epochs: int, root: str) -> tuple[list[float], float, float]:
    from batchlab.integrations.huggingface import BatchlabCallback

    x, y = data()
    clock = HFClock()
    cbs: list = [clock]
    if variant == "callback":
        cbs.append(BatchlabCallback(root, experiment="bench-hf"))
    args = transformers.TrainingArguments(
        output_dir=os.path.join(root, "hf-out"),
        per_device_train_batch_size=BS,
        per_device_eval_batch_size=512,
        learning_rate=0.05,
        num_train_epochs=epochs,
        eval_strategy="epoch",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        optim="sgd",
        lr_scheduler_type="constant",
        disable_tqdm=True,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    transformers.Trainer(
        model=HFNet(), args=args, train_dataset=Pairs(x, y), eval_dataset=Pairs(x, y), callbacks=cbs
    ).train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)], wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = {("lightning", v): run_lightning for v in ("plain", "logger", "logger+callback")}
    runs |= {("transformers", v): run_hf for v in ("plain", "callback")}
    got: dict[tuple[str, str], dict[str, list[float]]] = {
        k: {"epoch": [], "wall": [], "cpu": []} for k in runs
    }
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for (fw, v), fn in runs.items():
                epochs, wall, cpu = fn(v, args.epochs, os.path.join(tmp, f"{fw}-{r}"))
                got[(fw, v)]["epoch"].append(statistics.median(epochs[1:]))
                got[(fw, v)]["wall"].append(wall)
                got[(fw, v)]["cpu"].append(cpu)
    res: dict[str, dict] = {}
    for (fw, v), g in got.items():
        res.setdefault(fw, {})[v] = {
            "epoch_cpu_s_median": statistics.median(g["epoch"]),
            "epoch_cpu_s_runs": g["epoch"],
            "fit_cpu_s_median": statistics.median(g["cpu"]),
            "fit_cpu_s_runs": g["cpu"],
            "fit_wall_s_median": statistics.median(g["wall"]),
            "fit_wall_s_runs": g["wall"],
        }
    for vs in res.values():
        base = vs["plain"]
        for v, d in vs.items():
            if v != "plain":
                d["overhead_per_epoch_s"] = d["epoch_cpu_s_median"] - base["epoch_cpu_s_median"]
                d["overhead_per_epoch_pct"] = (
                    100 * d["overhead_per_epoch_s"] / base["epoch_cpu_s_median"]
                )
                d["overhead_per_fit_cpu_s"] = d["fit_cpu_s_median"] - base["fit_cpu_s_median"]
    out = {
        "command": " ".join(["python", *sys.argv]),
        "setup": f"MLP {D}-256-256-{C}, {N} examples, batch {BS} ({N // BS} steps/epoch), "
        f"{args.epochs} epochs, validation every epoch, torch threads 1, CPU",
        "results": res,
        "versions": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "transformers": transformers.__version__,
        },
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_avg_1m_after": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
