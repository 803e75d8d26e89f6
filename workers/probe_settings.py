"""Settings of the sharpness probes of workers/probes/curvature.py: the grid's
`measure.batch_sharpness` and `measure.adaptive_sharpness` (workers/config.py MeasureConfig,
docs/grid.md). Pure pydantic, no torch (workers/config.py imports it), in the style of
workers/config.py's `measure:` sections (strict, unknown keys refused, frozen)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BatchSharpnessConfig(_Settings):
    """`probe = batch_sharpness`: E_B[g_B' H_B g_B / |g_B|^2] (Andreyev & Beneventano)."""

    # Mini-batch size; None = the trial's training batch size (what the definition asks).
    batch_size: PositiveInt | None = None
    n_batches: PositiveInt = 16
    # Examples of the training set the batches are drawn from (a seeded fixed subset).
    n_examples: PositiveInt = 4096


class AdaptiveSharpnessConfig(_Settings):
    """`probe = adaptive_sharpness_{worst_linf,worst_l2,average}`, one row per rho (Kwon et
    al. 2021; Andriushchenko et al. 2023). An empty rho list turns that measure off."""

    worst_linf_rho: list[PositiveFloat] = Field(default_factory=lambda: [0.001, 0.005, 0.01])
    worst_l2_rho: list[PositiveFloat] = Field(default_factory=lambda: [0.1, 0.5, 1.0])
    average_rho: list[PositiveFloat] = Field(default_factory=lambda: [0.01, 0.05, 0.1])
    n_iter: Annotated[int, Field(ge=1, le=1000)] = 20
    n_samples: Annotated[int, Field(ge=1, le=1000)] = 8
    eta: NonNegativeFloat = 0.0
    n_examples: PositiveInt = 1024
