"""The scheduler's bookkeeping driven without Ray (issue 25, item 3): the wait loop, the
lone and pack loops over a fake task system, the one commit path, and the layer rules of
scheduler/ (Ray in ray_backend.py only, no CLI import, no private names across modules,
every module under 500 lines)."""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scheduler.commit import TABLES, commit_trial, committed_status
from scheduler.dispatch import WORKER_FILLED, TaskArgs, drain
from scheduler.execute import execute
from scheduler.runner import RunReport
from scheduler.spec import SHARED_FIELDS, GridSpec, parse_spec
from scheduler.spec_axes import GridAxes
from tests.conftest import TINY_GRID
from warehouse.layout import Layout
from warehouse.store import read_trial_rows
from workers.config import TrialConfig
from workers.train import TrialResult

SCHEDULER = Path(__file__).resolve().parents[2] / "scheduler"


class Died(Exception):
    """A fake backend's 'worker died' error."""


class FakeBackend:
    """A task system that runs nothing: each task's value is `answer(args, kwargs)`
    (an exception is raised by `get`), and tasks end in submission order."""

    def __init__(self, answer):
        self.answer = answer
        self.submitted: list[tuple[tuple, dict, dict]] = []
        self.tasks: dict[int, tuple[tuple, dict]] = {}
        self.shut = False

    def ray_task(self, *args: Any, **kwargs: Any) -> Any:  # never called: nothing runs
        raise AssertionError("the fake backend runs no task")

    def remote(self, fn, **options):
        backend = self

        class Remote:
            def remote(self, *args, **kwargs):
                ref = len(backend.submitted)
                backend.submitted.append((args, kwargs, options))
                backend.tasks[ref] = (args, kwargs)
                return ref

        return Remote()

    def wait(self, refs, timeout=1.0):
        return [min(refs)]

    def get(self, ref):
        value = self.answer(*self.tasks.pop(ref))
        if isinstance(value, BaseException):
            raise value
        return value

    def worker_died(self, exc):
        return isinstance(exc, Died)

    def cluster_resources(self):
        return {"CPU": 2.0}

    def shutdown(self):
        self.shut = True


def test_drain_hands_on_values_and_errors_and_takes_new_tasks():
    backend = FakeBackend(lambda args, kw: Died("gone") if args[0] == "b" else args[0].upper())
    sub = backend.remote(None)
    pending = {sub.remote("a"): "a", sub.remote("b"): "b"}
    seen = []

    def on_result(item, value, exc):
        seen.append((item, value, type(exc).__name__ if exc else None))
        if item == "a":
            pending[sub.remote("c")] = "c"

    assert drain(backend, pending, on_result) is True
    assert seen == [("a", "A", None), ("b", None, "Died"), ("c", "C", None)]
    assert not backend.shut


def test_drain_on_an_interrupt_cancels_nothing_and_says_so():
    backend = FakeBackend(lambda args, kw: KeyboardInterrupt())
    sub = backend.remote(None)
    pending = {sub.remote("a"): "a", sub.remote("b"): "b"}
    cancelled = []
    assert drain(backend, pending, lambda *a: None, on_cancel=lambda: cancelled.append(1)) is False
    assert cancelled == [1]
    assert len(pending) == 1  # the other task was not cancelled (no ray.cancel) ...
    assert backend.shut  # ... but disconnected from (dispatch.stop_running)


def test_task_args_options_leave_the_worker_its_own_fields():
    task = TaskArgs("e", "/r", "v1", num_threads=2, timeout_s=5.0, token="t")
    opts = task.options()
    assert not set(WORKER_FILLED) & set(opts)
    assert "experiment" not in opts and "root" not in opts
    assert TaskArgs("e", "/r", **opts) == task


def _report(spec: GridSpec, root: str) -> RunReport:
    return RunReport(spec.experiment, root, "run", len(spec.trials()), 0)


def test_lone_loop_retries_failed_trials_and_records_dead_workers(tmp_path):
    grid = dict(TINY_GRID, resources={"cpus_per_trial": 1, "pack": False, "retry_failed": 1})
    spec = parse_spec(grid)
    trials = spec.trials()
    dead = trials[0].trial_id
    runs: dict[str, int] = {}

    def answer(args, kw):
        fn, cfg_json = args[0], args[1]
        tid = TrialConfig.model_validate_json(cfg_json).trial_id
        runs[tid] = runs.get(tid, 0) + 1
        assert fn.__name__ == "execute_trial"
        if tid == dead:  # every execution died: Ray's max_retries + 1 of them, each time
            assert kw["attempt_base"] == (runs[tid] - 1) * (3 + 1)
            return Died("worker crashed")
        assert kw["attempt_base"] == runs[tid] - 1
        status = "failed" if runs[tid] == 1 else "completed"  # fails once, then completes
        return {"trial_id": tid, "status": status, "attempt": 1}

    backend = FakeBackend(answer)
    root = str(tmp_path / "runs")
    report = _report(spec, root)
    execute(spec, trials, Layout.open(root), report, False, io.StringIO(), code_version="v",
            backend=backend)  # fmt: skip
    assert report.counts == {"completed": len(trials) - 1, "diverged": 0, "failed": 1}
    died = [r for r in report.results if r["trial_id"] == dead]
    assert died[0]["worker_died"] is True, died
    assert died[0]["attempt"] == 2 * (3 + 1), died  # two submissions, max_retries 3 each
    options = backend.submitted[0][2]
    assert options["num_cpus"] == 1 and options["max_retries"] == 3
    kwargs = backend.submitted[0][1]
    assert kwargs["code_version"] == "v" and kwargs["num_threads"] == 1 and kwargs["token"]


