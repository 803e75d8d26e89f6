"""Checks of a loaded data set that no trial should train past, and a load that does not
depend on the process's threads (issue 24).

A NaN or inf in the inputs (or in float targets) makes every trial on that data end as
`diverged`: a finding about the lr, when the input is what is wrong. `check_finite` refuses
such a data set when it is loaded (once per process: `workers.data.load_dataset_cached`),
with an error naming `dataset`, the tensor, how many values and the first example; the
trial is recorded `failed` with that message (the preflight reports it before the run).

Of a streamed data set (torch Datasets through a DataLoader) only the seeded subset held
on the device for evaluations is checked, not every batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from workers import torch_state
from workers.dataset import Dataset


class BadDataError(ValueError):
    """The loaded data cannot be trained on; the message names the dataset and tensor."""


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Load a data set on one torch thread: the normalization statistics of a flat data set
    (mnist1d: one mean and std over 160,000 values) are CPU reductions whose summation order
    follows the thread count, so its inputs differed in their last bits between a process on
    1 thread and one on 2, and every trial's numbers with them."""
    with torch_state.isolated(num_threads=1):
        yield


def _where(ds: Dataset) -> str:
    src = ds.source or {}
    if src.get("loader"):
        return f"dataset.loader {src['loader']!r}"
    return f"dataset {ds.name!r}"


def non_finite(t: torch.Tensor) -> tuple[int, int] | None:
    """(number of non-finite values, index of the first example holding one), or None."""
    if not torch.is_floating_point(t) or t.numel() == 0:
        return None
    bad = ~torch.isfinite(t)
    per_example = bad.reshape(t.shape[0], -1).any(1) if t.dim() > 0 else bad.reshape(1)
    count = int(bad.sum())
    if count == 0:
        return None
    return count, int(per_example.nonzero()[0, 0])


def check_finite(ds: Dataset) -> Dataset:
    """`ds` itself when every input (and float target) is finite; else BadDataError."""
    for name in ("x_train", "x_val", "y_train", "y_val"):
        t = getattr(ds, name)
        if (found := non_finite(t)) is None:
            continue
        count, first = found
        raise BadDataError(
            f"{_where(ds)}: {name} holds {count:,} non-finite values (NaN or inf), the first in "
            f"example {first:,} of {t.shape[0]:,}; clean or drop them where the data is made "
            "(training on them would end every trial as diverged, which says nothing about "
            "the lr)"
        )
    return ds
