"""Every grid under examples/ through the real CLI (issue 23: "every example is exercised").

Every grid is dry-run (`batchlab run GRID --dry-run`, the console script: validation, the
user code's preflight, the plan), GPU-sized ones included, planned as for the cluster they
are meant for (`--address auto`; a dry run connects to nothing): built-in data sets whose
files are absent are checked by shape, so no data files or GPU are needed. The grids sized
for a CPU (no `gpus_per_trial`) then run for real on the session's local Ray (2 CPUs) with
`--max-epochs 1` into a temporary storage root: every trial is committed, capped at one
epoch, and the grid's analyses run. A GPU-sized grid's run is a skip with its reason
(`pytest -rs tests/examples`).

Wall time (`python -m pytest -q -rs tests/examples --durations=0`): 5.3-7 minutes on the
shared 2-core box under a load average of ~20 from other jobs (keskar-digits' 54 trials and
18 analyses 143 s of it, each user-code dry run ~25 s: its preflight box starts torch);
the CPU runs took 70 s in all on a quieter box.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from batchlab.cli import main
from scheduler.runner import plan
from scheduler.spec import load_spec
from warehouse.db import connect
from warehouse.layout import Layout

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
# examples/results is the committed demo warehouse: Parquet and run records, no grids.
GRIDS = sorted(p for p in EXAMPLES.rglob("*.yaml") if (EXAMPLES / "results") not in p.parents)


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def _gpu_sized(grid: Path) -> str | None:
    """Why the grid only dry-runs here, or None when it is sized for a CPU."""
    raw = yaml.safe_load(grid.read_text())
    gpus = (raw.get("resources") or {}).get("gpus_per_trial", 0)
    if gpus:
        return f"gpus_per_trial {gpus}: sized for a GPU (dry-run only)"
    return None


CPU_GRIDS = [g for g in GRIDS if _gpu_sized(g) is None]


def test_every_example_grid_is_listed() -> None:
    """The lists below cover examples/: a grid added there is exercised without an edit,
    and the README's examples exist."""
    assert len(GRIDS) >= 10, [_rel(g) for g in GRIDS]
    names = {_rel(g) for g in GRIDS}
    for must in ("examples/quick.yaml", "examples/seed002.yaml", "examples/custom/model.yaml"):
        assert must in names
    assert CPU_GRIDS, "no CPU-sized example grid"


def batchlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed console script (the `batchlab` of README.md), in a child process."""
    script = Path(sys.executable).parent / "batchlab"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "batchlab.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


@pytest.mark.parametrize("grid", GRIDS, ids=_rel)
def test_dry_run(grid: Path, tmp_path, data_cache) -> None:
    """`batchlab run GRID --dry-run` exits 0 and plans every trial of the grid. A GPU-sized
    grid is planned as for the cluster it is meant for (`--address auto`: the embedded
    instance of a CPU box has no GPU to offer; a dry run connects to nothing)."""
    spec = load_spec(grid)
    extra = ["--address", "auto"] if _gpu_sized(grid) else []
    p = batchlab("run", _rel(grid), "--dry-run", "--storage", str(tmp_path / "runs"), *extra)
    assert p.returncode == 0, (
        f"{_rel(grid)} --dry-run exited {p.returncode}:\n{p.stderr}\n{p.stdout}"
    )
    n = len(spec.trials())
    assert (
        f"experiment '{spec.experiment}': {n} trials in the grid, 0 already in storage "
        f"(skipped), {n} to run" in p.stdout
    ), p.stdout
    assert not (tmp_path / "runs" / "tables").exists()  # a dry run writes nothing


def test_max_epochs_changes_trial_ids(tmp_path, capsys) -> None:
    """`--max-epochs N` is a different config: new trial ids (docs/cli.md), and a value
    under 1 is a usage error (exit 2)."""
    grid = EXAMPLES / "cpu" / "lr-decades-mnist1d.yaml"  # no user code: no preflight box
    root = ["--storage", str(tmp_path / "runs")]

    def ids(*extra: str) -> set[str]:
        assert main(["run", str(grid), "--dry-run", *root, *extra]) == 0
        out = capsys.readouterr().out
        return {ln.split()[1] for ln in out.splitlines() if ln.startswith("  run ")}

    full, capped = ids(), ids("--max-epochs", "1")
    assert len(full) == len(capped) == 10
    assert not full & capped
    assert ids("--max-epochs", "1000") == full  # a cap above the grid's max_epochs: no change
    assert main(["run", str(grid), "--dry-run", *root, "--max-epochs", "0"]) == 2
    assert "--max-epochs: 0 is not allowed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    """One storage root for the module's runs (one experiment per grid)."""
    return tmp_path_factory.mktemp("examples") / "runs"


@pytest.mark.slow
@pytest.mark.parametrize("grid", GRIDS, ids=_rel)
def test_cpu_grid_runs_one_epoch(grid: Path, smoke_root: Path, request, capsys) -> None:
    """`batchlab run GRID --max-epochs 1` on the local Ray: exit 0, every trial committed
    with one epoch at most, the grid's analyses stored; a second run skips everything.
    A GPU-sized grid is a skip with its reason (`pytest -rs`)."""
    why = _gpu_sized(grid)
    if why:
        pytest.skip(f"{_rel(grid)}: {why}")
    request.getfixturevalue("ray_local")
    spec = load_spec(grid)
    argv = ["run", str(grid), "--storage", str(smoke_root), "--max-epochs", "1", "--no-progress"]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, f"{_rel(grid)} exited {rc}:\n{err}\n{out}"
    n = len(spec.trials())
    con = connect(str(smoke_root))
    rows = con.sql(
        "SELECT status, max_epochs, epochs_run FROM trials WHERE experiment = $e",
        params={"e": spec.experiment},
    ).fetchall()
    assert len(rows) == n, out
    assert {r[1] for r in rows} == {1}
    assert all(r[0] in ("completed", "diverged") for r in rows), rows
    assert all(r[2] is not None and r[2] <= 1 for r in rows), rows
    if spec.analyses:
        names = {
            r[0]
            for r in con.sql(
                "SELECT DISTINCT name FROM analyses WHERE experiment = $e",
                params={"e": spec.experiment},
            ).fetchall()
        }
        assert names == {a.name for a in spec.analyses}, out
    con.close()
    # The same command again would skip every trial: the capped ids are the stored ones.
    capped = load_spec(grid).model_copy(update={"max_epochs": 1})  # before any trials()
    again = plan(capped, Layout.open(str(smoke_root)))
    assert (len(again.to_run), len(again.skipped)) == (0, n)
