"""The trial's loss: one object used by training, evaluation and every probe.

`loss:` in grid.yaml is a built-in name or an import path (workers/user.py):

- `cross_entropy`: `F.cross_entropy(outputs, targets)`; targets are class ids (int64) or
  class probabilities; accuracy = argmax agreement.
- `bce`: `F.binary_cross_entropy_with_logits`; targets are 0/1 (or probabilities) of the
  outputs' shape (a (N,) target for (N, 1) outputs is reshaped); accuracy = the fraction of
  outputs on the right side of 0, averaged over outputs.
- `mse`: `F.mse_loss`; float targets of the outputs' shape (regression: no accuracy, NaN),
  or class ids, then against their one-hot encoding with argmax accuracy.
- `"package.module:function"`: `fn(outputs, targets, **loss_kwargs)` returning the batch
  *mean* loss as a scalar tensor (the probes assemble full-set losses as size-weighted means
  of chunk means). Accuracy: argmax agreement when outputs are (N, C) and targets int64 (N,),
  else NaN.

`loss_kwargs` are passed to the function (e.g. `label_smoothing: 0.1` for cross_entropy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.config import LOSSES

LossFn = Callable[[Tensor, Tensor], Tensor]


def _match(out: Tensor, y: Tensor) -> Tensor:
    """Targets in the outputs' shape and dtype (a (N,) target for (N, 1) outputs)."""
    if y.shape != out.shape and y.numel() == out.numel():
        y = y.reshape(out.shape)
    return y.to(out.dtype)


def _is_class_ids(out: Tensor, y: Tensor) -> bool:
    return out.dim() == 2 and y.dim() == 1 and not torch.is_floating_point(y)


def _argmax_correct(out: Tensor, y: Tensor) -> Tensor:
    if y.dim() == out.dim() and torch.is_floating_point(y):  # soft labels
        y = y.argmax(-1)
    return (out.argmax(-1) == y).sum()


@dataclass(frozen=True)
class Loss:
    """The loss of a trial: `fn(outputs, targets)` -> the batch-mean loss (a scalar
    tensor); `correct(outputs, targets)` -> the number of correct examples (a tensor), or
    None when accuracy is not defined for this loss and these targets."""

    name: str
    fn: LossFn
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        return self.fn(out, y)

    def correct(self, out: Tensor, y: Tensor) -> Tensor | None:
        if self.name == "bce":
            t = _match(out, y)
            agree = ((out > 0) == (t > 0.5)).float()
            return agree.reshape(out.shape[0], -1).mean(1).sum()
        if self.name == "mse" and not _is_class_ids(out, y):
            return None
        if self.name == "cross_entropy" or _is_class_ids(out, y):
            return _argmax_correct(out, y)
        return None

    def accuracy(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean accuracy over the batch (float64), NaN when the loss defines none."""
        c = self.correct(out, y)
        if c is None:
            return torch.full((), float("nan"), dtype=torch.float64, device=out.device)
        return c.to(torch.float64) / out.shape[0]

    @property
    def builtin(self) -> bool:
        return self.name in LOSSES

    @property
    def is_default(self) -> bool:
        """Plain cross-entropy: every measurement's own default."""
        return self.name == "cross_entropy" and not self.kwargs


def _cross_entropy(out: Tensor, y: Tensor, **kw: Any) -> Tensor:
    return F.cross_entropy(out, y, **kw)


def _bce(out: Tensor, y: Tensor, **kw: Any) -> Tensor:
    return F.binary_cross_entropy_with_logits(out, _match(out, y), **kw)


def _mse(out: Tensor, y: Tensor, **kw: Any) -> Tensor:
    if _is_class_ids(out, y):
        return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype), **kw)
    return F.mse_loss(out, _match(out, y), **kw)


_BUILTIN: dict[str, Callable[..., Tensor]] = {
    "cross_entropy": _cross_entropy,
    "bce": _bce,
    "mse": _mse,
}


def _freeze(kwargs: dict[str, Any]) -> tuple:
    import orjson

    return (orjson.dumps(kwargs, option=orjson.OPT_SORT_KEYS),)


@functools.lru_cache(maxsize=32)
def _get(name: str, kwargs_json: bytes) -> Loss:
    import orjson

    kwargs = orjson.loads(kwargs_json)
    if name in _BUILTIN:
        base = _BUILTIN[name]
    else:
        from workers.user import resolve

        base = resolve(name, "loss")
    fn = functools.partial(base, **kwargs)
    fn.__name__ = name  # type: ignore[attr-defined]  # the probes' settings_json name it
    return Loss(name=name, fn=fn, kwargs=kwargs)


def get_loss(name: str = "cross_entropy", kwargs: dict[str, Any] | None = None) -> Loss:
    """The Loss named by a trial's `loss` / `loss_kwargs` (cached per process)."""
    return _get(name, _freeze(kwargs or {})[0])


def loss_of(cfg: Any) -> Loss:
    """The Loss of a TrialConfig."""
    return get_loss(cfg.loss, cfg.loss_kwargs)


CROSS_ENTROPY = get_loss("cross_entropy")
