"""What a trial measures besides its losses: the `measure:` section of a grid and its probe
sub-sections (pure pydantic; re-exported by workers/config.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from workers.config_base import StrictConfig
from workers.probe_settings import AdaptiveSharpnessConfig, BatchSharpnessConfig


class SharpnessConfig(StrictConfig):
    eps: list[PositiveFloat] = Field(default_factory=lambda: [1e-3, 5e-4])
    # "lbfgsb": SciPy L-BFGS-B, as Keskar et al.; "pga": projected gradient ascent on the
    # device; "both": each of them, the larger value kept (workers/probes/sharpness.py).
    solver: Literal["lbfgsb", "pga", "both"] = "lbfgsb"
    # Extra runs of each solver from seeded uniform points of the box; the largest value of
    # all runs is kept (each run is a lower bound of the box maximum). 0 = from y = 0 only.
    restarts: Annotated[int, Field(ge=0, le=100)] = 0
    max_iter: PositiveInt = 10
    # None = full space (A = I); an int p = random Gaussian subspace of that dimension.
    subspace_dim: PositiveInt | None = None
    # Examples of the training set the loss f is evaluated on (a seeded fixed subset).
    n_examples: PositiveInt = 2048


class HessianConfig(StrictConfig):
    max_iter: PositiveInt = 100
    tol: PositiveFloat = 1e-3
    n_examples: PositiveInt = 2048


class NoiseScaleConfig(StrictConfig):
    b_small: PositiveInt = 32
    b_big: PositiveInt = 1024
    n_batches: PositiveInt = 20
    # Also compute the exact per-example value when the model is small enough (params).
    exact_max_params: Annotated[int, Field(ge=0)] = 200_000
    exact_n_examples: PositiveInt = 2048


class MeasureConfig(StrictConfig):
    # Per-step update norms ||theta_{t+1} - theta_t|| and gradient norms (F-9).
    update_norms: bool = True
    # Keep every step's row in the `steps` table (else per-epoch quantiles only).
    store_steps: bool = True
    # Per-layer distance from init at every epoch end (F-7, F-16).
    layers: bool = True
    # Full training set loss/accuracy in eval mode at every epoch end (F-26).
    train_eval: bool = True
    sharpness: SharpnessConfig | None = None
    hessian: HessianConfig | None = None
    noise_scale: NoiseScaleConfig | None = None
    # Andreyev & Beneventano's batch sharpness; Kwon et al.'s adaptive sharpness, per rho
    # (workers/probe_settings.py; docs/science.md).
    batch_sharpness: BatchSharpnessConfig | None = None
    adaptive_sharpness: AdaptiveSharpnessConfig | None = None
    # Also run the enabled probes every N epochs during training (None = at the end only).
    probe_every_epochs: PositiveInt | None = None
    # Save initial and final weights (needed by the landscape analyses).
    checkpoints: bool = True
    # Where the end-of-training probes measure: "final" (the last weights) and/or "best"
    # (the weights of the best validation loss, kept in memory while training). Probe rows
    # carry the point in their `at` column.
    at: list[Literal["final", "best"]] = Field(default_factory=lambda: ["final"])

    @field_validator("at")
    @classmethod
    def _at(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("a non-empty list of distinct points: 'final', 'best'")
        return v

    @property
    def probes_on(self) -> bool:
        """Whether any probe (`run_probes`) is enabled."""
        probes = (self.sharpness, self.hessian, self.noise_scale, self.batch_sharpness)
        return any(p is not None for p in (*probes, self.adaptive_sharpness))
