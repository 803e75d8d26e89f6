"""The grid's axes (`grid:` in grid.yaml): which exist, their values' checks, their
defaults (a one-value axis of TrialConfig's own default), and where each lands in a
TrialConfig (`AXIS_PATHS`). Imported by scheduler/spec.py (the grid spec) and
scheduler/analyses.py (selections by axis), so neither imports the other for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from workers.config import TrialConfig


def trial_default(name: str) -> Any:
    """TrialConfig's default of the field `name` (the one place defaults are written)."""
    return TrialConfig.model_fields[name].get_default(call_default_factory=True)


class Strict(BaseModel):
    # strict: no coercion ("32" is not an int, true is not 1, "yes" is not a bool).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def nonempty_unique(v: list) -> list:
    if len(v) == 0:
        raise ValueError("an axis needs at least one value")
    if len({repr(x) for x in v}) != len(v):
        raise ValueError(f"values must be unique, got {v}")
    return v


class GridAxes(Strict):
    """The axes of the grid: each a non-empty list; trials are their cartesian product."""

    batch_size: list[PositiveInt] = Field(default_factory=lambda: [trial_default("batch_size")])
    lr: list[PositiveFloat] = Field(default_factory=lambda: [trial_default("lr")])
    lr_scaling: list[Literal["none", "linear", "sqrt"]] = Field(
        default_factory=lambda: [trial_default("lr_scaling")]
    )
    warmup_epochs: list[NonNegativeFloat] = Field(
        default_factory=lambda: [trial_default("warmup_epochs")]
    )
    # Non-negative and 32-bit: larger seeds overflow torch's generator seeding at run time.
    seed: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(
        default_factory=lambda: [trial_default("seed")]
    )
    momentum: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = None
    weight_decay: list[NonNegativeFloat] | None = None
    batchnorm: list[bool] | None = None
    grad_clip_norm: list[PositiveFloat] | None = None
    n_train: list[PositiveInt] | None = None
    data_parallel_workers: list[PositiveInt] | None = None
    loss: list[str] | None = None
    # Axes over the user's own settings, by dotted key: `model.kwargs.<name>`,
    # `dataset.kwargs.<name>`, `loss_kwargs.<name>` and `params.<name>` (docs/custom.md).
    user_axes: dict[str, list[Any]] = Field(default_factory=dict)

    _check = field_validator("*")(
        lambda v: v if v is None or isinstance(v, dict) else nonempty_unique(v)
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_user_axes(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        v = dict(v)
        given = v.get("user_axes")
        if given is not None and not isinstance(given, Mapping):
            return v  # not a mapping: pydantic's error names grid.user_axes
        user = dict(v.pop("user_axes", None) or {})
        for key in [k for k in v if isinstance(k, str) and "." in k]:
            user[key] = v.pop(key)
        if user:
            v["user_axes"] = user
        return v

    @field_validator("user_axes")
    @classmethod
    def _user_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            prefix, _, name = key.rpartition(".")
            if prefix not in USER_AXIS_PREFIXES or not name.isidentifier():
                raise ValueError(
                    f"grid.{key}: unknown axis; user settings are axes named "
                    + ", ".join(f"{p}.<name>" for p in USER_AXIS_PREFIXES)
                )
            if not isinstance(values, list):
                raise ValueError(f"grid.{key}: an axis is a list of values, got {values!r}")
            nonempty_unique(values)
        return v

    @field_validator("lr")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        for x in v:
            if not math.isfinite(x):
                raise ValueError(f"lr must be finite, got {x}")
        return v


USER_AXIS_PREFIXES = ("model.kwargs", "dataset.kwargs", "loss_kwargs", "params")

# Where each axis lands in a TrialConfig (dotted path).
AXIS_PATHS = {
    "batch_size": "batch_size",
    "lr": "lr",
    "lr_scaling": "lr_scaling",
    "warmup_epochs": "warmup_epochs",
    "seed": "seed",
    "momentum": "optimizer.momentum",
    "weight_decay": "optimizer.weight_decay",
    "batchnorm": "model.batchnorm",
    "grad_clip_norm": "grad_clip_norm",
    "n_train": "dataset.n_train",
    "data_parallel_workers": "data_parallel_workers",
    "loss": "loss",
}
