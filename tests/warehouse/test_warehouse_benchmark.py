"""CI smoke test of benchmarks/warehouse.py at a tiny scale: it completes, every named query
runs before and after compaction with the same results, and the JSON report is written
(no speed is asserted here: see the script for the measured numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from warehouse import queries

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "warehouse.py"


def test_benchmark_runs_at_tiny_scale(tmp_path):
    out = tmp_path / "bench.json"
    root = tmp_path / "root"
    proc = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--trials", "12", "--epochs", "3",
            "--steps-per-trial", "6", "--repeats", "1", "--workers", "1",
            "--root", str(root), "--json", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["scale"]["epochs_rows"] == 36 and result["scale"]["steps_rows"] == 72
    expected = {"experiments", *getattr(queries, "NAMED_QUERIES", {"curves", "trial_table"})}
    for stage in ("raw", "compacted"):
        assert expected <= set(result[stage]["queries"]), stage
        for name, q in result[stage]["queries"].items():
            assert q["median_s"] > 0 and q["rows"] >= 0, (stage, name)
    assert all(result["same_results"].values()), result["same_results"]
    assert result["compaction"]["files_in"] >= 5 * 12 and result["compaction"]["seconds"] > 0
    assert "compaction:" in proc.stdout
