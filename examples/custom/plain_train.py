"""The "before" of docs/custom.md: a plain PyTorch training script, no batchlab.

`train.py` is the same loop run by batchlab; the benchmark
`benchmarks/trial_api_overhead.py` times the two, epoch by epoch, in one run.
"""

from __future__ import annotations

import torch
from data import blobs
from nets import mlp


def evaluate(model, x, y, loss_fn):
    model.eval()
    with torch.no_grad():
        out = model(x)
        loss, acc = loss_fn(out, y).item(), (out.argmax(1) == y).float().mean().item()
    model.train()
    return loss, acc


def main(seed=0, batch_size=32, lr=0.05, momentum=0.0, max_epochs=8, log=print):
    torch.manual_seed(seed)
    x, y = blobs(n=2000)
    n_val = 400
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    model = mlp((20,), 4, width=64)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = torch.nn.functional.cross_entropy
    n = x_train.shape[0]
    for epoch in range(1, max_epochs + 1):
        model.train()
        total = 0.0
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_loss, val_acc = evaluate(model, x_val, y_val, loss_fn)
        weight_norm = sum(p.norm() ** 2 for p in model.parameters()).item() ** 0.5
        log(epoch, total / n, val_loss, val_acc, weight_norm)


if __name__ == "__main__":
    main()
