"""The public Python API (docs/api.md): `from batchlab import load_spec, run_grid,
open_warehouse, trial, __version__`: what `import batchlab` loads, and the worked example of
docs/api.md, run as written (a tiny grid on the session's local Ray, to a temporary root)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
API_DOC = REPO / "docs" / "api.md"
MARKER = "<!-- tests/test_api.py runs the next python block -->"


def test_import_batchlab_is_light():
    """`import batchlab` and `__version__` load no torch, Ray, DuckDB, nor the layers below
    the CLI package; the API's names are there, `trial` only on first access."""
    code = (
        "import sys, json, batchlab\n"
        "v = batchlab.__version__\n"
        "names = [n for n in ('load_spec', 'run_grid', 'open_warehouse', 'Warehouse') if hasattr(batchlab, n)]\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'duckdb', 'pandas', 'scheduler', 'workers', 'warehouse') if m in sys.modules)\n"
        "print(json.dumps({'version': v, 'names': names, 'heavy': heavy, 'dir': 'trial' in dir(batchlab)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["heavy"] == [], f"import batchlab loaded {got['heavy']}"
    assert got["names"] == ["load_spec", "run_grid", "open_warehouse", "Warehouse"]
    assert got["dir"]
    assert got["version"] == importlib.metadata.version("batchlab")


def test_every_public_name_imports():
    import batchlab
    from batchlab import __version__, load_spec, open_warehouse, run_grid, trial

    assert isinstance(__version__, str)
    assert callable(load_spec) and callable(run_grid) and callable(open_warehouse)
    assert trial is sys.modules["batchlab.trial"]
    assert set(batchlab.__all__) >= {"load_spec", "run_grid", "open_warehouse", "trial"}
    with pytest.raises(AttributeError):
        batchlab.no_such_name  # noqa: B018
    with pytest.raises(RuntimeError, match="only available inside a trainable"):
        trial.config  # noqa: B018 (outside a running trial)


def test_load_spec_overrides_revalidate():
    from batchlab import load_spec
    from scheduler.spec_errors import SpecError

    spec = load_spec(REPO / "examples" / "quick.yaml")
    same = load_spec(REPO / "examples" / "quick.yaml", experiment=spec.experiment)
    assert [t.trial_id for t in same.trials()] == [t.trial_id for t in spec.trials()]
    assert same.code_dir == spec.code_dir == str((REPO / "examples").resolve())
    small = load_spec(REPO / "examples" / "quick.yaml", grid={"batch_size": [64], "seed": [0]})
    assert small.n_trials == 1
    moved = load_spec(REPO / "examples" / "quick.yaml", data_dir="data", code_dir="custom")
    assert moved.data_dir == str((REPO / "examples" / "data").resolve())
    assert moved.code_dir == str((REPO / "examples" / "custom").resolve())
    with pytest.raises(SpecError, match="max_epochs"):
        load_spec(REPO / "examples" / "quick.yaml", max_epochs=0)


@pytest.mark.parametrize(
    "grid", sorted(REPO.glob("examples/**/*.yaml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_an_override_outside_identity_keeps_every_trial_id(grid):
    """load_spec's overrides revalidate the dumped spec: for every example grid, the round
    trip keeps every trial id, `code_dir` and `data_dir`."""
    from batchlab import load_spec

    spec = load_spec(grid)
    again = load_spec(grid, description="changed")
    assert [t.trial_id for t in again.trials()] == [t.trial_id for t in spec.trials()]
    assert (again.code_dir, again.data_dir) == (spec.code_dir, spec.data_dir)


def _doc_example() -> str:
    text = API_DOC.read_text()
    assert MARKER in text, f"{API_DOC}: the marker before the worked example is missing"
    m = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.DOTALL)
    assert m, "no python block after the marker"
    return m.group(1)


@pytest.mark.slow
def test_worked_example_of_docs_api(ray_local, tmp_path, monkeypatch, capsys):
    """docs/api.md's example as written, but for its storage root (a temporary folder)."""
    code = _doc_example()
    line = 'root = "api-demo-runs"'
    assert line in code
    monkeypatch.chdir(REPO)  # the example names examples/quick.yaml from the repository root
    ns: dict = {}
    exec(
        compile(code.replace(line, f"root = {str(tmp_path / 'runs')!r}"), str(API_DOC), "exec"), ns
    )

    assert ns["report"].counts["completed"] == 2, ns["report"].results
    best, gen = ns["best"], ns["gen"]
    assert list(best["batch_size"]) == [64, 256]
    assert (best["epochs_run"] == 2).all()
    assert best["best_val_loss"].notna().all()
    assert sorted(gen["batch_size"]) == [64, 256]
    assert (gen["n_seeds"] == 1).all()

    from batchlab import open_warehouse, run_grid
    from warehouse.sql import SQLRefused

    again = run_grid(ns["spec"], tmp_path / "runs", progress=False, preflight=False)
    assert again.skipped == 2 and again.planned == 0  # resumed, nothing repeated
    with open_warehouse(tmp_path / "runs") as wh:
        assert "critical_batch_size" in wh.queries
        assert list(wh.experiments()["experiment"]) == [ns["spec"].experiment]
        one = wh.query("trial_table", batch_size=64)
        assert list(one["batch_size"]) == [64]
        with pytest.raises(SQLRefused):
            wh.sql("DELETE FROM trials")
        with pytest.raises(ValueError, match="unknown named query"):
            wh.query("no_such_query")
