"""The `Dataset` record every loader returns, and where data sets are cached on this machine.

The bottom of the data modules: `workers.data` (the built-ins, normalization, the
per-process cache), `workers.downloads` (the official files), `workers.user_data` (the
user's loader) and `workers.data_checks` all import from here, and this module imports none
of them, so the data modules form no circle (issue 25).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # float32, normalized, shape (N, *input_shape)
    y_train: torch.Tensor  # int64 class ids
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    # Where the data came from (files and their checksums, generator arguments).
    source: dict = field(default_factory=dict)
    # A user data set too large for the device (torch.utils.data.Dataset objects): batches
    # come from a DataLoader; x_train/y_train and x_val/y_val then hold a fixed seeded
    # subset (on the device) for the full-set evaluations and probes (docs/custom.md).
    train_set: Any = None
    val_set: Any = None

    @property
    def streaming(self) -> bool:
        return self.train_set is not None

    @property
    def n_train(self) -> int:
        return len(self.train_set) if self.streaming else int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        return len(self.val_set) if self.streaming else int(self.x_val.shape[0])


def cache_dir() -> Path:
    """Where generated or downloaded data sets are kept ($BATCHLAB_DATA_CACHE)."""
    return Path(os.environ.get("BATCHLAB_DATA_CACHE", Path.home() / ".cache" / "batchlab" / "data"))