def test_pack_loop_splits_an_out_of_memory_pack_and_counts_each_member(tmp_path):
    grid = dict(TINY_GRID, resources={"cpus_per_trial": 1, "pack": True})
    grid["grid"] = {"batch_size": [64], "lr": [0.05], "seed": [0, 1, 2, 3]}
    spec = parse_spec(grid)
    trials = spec.trials()
    sizes = []

    def answer(args, kw):
        cfg_jsons = args[1]
        sizes.append(len(cfg_jsons))
        assert kw["attempt_base"] == 0 and kw["pack_id"]
        if len(cfg_jsons) > 2:  # out of memory: the driver re-queues two halves
            return {"members": [], "oom": cfg_jsons}
        ids = [TrialConfig.model_validate_json(j).trial_id for j in cfg_jsons]
        return {"members": [{"trial_id": i, "status": "completed"} for i in ids], "oom": []}

    root = str(tmp_path / "runs")
    report = _report(spec, root)
    out = io.StringIO()
    execute(spec, trials, Layout.open(root), report, False, out, code_version="v",
            backend=FakeBackend(answer))  # fmt: skip
    assert sizes == [4, 2, 2]
    assert report.counts == {"completed": 4, "diverged": 0, "failed": 0}
    assert "re-queued as two packs of 2 and 2" in out.getvalue()


def _result(cfg: TrialConfig, status: str = "completed") -> TrialResult:
    epoch = {"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5}
    metric = {"epoch": 1, "step": 10, "name": "custom", "value": 2.0}
    return TrialResult(
        trial_id=cfg.trial_id, config_hash=cfg.config_hash, status=status,
        stop_reason="max_epochs", summary={"epochs_run": 1, "best_val_loss": 1.0},
        epochs=[epoch], metrics=[metric],
    )  # fmt: skip


@pytest.mark.parametrize(
    "where",
    [{}, {"pack_id": "p1", "pack_size": 4}, {"data_parallel_workers": 2}],
    ids=["lone", "pack", "data-parallel"],
)
def test_one_commit_path_writes_every_table_for_every_executor(tmp_path, where):
    cfg = parse_spec(TINY_GRID).trials()[0]
    root = str(tmp_path / "runs")
    task = TaskArgs("tiny", root, "v9", node_id="n1", ray_version="2.x")
    rec = commit_trial(cfg, _result(cfg), task, attempt=2,
                       started_at=dt.datetime.now(dt.timezone.utc), **where)  # fmt: skip
    assert rec["status"] == "completed" and rec["attempt"] == 2
    layout = Layout.open(root)
    assert committed_status(layout, "tiny", cfg.trial_id) == "completed"
    cols = ("code_version", "node_id", "attempt", "pack_id", "data_parallel_workers",
            "batchlab_version")  # fmt: skip
    (row,) = read_trial_rows(layout, "tiny", cols)
    assert row["code_version"] == "v9" and row["node_id"] == "n1" and row["attempt"] == 2
    assert row["pack_id"] == where.get("pack_id")
    assert row["data_parallel_workers"] == where.get("data_parallel_workers", 1)
    assert row["batchlab_version"]
    assert "metrics" in TABLES  # data-parallel trials used to drop their metrics
    assert layout.exists(layout.table_file("metrics", "tiny", cfg.trial_id))


def test_grid_spec_takes_trial_config_defaults_and_checks():
    spec_fields, trial_fields = GridSpec.model_fields, TrialConfig.model_fields
    assert SHARED_FIELDS and set(SHARED_FIELDS) <= set(spec_fields)
    for name in SHARED_FIELDS:
        assert spec_fields[name].annotation == trial_fields[name].annotation, name
        assert spec_fields[name].get_default(call_default_factory=True) == trial_fields[
            name
        ].get_default(call_default_factory=True), name
    axes = GridAxes()
    for name in ("batch_size", "lr", "lr_scaling", "warmup_epochs", "seed"):
        assert getattr(axes, name) == [trial_fields[name].default], name
    # One set of defaults: a grid with nothing set trains TrialConfig's defaults.
    (t,) = parse_spec({"experiment": "d"}).trials()
    assert t.trial_id == TrialConfig().canonical().trial_id


# ---- the layer rules of scheduler/ ----


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_only_ray_backend_imports_ray_and_nothing_imports_the_cli():
    for path in sorted(SCHEDULER.glob("*.py")):
        for module, _ in _imports(path):
            top = module.split(".")[0]
            if path.name != "ray_backend.py":
                assert top != "ray", f"{path.name} imports {module}"
            assert top != "batchlab", f"{path.name} imports {module}"
        if path.name != "ray_backend.py":  # what `grep -rn "import ray" scheduler/` checks
            assert "import ray" not in path.read_text(), path.name


def test_no_private_name_is_imported_across_scheduler_modules():
    for path in sorted(SCHEDULER.glob("*.py")):
        for module, names in _imports(path):
            if module.startswith("scheduler"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.name} imports {private} from {module}"


def test_every_scheduler_module_is_under_500_lines():
    for path in sorted(SCHEDULER.glob("*.py")):
        assert len(path.read_text().splitlines()) < 500, path.name


def test_the_scheduler_plans_without_importing_ray_torch_or_the_cli():
    code = (
        "import sys, json; from scheduler.runner import plan; from scheduler.execute import "
        "execute; from scheduler.spec import parse_spec; from tests.conftest import TINY_GRID; "
        "parse_spec(TINY_GRID).trials(); "
        "print(json.dumps([m in sys.modules for m in ('ray', 'torch', 'batchlab')]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=SCHEDULER.parent, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [False, False, False]


def test_the_recorded_batchlab_version_is_the_package_version():
    import batchlab
    from scheduler.versions import code_version, package_version

    assert package_version() == batchlab.__version__
    assert code_version().startswith(batchlab.__version__)
