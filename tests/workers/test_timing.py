"""The timing probe (workers/timing.py) on CPU."""

from __future__ import annotations

import json

import torch

from workers.config import TrialConfig
from workers.timing import time_steps, timing_id


def _cfg(b: int) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "dataset": {"name": "mnist1d"},
            "model": {"name": "mlp", "hidden": [64]},
            "batch_size": b,
            "lr": 0.1,
            "seed": 0,
        }
    )


def test_timing_probe_numbers_and_provenance(data_cache):
    threads = torch.get_num_threads()
    small = time_steps(_cfg(16), warmup=2, steps=10, repeats=3, threads=1)
    big = time_steps(_cfg(512), warmup=2, steps=10, repeats=3, threads=1)
    assert torch.get_num_threads() == threads  # put back
    for r in (small, big):
        assert r["s_per_step"] > 0 and r["s_per_step_iqr"] >= 0
        assert len(json.loads(r["s_per_step_all"])) == 3
        assert r["torch_threads"] == 1 and r["cpu_count"] >= 1
        assert len(json.loads(r["load_before"])) == 3 and r["load1_after"] >= 0
        for k in ("host", "device", "device_name", "torch_version"):
            assert r[k], k
        assert r["device"] == "cpu"
    # 32x the examples per step: not faster per step by an absurd factor (a shared, loaded
    # 2-core box: generous), and per example far cheaper than the small batch
    assert big["s_per_step"] > small["s_per_step"] / 5
    assert big["s_per_step"] / 512 < small["s_per_step"] / 16
    assert small["timing_id"] == timing_id(_cfg(16), "cpu", 1) != big["timing_id"]
    assert timing_id(_cfg(16), "cpu", 2) != small["timing_id"]
    # the lr and the seed do not change a step's cost: same key
    assert timing_id(_cfg(16).model_copy(update={"lr": 0.5}), "cpu", 1) == small["timing_id"]
