"""CI rehearsal of benchmarks/gpu_check.py: `--tiny` runs every part of the GPU check on CPU
(digits, a few trials, a 5 x 5 surface) and writes every output the GPU run writes.
Asserts completion and the outputs, never a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(3000)  # ~4 minutes on an idle 2-core box; far more on a loaded one
def test_tiny_gpu_check_completes_and_writes_its_outputs(tmp_path, data_cache):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(out)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2900)
    summary = json.loads((out / "gpu_check.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-2000:], json.dumps(summary)[-3000:])
    parts = summary["parts"]
    assert list(parts) == ["env", "grid", "probes", "surface", "study", "perf"]
    assert all(p["status"] == "ok" and p["rc"] == 0 for p in parts.values()), parts
    assert parts["env"]["result"]["torch"] and "cuda_available" in parts["env"]["result"]
    grid = json.loads((out / "grid_throughput.json").read_text())
    assert grid["errors"] == [] and grid["batchlab"]["counts"]["completed"] == 4
    assert parts["grid"]["result"]["ratio"] == grid["ratio"] > 0
    probes = json.loads((out / "probe_cost.json").read_text())
    assert probes and parts["probes"]["result"] == probes
    surface = parts["surface"]["result"]
    assert surface["points"] == 25 and surface["rows"] == 50 and surface["seconds"] > 0
    study = parts["study"]["result"]
    assert study["counts"]["completed"] == 2 and study["probe_rows"] > 0
    assert [t["batch_size"] for t in study["trials"]] == [32, 64]
    assert all(t["status"] == "completed" for t in study["trials"])
    # The performance switches: each run completed and recorded what was in effect.
    perf = parts["perf"]["result"]
    assert perf == json.loads((out / "perf.json").read_text())
    assert list(perf["runs"]) == ["default", "tf32+channels_last+cudnn_benchmark", "cuda_graphs",
                                  "compile"]  # fmt: skip
    fast = perf["runs"]["tf32+channels_last+cudnn_benchmark"]
    assert fast["lone"]["status"] == ["completed"]
    assert fast["pack"]["status"] == ["completed"] * perf["pack_size"]
    assert fast["lone"]["perf"]["in_effect"]["channels_last"] is True  # LeNet has Conv2d
    assert fast["pack"]["perf"]["in_effect"]["channels_last"] is True
    assert perf["runs"]["cuda_graphs"]["lone"]["perf"]["notes"]["cuda_graphs"].startswith("cpu:")
    assert "skipped" in perf["runs"]["compile"]
    # The compacted study warehouse is a real one: DuckDB reads its trials table.
    db = out / "study" / "batchlab.duckdb"
    assert db.exists(), sorted(p.name for p in (out / "study").iterdir())
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == 2
