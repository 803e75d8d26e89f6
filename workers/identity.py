"""A trial's identity: which keys of its dumped TrialConfig count, and its hash (pure Python).

`TrialConfig.config_hash` (workers/config.py) is `config_hash_of(model_dump(mode="json"))`
and its trial id the first 16 hex digits. The identity dump leaves out the execution-only
settings and the keys added after identities were first stored while they hold their
defaults, so every stored trial keeps its id (tests/scheduler/test_ids_unchanged.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Keys added after trial identities were first stored: left out of the hash while they hold
# their default, so every trial of an older grid keeps its id (and is skipped on a re-run).
# (dotted path, default)
LATER_KEYS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("dataset", "loader"), None),
    (("dataset", "kwargs"), {}),
    (("model", "factory"), None),
    (("model", "kwargs"), {}),
    (("loss",), "cross_entropy"),
    (("loss_kwargs",), {}),
    (("trainable",), None),
    (("params",), {}),
    (("stop",), None),
    (("until",), None),
    (("measure", "at"), ["final"]),
    (("measure", "sharpness", "restarts"), 0),
    (("measure", "batch_sharpness"), None),
    (("measure", "adaptive_sharpness"), None),
    (("performance", "tf32"), None),
    (("performance",), {}),  # after the execution keys below are dropped: {} at defaults
)

# Settings that change how a trial is executed, not the arithmetic it computes: never part
# of its identity (docs/grid.md, `performance`). torch.compile, channels_last, CUDA graphs and
# cuDNN autotuning run the same fp32 maths; they may round differently at the last bit, as a
# different GPU or cuDNN version does (neither is part of identity either). TF32 is not here:
# it computes matmuls/convolutions from 10-bit mantissas, a different experiment.
EXECUTION_KEYS: tuple[tuple[str, ...], ...] = (
    ("performance", "compile"),
    ("performance", "channels_last"),
    ("performance", "cuda_graphs"),
    ("performance", "cudnn_benchmark"),
)


def identity_dump(dumped: dict[str, Any]) -> dict[str, Any]:
    """The dumped TrialConfig without the execution-only keys and the later keys that hold
    their defaults (a copy)."""
    out = dict(dumped)
    perf = out.get("performance")
    if isinstance(perf, dict):
        out["performance"] = {
            k: v for k, v in perf.items() if ("performance", k) not in EXECUTION_KEYS
        }
    for path, default in LATER_KEYS:
        parent: dict[str, Any] | None = out
        for part in path[:-1]:
            sub = parent.get(part) if parent is not None else None
            if not isinstance(sub, dict):
                parent = None
                break
            sub = dict(sub)
            parent[part] = sub
            parent = sub
        if parent is not None and path[-1] in parent and parent[path[-1]] == default:
            del parent[path[-1]]
    return out


def config_hash_of(dumped: dict[str, Any]) -> str:
    """sha256 of the key-sorted compact JSON of a dumped TrialConfig (its identity dump)."""
    return hashlib.sha256(
        orjson.dumps(identity_dump(dumped), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
