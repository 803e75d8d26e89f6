"""Row lists in resume checkpoints, stored as columns.

A trial's state (`st` of workers/train.py, workers/pack.py, workers/trial_api.py) holds the
rows it has measured so far; the per-step rows grow to thousands of dicts and the state is
saved at every epoch end. `torch.save` pickles every value of every dict and calls its
`persistent_id` hook once per object, so saving cost grows with the rows so far: quadratic
in epochs (a pack of 8 at batch size 16 spent 1.4 s of its 6 s in 88 saves, 1.2 million
hook calls). `compact_rows` stores each list of uniform dicts as one column per key (a
tensor when every value is an int, or every value a float: both exact), `expand_rows` gives
the same dicts back (the same keys in the same order, the same Python types and values,
NaN included). Both stay loadable with `torch.load(weights_only=True)` (dicts, lists,
strings, tensors only). A state saved before this change (plain lists) loads as it is.
"""

from __future__ import annotations

from typing import Any

import torch

ROW_LISTS = ("steps", "layers", "epochs", "metrics")
_MARK = "__batchlab_columns__"


def _column(values: list[Any]) -> Any:
    kinds = {type(v) for v in values}
    if kinds == {int} and all(-(2**63) <= v < 2**63 for v in values):
        return torch.tensor(values, dtype=torch.int64)
    if kinds == {float}:
        return torch.tensor(values, dtype=torch.float64)
    return list(values)


def _compact(rows: list[Any]) -> Any:
    if len(rows) < 2 or not all(type(r) is dict for r in rows):
        return rows
    keys = list(rows[0])
    if any(list(r) != keys for r in rows) or not all(type(k) is str for k in keys):
        return rows  # not uniform: kept as it is (still correct, just slower to save)
    return {
        _MARK: 1,
        "n": len(rows),
        "keys": keys,
        "columns": [_column([r[k] for r in rows]) for k in keys],
    }


def _expand(value: Any) -> Any:
    if not (isinstance(value, dict) and value.get(_MARK) == 1):
        return value
    cols = [c.tolist() if isinstance(c, torch.Tensor) else list(c) for c in value["columns"]]
    if any(len(c) != value["n"] for c in cols):
        raise ValueError("resume state: a stored row column has the wrong length")
    return [dict(zip(value["keys"], vals, strict=True)) for vals in zip(*cols, strict=True)]


def compact_rows(st: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of the trial state `st` with its row lists as columns."""
    return {k: _compact(v) if k in ROW_LISTS and isinstance(v, list) else v for k, v in st.items()}


def expand_rows(saved: dict[str, Any]) -> dict[str, Any]:
    """The trial state as `compact_rows` was given it (plain lists pass through)."""
    return {k: _expand(v) if k in ROW_LISTS else v for k, v in saved.items()}
