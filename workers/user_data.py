"""The user's data set (`dataset.loader`): call it, check what it returned, put it on the device.

The loader is called with `dataset.kwargs`, plus any of `seed` (= dataset.split_seed),
`data_dir` and `device` it accepts by name. It returns one of:

- `(x_train, y_train, x_val, y_val)`: tensors or NumPy arrays (the fast path: everything on
  the device, batches are slices of a device-side permutation, as for the built-ins);
- `(x, y)`: one split, held out for validation by `dataset.val_fraction` (seeded by
  `dataset.split_seed`);
- `(train_set, val_set)`: two `torch.utils.data.Dataset`s of `(x, y)` pairs, for data that
  does not fit on the device: batches then come from a DataLoader (worker processes, pinned
  memory on CUDA), in the same seeded order; the per-epoch full-set evaluations of the
  training split and the probes run on a fixed seeded subset of SUBSET examples;
- a dict with keys `x_train, y_train, x_val, y_val` or `train, val`, and optionally
  `num_classes` and `input_shape`.

Data is used as returned (no normalization: that is the loader's business). `n_train` takes
a seeded subset as for the built-ins. Every contract break is a UserCodeError naming
`dataset.loader`, the value and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workers.config import DatasetConfig
from workers.dataset import Dataset
from workers.user import UserCodeError, call_with, resolve

SUBSET = 10_000  # examples of a streamed training set kept on the device for evaluations


def _tensor(v: Any, what: str, path: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise UserCodeError(
        f"dataset.loader: {path!r} returned {what} of type {type(v).__name__}; expected a "
        "torch.Tensor or a NumPy array"
    )


def _is_torch_dataset(v: Any) -> bool:
    return isinstance(v, torch.utils.data.Dataset) or (
        hasattr(v, "__getitem__")
        and hasattr(v, "__len__")
        and not isinstance(v, torch.Tensor | np.ndarray | list | tuple)
    )


def _split(x: torch.Tensor, y: torch.Tensor, frac: float, seed: int):
    idx = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)))
    n_val = max(1, round(len(x) * frac))
    return x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]]


def _unpack(out: Any, path: str) -> tuple[list[Any], dict[str, Any]]:
    """(parts, extras): 2 or 4 parts, extras num_classes / input_shape from a dict."""
    extras: dict[str, Any] = {}
    if isinstance(out, dict):
        extras = {k: out[k] for k in ("num_classes", "input_shape") if k in out}
        if all(k in out for k in ("x_train", "y_train", "x_val", "y_val")):
            return [out["x_train"], out["y_train"], out["x_val"], out["y_val"]], extras
        if "train" in out and "val" in out:
            return [out["train"], out["val"]], extras
        raise UserCodeError(
            f"dataset.loader: {path!r} returned a dict with keys {sorted(out)}; expected "
            "x_train, y_train, x_val, y_val (or train, val), optionally num_classes, input_shape"
        )
    if isinstance(out, list | tuple) and len(out) in (2, 4):
        return list(out), extras
    shown = f"a {type(out).__name__}" + (
        f" of length {len(out)}" if isinstance(out, list | tuple) else ""
    )
    raise UserCodeError(
        f"dataset.loader: {path!r} returned {shown}; expected (x_train, y_train, x_val, y_val), "
        "(x, y), (train_dataset, val_dataset) or a dict (docs/custom.md)"
    )


# Without `num_classes` from the loader, more classes than this is a typo in a label, not a
# data set: the model would silently get one output per number up to the largest label.
MAX_INFERRED_CLASSES = 100_000


def _num_classes(
    y: torch.Tensor, y2: torch.Tensor, given: Any, path: str
) -> tuple[int, str | None]:
    """(num_classes, a warning or None): as given, else the largest label + 1."""
    if given is not None:
        if not isinstance(given, int) or isinstance(given, bool) or given < 1:
            raise UserCodeError(
                f"dataset.loader: {path!r} returned num_classes={given!r}; expected a positive int"
            )
        return given, None
    if torch.is_floating_point(y):
        return (int(y.shape[1]) if y.dim() == 2 else 1), None
    if not len(y):
        return 1, None
    n = max(int(y.max()), int(y2.max()) if len(y2) else 0) + 1
    distinct = int(torch.unique(torch.cat([y.flatten(), y2.flatten()])).numel())
    if n > MAX_INFERRED_CLASSES:
        raise UserCodeError(
            f"dataset.loader: {path!r}: the largest label is {n - 1:,}, so num_classes would be "
            f"{n:,} (the largest label + 1) for {distinct:,} distinct labels: a typo in a label? "
            f"Allowed: labels below {MAX_INFERRED_CLASSES:,}, or return a dict with num_classes "
            "to have more classes (docs/custom.md)"
        )
    if n - distinct >= 100 and n > 2 * distinct:
        return n, (
            f"dataset.loader: {path!r}: num_classes is inferred as {n:,} (the largest label + 1) "
            f"but the labels take {distinct:,} distinct values, so the model gets {n - distinct:,} "
            "classes no example has: a typo in a label? (return num_classes in a dict to say "
            "it is meant)"
        )
    return n, None


def check_tensors(
    x: torch.Tensor,
    y: torch.Tensor,
    xv: torch.Tensor,
    yv: torch.Tensor,
    num_classes: int,
    path: str,
) -> None:
    """The contract of a tensor data set (raises UserCodeError)."""
    for name, a, b in (("train", x, y), ("val", xv, yv)):
        if a.dim() < 1 or b.dim() < 1 or a.shape[0] != b.shape[0]:
            raise UserCodeError(
                f"dataset.loader: {path!r}: x_{name} has shape {tuple(a.shape)} but y_{name} "
                f"{tuple(b.shape)}; expected the same number of examples (first dimension)"
            )
        if a.shape[0] == 0:
            raise UserCodeError(f"dataset.loader: {path!r}: the {name} split is empty")
        if not torch.is_floating_point(a):
            raise UserCodeError(
                f"dataset.loader: {path!r}: x_{name} has dtype {a.dtype}; expected a floating "
                "point tensor (convert and normalize in the loader)"
            )
        if b.dtype == torch.bool or b.is_complex():
            raise UserCodeError(
                f"dataset.loader: {path!r}: y_{name} has dtype {b.dtype}; expected int64 class "
                "ids or float targets"
            )
        if not torch.is_floating_point(b):
            lo, hi = int(b.min()), int(b.max())
            if lo < 0 or hi >= num_classes:
                raise UserCodeError(
                    f"dataset.loader: {path!r}: y_{name} holds labels in [{lo}, {hi}], outside "
                    f"[0, {num_classes}) (num_classes={num_classes})"
                )
    if x.shape[1:] != xv.shape[1:]:
        raise UserCodeError(
            f"dataset.loader: {path!r}: x_train examples have shape {tuple(x.shape[1:])} but "
            f"x_val {tuple(xv.shape[1:])}; expected the same"
        )


def _stack(ds: Any, idx: np.ndarray, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in idx.tolist():
        item = ds[i]
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise UserCodeError(
                f"dataset.loader: {path!r}: dataset item {i} is a {type(item).__name__}; "
                "expected an (x, y) pair"
            )
        xs.append(_tensor(item[0], "an x", path))
        ys.append(torch.as_tensor(item[1]))
    return torch.stack(xs), torch.stack(ys)


def load_user_dataset(
    cfg: DatasetConfig, device: torch.device | str = "cpu", data_dir: str | None = None
) -> Dataset:
    """Call `cfg.loader` and return its data as a Dataset on `device`."""
    path = cfg.loader
    assert path is not None
    fn = resolve(path, "dataset.loader")
    offered = {"seed": cfg.split_seed, "data_dir": data_dir, "device": str(device)}
    out = call_with(fn, dict(cfg.kwargs), offered)
    parts, extras = _unpack(out, path)
    dev = torch.device(device)
    source = {"loader": path, "kwargs": cfg.kwargs}
    if len(parts) == 2 and all(_is_torch_dataset(p) for p in parts):
        return _streaming(cfg, parts[0], parts[1], extras, dev, source)
    if len(parts) == 2:
        x, y = _tensor(parts[0], "x", path), _tensor(parts[1], "y", path)
        if x.shape[:1] != y.shape[:1]:
            raise UserCodeError(
                f"dataset.loader: {path!r}: x has shape {tuple(x.shape)} but y {tuple(y.shape)}; "
                "expected the same number of examples"
            )
        x, y, xv, yv = _split(x, y, cfg.val_fraction, cfg.split_seed)
    else:
        x, y, xv, yv = (
            _tensor(v, n, path)
            for v, n in zip(parts, ("x_train", "y_train", "x_val", "y_val"), strict=True)
        )
    if not torch.is_floating_point(y):
        y, yv = y.long(), yv.long()
    num_classes, warning = _num_classes(y, yv, extras.get("num_classes"), path)
    check_tensors(x, y, xv, yv, num_classes, path)
    if warning:
        source["warning"] = warning  # said by the preflight
    if cfg.n_train is not None:
        if cfg.n_train > len(x):
            raise UserCodeError(
                f"dataset.n_train: {cfg.n_train} exceeds the {len(x)} training examples "
                f"returned by {path!r}"
            )
        idx = np.sort(np.random.default_rng(cfg.split_seed).permutation(len(x))[: cfg.n_train])
        x, y = x[torch.as_tensor(idx)], y[torch.as_tensor(idx)]
    shape = tuple(extras.get("input_shape") or x.shape[1:])
    return Dataset(
        name=cfg.name,
        x_train=x.to(dev).contiguous(),
        y_train=y.to(dev),
        x_val=xv.to(dev).contiguous(),
        y_val=yv.to(dev),
        num_classes=num_classes,
        input_shape=shape,
        source={**source, "n_train": len(x), "n_val": len(xv)},
    )


def _streaming(
    cfg: DatasetConfig, train: Any, val: Any, extras: dict, dev: torch.device, source: dict
) -> Dataset:
    path = cfg.loader
    n = len(train)
    if n == 0 or len(val) == 0:
        raise UserCodeError(f"dataset.loader: {path!r}: a returned Dataset is empty")
    if cfg.n_train is not None:
        if cfg.n_train > n:
            raise UserCodeError(
                f"dataset.n_train: {cfg.n_train} exceeds the {n} training examples returned by {path!r}"
            )
        keep = np.sort(np.random.default_rng(cfg.split_seed).permutation(n)[: cfg.n_train])
        train = torch.utils.data.Subset(train, keep.tolist())
        n = len(train)
    rng = np.random.default_rng(cfg.split_seed + 1)
    sub = np.sort(rng.permutation(n)[: min(n, SUBSET)])
    xs, ys = _stack(train, sub, path)
    vsub = np.sort(rng.permutation(len(val))[: min(len(val), SUBSET)])
    xvs, yvs = _stack(val, vsub, path)
    if not torch.is_floating_point(ys):
        ys, yvs = ys.long(), yvs.long()
    num_classes, warning = _num_classes(ys, yvs, extras.get("num_classes"), path)
    check_tensors(xs, ys, xvs, yvs, num_classes, path)
    if warning:
        source = {**source, "warning": warning}  # said by the preflight
    return Dataset(
        name=cfg.name,
        x_train=xs.to(dev),
        y_train=ys.to(dev),
        x_val=xvs.to(dev),
        y_val=yvs.to(dev),
        num_classes=num_classes,
        input_shape=tuple(extras.get("input_shape") or xs.shape[1:]),
        source={
            **source,
            "n_train": n,
            "n_val": len(val),
            "streaming": True,
            "train_eval_subset": len(sub),
        },
        train_set=train,
        val_set=val,
    )
