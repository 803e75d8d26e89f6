"""The open worker through the real scheduler on local Ray (issue 14): user model + data,
user axes, user training loop with SIGKILL-and-resume, packs of a user model, provenance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from scheduler.preflight import preflight
from scheduler.runner import plan, run_grid
from scheduler.spec import SpecError, load_spec
from warehouse.db import connect
from warehouse.layout import Layout
from workers.train import run_trial
from workers.user import use_code_dir

CUSTOM = Path(__file__).resolve().parents[2] / "examples" / "custom"


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of examples/custom: a researcher's folder with their code and grids."""
    dst = tmp_path / "proj"
    shutil.copytree(CUSTOM, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _grid(project: Path, name: str, **patch) -> Path:
    g = yaml.safe_load((project / f"{name}.yaml").read_text())
    g.update(patch)
    path = project / f"t-{name}.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


def test_user_model_and_data_with_user_axes_through_ray(ray_local, project, storage):
    path = _grid(
        project,
        "model",
        max_epochs=2,
        grid={"batch_size": [64], "model.kwargs.width": [8, 16], "seed": [0]},
        dataset={"loader": "./data.py:blobs", "kwargs": {"n": 400}},
    )
    spec = load_spec(path)
    preflight(spec, storage)
    report = run_grid(spec, storage, progress=False)
    assert report.counts["completed"] == 2, report.results
    con = connect(storage)
    rows = con.execute(
        "SELECT model, model_factory, dataset, dataset_loader, loss, user_code_hash, "
        "user_code_version, config_json FROM trials ORDER BY config_json"
    ).fetchall()
    assert [r[:5] for r in rows] == [
        ("mlp", "./nets.py:mlp", "blobs", "./data.py:blobs", "cross_entropy")
    ] * 2
    assert all(len(r[5]) == 16 for r in rows) and rows[0][5] == rows[1][5]
    assert "model.factory=./nets.py:mlp sha256:" in rows[0][6]
    assert {'"width":8' in r[7] or '"width":16' in r[7] for r in rows} == {True}
    # Per-layer rows show the two widths: 20*8 and 20*16 first-layer weights.
    numel = con.execute("SELECT DISTINCT numel FROM layers WHERE layer = '1.weight'").fetchall()
    assert sorted(n for (n,) in numel) == [160, 320]
    (h,) = con.execute("SELECT count(*) FROM probes WHERE probe = 'hessian_top_eig'").fetchone()
    assert h == 2
    # A re-run skips both; a changed model file is said, not silently mixed in.
    assert plan(spec, Layout.open(storage)).to_run == []
    (project / "nets.py").write_text((project / "nets.py").read_text() + "\n# edited\n")
    import io

    out = io.StringIO()
    preflight(load_spec(path), storage, out=out)
    assert "user code changed since 2 stored trial(s)" in out.getvalue()


def test_bad_user_code_fails_in_preflight_with_the_key(project, storage):
    path = _grid(project, "model", model={"factory": "./nets.py:nosuch"})
    with pytest.raises(SpecError, match=r"model.factory: './nets.py:nosuch'.*no attribute"):
        preflight(load_spec(path), storage)


@pytest.mark.slow
def test_trainable_sigkilled_resumes_without_duplicate_rows(
    ray_local, project, storage, monkeypatch
):
    path = _grid(
        project,
        "train",
        max_epochs=3,
        early_stopping=None,
        measure={},
        grid={"batch_size": [64], "lr": [0.05], "params.momentum": [0.9]},
        dataset={"loader": "./data.py:blobs", "kwargs": {"n": 400}},
    )
    spec = load_spec(path)
    (cfg,) = spec.trials()
    use_code_dir(spec.code_dir)
    reference = run_trial(cfg)  # uninterrupted, in this process
    monkeypatch.setenv("BATCHLAB_FAULT_KILL_AT_EPOCH", "2")
    report = run_grid(spec, storage, progress=False)
    assert report.counts["completed"] == 1, report.results
    con = connect(storage)
    attempt, resumed, trainable, params = con.execute(
        "SELECT attempt, resumed_from_epoch, trainable, params_json FROM trials"
    ).fetchone()
    assert (attempt, resumed, trainable) == (2, 1, "./train.py:main")
    assert params == '{"momentum": 0.9}'
    got = con.execute(
        "SELECT epoch, train_loss, val_loss, dist_from_init FROM epochs ORDER BY epoch"
    ).fetchall()
    want = [
        (e["epoch"], e["train_loss"], e["val_loss"], e["dist_from_init"]) for e in reference.epochs
    ]
    assert got == want, "a resumed user loop equals an uninterrupted one exactly on CPU"
    metrics = con.execute("SELECT epoch, name FROM metrics ORDER BY epoch").fetchall()
    assert metrics == [(1, "weight_norm"), (2, "weight_norm"), (3, "weight_norm")]


def test_pack_of_a_user_model_through_ray_equals_lone(ray_local, project, tmp_path):
    common = {
        "max_epochs": 2,
        "measure": {},
        "dataset": {"loader": "./data.py:blobs", "kwargs": {"n": 400}},
        "model": {"factory": "./nets.py:residual", "kwargs": {"width": 16}},
        "grid": {"batch_size": [64], "lr": [0.05, 0.02], "seed": [0]},
    }
    roots = {}
    for pack in (False, True):
        path = _grid(project, "model", **common, resources={"pack": pack, "cpus_per_trial": 1})
        roots[pack] = str(tmp_path / f"runs-{pack}")
        report = run_grid(load_spec(path), roots[pack], progress=False)
        assert report.counts["completed"] == 2, report.results
    q = "SELECT t.lr, e.epoch, e.train_loss, e.val_loss FROM epochs e JOIN trials t USING (trial_id) ORDER BY 1, 2"
    lone = connect(roots[False]).execute(q).fetchall()
    packed = connect(roots[True]).execute(q).fetchall()
    assert len(lone) == len(packed) == 4
    for a, b in zip(lone, packed, strict=True):
        assert a[:2] == b[:2]
        assert abs(a[2] - b[2]) <= 1e-4 * max(1, abs(a[2])) and abs(a[3] - b[3]) <= 1e-4 * max(
            1, abs(a[3])
        )
    sizes = connect(roots[True]).execute("SELECT DISTINCT pack_size FROM trials").fetchall()
    assert sizes == [(2,)], "the user model trained as one pack (torch.func path)"
