"""User data sets for batchlab (`dataset: {loader: "./data.py:<function>"}`).

A loader returns (x_train, y_train, x_val, y_val) tensors (kept on the device), (x, y)
(split by `dataset.val_fraction`), or two torch Datasets (streamed through a DataLoader).
It receives `dataset.kwargs`, and `seed` (= dataset.split_seed) when it names it. Data is
used as returned: normalize it here.
"""

from __future__ import annotations

import torch


def blobs(n=2000, dim=20, classes=4, spread=1.5, seed=0):
    """Gaussian class clusters: an easy synthetic classification task (no download)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * spread
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    return x, y  # one split: batchlab holds out dataset.val_fraction for validation


def regression(n=512, dim=8, noise=0.1, seed=0):
    """y = x w + noise: least squares, whose Hessian under mse is 2 X'X / n."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, 1, generator=g)
    x = torch.randn(n, dim, generator=g)
    y = x @ w + noise * torch.randn(n, 1, generator=g)
    k = n * 3 // 4
    return {"x_train": x[:k], "y_train": y[:k], "x_val": x[k:], "y_val": y[k:]}


class _Blobs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def blobs_streamed(n=2000, dim=20, classes=4, seed=0):
    """The same blobs as torch Datasets: batches come through a DataLoader (for data that
    does not fit on the device)."""
    x, y = blobs(n, dim, classes, seed=seed)
    k = n * 4 // 5
    return {"train": _Blobs(x[:k], y[:k]), "val": _Blobs(x[k:], y[k:]), "num_classes": classes}
