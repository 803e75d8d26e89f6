"""Data sets, resident on the training device.

A trial never touches a DataLoader: the whole split is a pair of tensors on the device,
normalized on the device with the training split's statistics, and batches are slices of a
device-side permutation (the cifar10-airbench recipe). Every loader returns the same
`Dataset` record (defined in workers/dataset.py, re-exported here), so models and
measurements do not care where data came from.

`mnist1d` (generated offline, deterministic) and `digits` (bundled with scikit-learn) need no
network. `mnist`, `fashion-mnist` and `cifar10` are read from their official files by
`workers.downloads` (local directory first, else a checksum-verified download).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from workers import downloads, user
from workers.config import DatasetConfig
from workers.data_checks import check_finite, one_thread
from workers.dataset import Dataset, cache_dir
from workers.user_data import load_user_dataset

__all__ = ["Dataset", "cache_dir", "load_dataset", "load_dataset_cached"]


def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """MNIST-1D with the package's default arguments (4,000 train / 1,000 test, length 40).

    Generation is deterministic (the package's seed 42); the arrays are cached as .npz so
    a worker process pays the ~seconds of generation once per machine.
    """
    path = cache_dir() / "mnist1d-default.npz"
    if path.exists():
        with np.load(path) as z:
            return (
                z["x"],
                z["y"],
                z["x_test"],
                z["y_test"],
                {"generator": "mnist1d", "cache": str(path)},
            )
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    x, y = np.asarray(d["x"], np.float32), np.asarray(d["y"], np.int64)
    xt, yt = np.asarray(d["x_test"], np.float32), np.asarray(d["y_test"], np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y, x_test=xt, y_test=yt)
    os.replace(tmp, path)  # atomic: concurrent workers never read a half-written cache
    return x, y, xt, yt, {"generator": "mnist1d", "cache": str(path)}


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    return x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]]


def _raw(cfg: DatasetConfig, data_dir: str | None, download: bool = True):
    """(x_train, y_train, x_val, y_val, num_classes, input_shape, source) as numpy."""
    if cfg.name == "mnist1d":
        x, y, xt, yt, src = _mnist1d_arrays()
        return x, y, xt, yt, 10, (40,), src
    if cfg.name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.data.astype(np.float32).reshape(-1, 1, 8, 8)
        xtr, ytr, xv, yv = _split(x, d.target.astype(np.int64), cfg.val_fraction, cfg.split_seed)
        return xtr, ytr, xv, yv, 10, (1, 8, 8), {"source": "sklearn.datasets.load_digits"}
    return downloads.load_official(cfg.name, data_dir, download=download)


def load_dataset(
    cfg: DatasetConfig,
    device: torch.device | str = "cpu",
    data_dir: str | None = None,
    download: bool = True,
) -> Dataset:
    """Load `cfg` onto `device`: a built-in data set normalized with the training split's
    mean and std, or the user's loader's data as it returns it (workers/user_data.py).
    `download=False`: official files missing here raise DownloadError (the preflight)."""
    if cfg.loader is not None:
        return load_user_dataset(cfg, device, data_dir)
    xtr, ytr, xv, yv, num_classes, shape, source = _raw(cfg, data_dir, download)
    if cfg.n_train is not None:
        if cfg.n_train > len(xtr):
            raise ValueError(
                f"dataset.n_train: {cfg.n_train} exceeds the {len(xtr)} training examples of {cfg.name}"
            )
        idx = np.random.default_rng(cfg.split_seed).permutation(len(xtr))[: cfg.n_train]
        xtr, ytr = xtr[np.sort(idx)], ytr[np.sort(idx)]
    dev = torch.device(device)
    # Copy raw values (uint8 where the files are uint8) and convert on the device.
    x_train = torch.as_tensor(xtr).to(dev).float()
    x_val = torch.as_tensor(xv).to(dev).float()
    # Per-channel statistics for images, one scalar for flat signals.
    dims = [0, *range(2, x_train.dim())] if x_train.dim() >= 3 else [0, 1]
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    source = {**source, "n_train": len(xtr), "n_val": len(xv)}
    return Dataset(
        name=cfg.name,
        x_train=((x_train - mean) / std).contiguous(),
        y_train=torch.as_tensor(ytr, dtype=torch.int64).to(dev),
        x_val=((x_val - mean) / std).contiguous(),
        y_val=torch.as_tensor(yv, dtype=torch.int64).to(dev),
        num_classes=num_classes,
        input_shape=tuple(shape),
        source=source,
    )


@functools.lru_cache(maxsize=1)
def _cached(dataset_json: str, device: str, data_dir: str | None, code_dir: str | None) -> Dataset:
    with one_thread():  # normalization statistics summed in one order, whatever the threads
        ds = load_dataset(DatasetConfig.model_validate_json(dataset_json), device, data_dir)
    return check_finite(ds)  # NaN/inf inputs refused


def load_dataset_cached(
    cfg: DatasetConfig, device: torch.device | str = "cpu", data_dir: str | None = None
) -> Dataset:
    """`load_dataset`, kept for the next call in this process (one data set at a time): the
    members of a pack, the next trial of a grid on a reused Ray worker, and a retried trial
    in the same process do not load (or call the user's loader) again. Callers must not
    modify the returned tensors."""
    return _cached(cfg.model_dump_json(), str(torch.device(device)), data_dir, user.code_dir())
