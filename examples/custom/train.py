"""A user's own training loop run by batchlab (`trainable: "./train.py:main"`).

This is an ordinary PyTorch script's loop; the lines marked `# batchlab` are all it takes
to run it as a batchlab trial (docs/custom.md shows the script before and after).
"""

from __future__ import annotations

import torch

from batchlab import trial  # batchlab


def main():
    torch.manual_seed(trial.seed)  # batchlab: the trial's seed
    data = trial.data  # batchlab: the grid's data set, on the device
    model = trial.build_model()  # batchlab: the grid's model, measured by batchlab
    opt = torch.optim.SGD(
        model.parameters(), lr=trial.lr, momentum=trial.params.get("momentum", 0.0)
    )
    loss_fn = trial.loss  # batchlab: the grid's loss
    start = 0
    if (state := trial.load_checkpoint()) is not None:  # batchlab: resume after a crash
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"]
    n = data.x_train.shape[0]
    for epoch in range(start + 1, trial.max_epochs + 1):
        model.train()
        total = 0.0
        # The epoch's order from (seed, epoch): a resumed trial sees the same batches.
        g = torch.Generator().manual_seed(trial.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).to(data.x_train.device)
        for i in range(0, n, trial.batch_size):
            idx = perm[i : i + trial.batch_size]
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_loss, val_acc = trial.evaluate(model, "val")
        trial.log_epoch(epoch, train_loss=total / n, val_loss=val_loss, val_acc=val_acc,
                        weight_norm=sum(p.norm() ** 2 for p in model.parameters()).item() ** 0.5)  # batchlab  # fmt: skip
        trial.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch})  # batchlab  # fmt: skip
        if trial.should_stop:  # batchlab: early stopping from grid.yaml
            break
