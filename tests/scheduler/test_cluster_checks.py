"""Cluster runs without a cluster: the storage checks of scheduler/cluster.py (pure, and on
the session's one-node local Ray) and scheduler/submit.py (grid resolution, dry runs, a run
on local Ray, its errors). The real three-node Ray cluster: test_cluster.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import submit
from scheduler.cluster import (
    ClusterStorageError,
    NodeInfo,
    check_cluster,
    check_storage_here,
    local_root_refusal,
    probe_nodes,
    trials_leave_driver_node,
)
from scheduler.spec import load_spec, parse_spec
from tests.conftest import REPO, TINY_GRID
from warehouse.layout import Layout

# quick.yaml: 16 axis combinations; linear scaling at the base batch size trains as fixed lr.
_QUICK_TO_RUN = len(load_spec(REPO / "examples" / "quick.yaml").trials())


def _node(i: int, cpus: float = 1.0, gpus: float = 0.0) -> NodeInfo:
    return NodeInfo(f"{i:02d}" + "ab" * 27, f"10.0.0.{i}", f"host-{i}", cpus, gpus)


# ---- when trials leave the driver's node (pure) ----


@pytest.mark.parametrize(
    ("nodes", "driver", "cpus", "gpus", "existing", "expected"),
    [
        ([_node(1, cpus=2)], 1, 1.0, 0.0, False, False),  # embedded local Ray
        ([_node(1, cpus=0)], 1, 1.0, 0.0, False, False),  # embedded: never grows
        ([_node(1, cpus=2)], 1, 1.0, 0.0, True, False),  # one node that runs every trial
        ([_node(1, cpus=0)], 1, 1.0, 0.0, True, True),  # a CPU-less head: autoscaled workers
        ([_node(1, cpus=8)], 1, 1.0, 0.5, True, True),  # trials need a GPU the head lacks
        ([_node(1), _node(2)], 1, 1.0, 0.0, False, True),  # two nodes
        ([_node(1)], None, 1.0, 0.0, True, True),  # a Ray Client driver outside the cluster
    ],
)
def test_trials_leave_driver_node(nodes, driver, cpus, gpus, existing, expected):
    here = None if driver is None else nodes[driver - 1].node_id
    got = trials_leave_driver_node(
        nodes, here, cpus_per_trial=cpus, gpus_per_trial=gpus, existing_cluster=existing
    )
    assert got is expected


def test_local_root_refusal_explains_and_names_the_fixes(tmp_path):
    msg = local_root_refusal(Layout.open(tmp_path / "runs"), [_node(1), _node(2), _node(3)])
    assert str(tmp_path / "runs") in msg
    assert "3 alive" in msg and "10.0.0.2" in msg
    for fix in ("s3://", "--storage-shared", "BATCHLAB_STORAGE_SHARED=1", "docs/cluster.md"):
        assert fix in msg


def test_check_storage_here_names_an_unreachable_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ClusterStorageError, match="is not reachable from") as err:
        check_storage_here(str(blocker / "runs"))
    assert str(blocker / "runs") in str(err.value)
    layout = check_storage_here(str(tmp_path / "ok"))
    assert list(Path(layout.base, "cluster-check").iterdir()) == []  # the probe cleaned up


def test_probe_nodes_on_local_ray(ray_local, tmp_path):
    from scheduler.cluster import alive_nodes

    layout = Layout.open(tmp_path / "runs")
    nodes = alive_nodes()
    assert len(nodes) == 1
    assert probe_nodes(layout, nodes, timeout_s=60) == []
    assert list(Path(layout.base, "cluster-check").iterdir()) == []


def test_check_cluster_is_a_no_op_on_one_local_node(ray_local, tmp_path):
    layout = Layout.open("relative-root-stays-as-given")
    assert check_cluster(parse_spec(TINY_GRID), layout, storage_shared=False) is layout


def test_check_cluster_refuses_a_local_root_on_many_nodes(ray_local, tmp_path, monkeypatch):
    import scheduler.cluster as cluster

    monkeypatch.setattr(cluster, "alive_nodes", lambda: [_node(1), _node(2)])
    monkeypatch.delenv("BATCHLAB_STORAGE_SHARED", raising=False)
    spec = parse_spec(TINY_GRID)
    with pytest.raises(ClusterStorageError, match="is a local path, but trials run on other"):
        check_cluster(spec, Layout.open(tmp_path / "runs"))


# ---- scheduler/submit.py ----


def test_resolve_grid_prefers_the_mounted_project(tmp_path):
    project, cwd = tmp_path / "batchlab", tmp_path / "home"
    (project / "examples").mkdir(parents=True)
    (cwd / "examples").mkdir(parents=True)
    (project / "examples" / "g.yaml").write_text("x")
    (cwd / "examples" / "g.yaml").write_text("x")
    (cwd / "only-here.yaml").write_text("x")
    (project / "my grid.yaml").write_text("x")
    assert submit.resolve_grid(["examples/g.yaml"], project, cwd) == project / "examples/g.yaml"
    assert submit.resolve_grid(["only-here.yaml"], project, cwd) == cwd / "only-here.yaml"
    absolute = str(cwd / "examples" / "g.yaml")
    assert submit.resolve_grid([absolute], project, cwd) == Path(absolute)
    # `ray submit` splits an unquoted path at its spaces: the words are joined again.
    assert submit.resolve_grid(["my", "grid.yaml"], project, cwd) == project / "my grid.yaml"


def test_resolve_grid_error_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        submit.resolve_grid(["examples/nope.yaml"], tmp_path / "p", tmp_path / "c")
    msg = str(err.value)
    assert str(tmp_path / "p" / "examples/nope.yaml") in msg
    assert str(tmp_path / "c" / "examples/nope.yaml") in msg
    assert "ray up --no-restart deploy/cluster.yaml" in msg and "ray rsync-up" in msg
    assert "unquoted" not in msg
    with pytest.raises(FileNotFoundError, match="unquoted"):
        submit.resolve_grid(["two", "words.yaml"], tmp_path / "p", tmp_path / "c")


def test_submit_dry_run_plans_without_a_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BATCHLAB_PROJECT", str(REPO))
    rc = submit.main(["examples/quick.yaml", "--storage", str(tmp_path / "runs"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"grid {REPO / 'examples' / 'quick.yaml'}: 16 trials" in out
    assert f"{_QUICK_TO_RUN} to run" in out  # 16 combinations, 12 distinct trainings


def test_submit_missing_grid_fails_with_rc_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BATCHLAB_PROJECT", str(tmp_path))
    assert submit.main(["examples/nope.yaml", "--storage", str(tmp_path / "r")]) == 2
    assert "not found on this node" in capsys.readouterr().err


def test_submit_runs_the_grid_like_batchlab_run(ray_local, tmp_path, capsys, monkeypatch):
    import yaml

    grid = dict(TINY_GRID, experiment="submit-tiny", max_epochs=1)
    grid["grid"] = {"batch_size": [256], "lr": [0.05], "seed": [0]}
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "tiny.yaml").write_text(yaml.safe_dump(grid))
    monkeypatch.setenv("BATCHLAB_PROJECT", str(tmp_path))
    root = str(tmp_path / "runs")
    assert submit.main(["grids/tiny.yaml", "--storage", root, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 completed" in out
    assert Layout.open(root).list_files("trials", "submit-tiny")


def test_submit_without_a_cluster_says_how_to_start_one(tmp_path, capsys, monkeypatch):
    # Not a real "no cluster" check: on a shared machine `address="auto"` connects to any
    # Ray instance it finds (Ray's legacy fallback); the message is what is tested here.
    import scheduler.runner

    def no_cluster(address=None, num_cpus=None, quiet=True):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(scheduler.runner, "init_ray", no_cluster)
    monkeypatch.setenv("BATCHLAB_PROJECT", str(REPO))
    assert submit.main(["examples/quick.yaml", "--storage", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no running Ray cluster found" in err and "Could not find any running" in err
    assert "ray up deploy/cluster.yaml" in err


def test_submit_script_runs_as_a_file_with_its_folder_first_on_sys_path(tmp_path):
    """`python ~/submit.py` (as `ray submit` runs it) and `python scheduler/submit.py`: the
    scheduler/ folder is first on sys.path there; the script must still import the package."""
    run = subprocess.run(
        [sys.executable, str(REPO / "scheduler" / "submit.py"), "examples/quick.yaml",
         "--dry-run", "--storage", str(tmp_path / "r")],
        cwd=tmp_path, env={**os.environ, "BATCHLAB_PROJECT": str(REPO)}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{_QUICK_TO_RUN} to run" in run.stdout
