"""CI smoke run of benchmarks/grid_throughput.py: the tiny CPU preset completes end to end
(baseline + batchlab through the scheduler) and writes its JSON. Asserts completion and the
shape of the result, never a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_grid_throughput_writes_its_json(tmp_path, data_cache):
    out = tmp_path / "grid.json"
    # A subprocess, as CI and users run it: the benchmark starts (and stops) its own Ray
    # instance, which must not disturb the test session's. One Ray CPU, one batch size.
    cmd = [sys.executable, str(REPO / "benchmarks" / "grid_throughput.py"), "--tiny",
           "--batch-sizes", "128", "--num-cpus", "1", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == [], result["errors"]
    assert result["preset"] == "tiny" and result["trials"] == 4
    assert result["batchlab"]["counts"]["completed"] == 4
    for side in ("baseline", "batchlab"):
        assert result[side]["wall_time_s"] > 0 and result[side]["examples_per_s"] > 0
    assert result["ratio"] > 0
    per_bs = result["batchlab"]["per_batch_size"]
    assert list(per_bs) == ["128"] and per_bs["128"]["pack_sizes"] == [4]
    assert "ratio:" in proc.stdout
