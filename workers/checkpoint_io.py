"""Checkpoint I/O with torch: a trial's states as `torch.save` bytes in the warehouse's
checkpoint files (`warehouse.store.CheckpointFiles`, bytes and paths only).

`TrialCheckpoints` is the `workers.train.CheckpointIO` the scheduler hands to a trial:
states written atomically, read back with `weights_only=True` (no pickle code execution),
on the CPU. torch is imported when a state is saved or loaded, so the scheduler can build
one without importing torch.
"""

from __future__ import annotations

import io
from typing import Any

from warehouse.store import CheckpointFiles


class TrialCheckpoints(CheckpointFiles):
    """`workers.train.CheckpointIO` over the storage root: torch.save bytes written
    atomically, read back with `weights_only=True` (no pickle code execution)."""

    def save(self, name: str, state: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.put_bytes(name, buf.getvalue())

    def load(self, name: str) -> dict[str, Any] | None:
        import torch

        data = self.get_bytes(name)
        if data is None:
            return None
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:
            raise ValueError(
                f"checkpoint {self.path(name)} is corrupt or not a plain tensor file ({exc}); "
                "delete it to start the trial from scratch"
            ) from exc
