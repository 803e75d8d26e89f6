"""What a finished trial hands to the scheduler, which writes it through the warehouse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialResult:
    """Everything a trial produced; the scheduler hands it to the warehouse to write."""

    trial_id: str
    config_hash: str
    status: str  # "completed" | "diverged" | "failed"
    # "max_epochs" | "max_steps" | "max_examples" | "max_time" | "early_stopping" |
    # "target_reached" | "train_target_reached" | "diverged" | "error" (workers/budget.py)
    stop_reason: str
    summary: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    # Extra metrics of a user's training loop (long format: epoch, step, name, value).
    metrics: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
