"""The "after" of docs/custom.md: plain_train.py's loop run by batchlab
(`trainable: "./train.py:main"`). The lines marked `# batchlab` are what changed.
"""

from __future__ import annotations

import torch

from batchlab import trial  # batchlab


def main():
    seed, batch_size, lr, max_epochs = trial.seed, trial.batch_size, trial.lr, trial.max_epochs  # batchlab  # fmt: skip
    momentum = trial.params.get("momentum", 0.0)  # batchlab: a free grid axis (params.momentum)
    torch.manual_seed(seed)
    x_train, y_train = trial.data.x_train, trial.data.y_train  # batchlab: the grid's data set
    model = trial.build_model()  # batchlab: the grid's model, measured by batchlab
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = trial.loss  # batchlab: the grid's loss
    start = 0  # batchlab: resume after a crash
    if (state := trial.load_checkpoint()) is not None:  # batchlab
        model.load_state_dict(state["model"])  # batchlab
        opt.load_state_dict(state["opt"])  # batchlab
        start = state["epoch"]  # batchlab
    n = x_train.shape[0]
    for epoch in range(start + 1, max_epochs + 1):  # batchlab: from the resume point
        model.train()
        total = 0.0
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).to(x_train.device)  # batchlab: data on the device
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_loss, val_acc = trial.evaluate(model, "val")  # batchlab
        weight_norm = sum(p.norm() ** 2 for p in model.parameters()).item() ** 0.5
        trial.log_epoch(epoch, train_loss=total / n, val_loss=val_loss, val_acc=val_acc, weight_norm=weight_norm)  # batchlab  # fmt: skip
        trial.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch})  # batchlab  # fmt: skip
        if trial.should_stop:  # batchlab: early stopping from grid.yaml
            break
