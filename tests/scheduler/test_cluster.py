"""Multi-node runs: a real three-node Ray cluster on 127.0.0.1 driven through the Jobs API
with token authentication. (The storage checks of scheduler/cluster.py and scheduler/submit.py
without a cluster: test_cluster_checks.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from scheduler.spec import parse_spec
from tests.conftest import REPO
from warehouse.layout import Layout

# ---- a real multi-node cluster on 127.0.0.1 (subprocess: its own Ray, its own token) ----

MULTINODE_GRID = {
    "experiment": "multinode",
    "dataset": "mnist1d",
    "model": {"name": "mlp", "hidden": [32]},
    # Long enough for the harness to catch a node running a checkpointed trial on a fast, idle
    # machine (at 6 epochs a trial took ~1 s and the grid could finish before it looked).
    "max_epochs": 20,
    "grid": {"batch_size": [32], "lr": [0.05], "seed": [0, 1, 2, 3]},
    # Lone trials: the test follows one trial moving to the surviving node (packs: test_packing).
    "resources": {"cpus_per_trial": 1, "max_retries": 3, "pack": False},
}
STEPS_PER_EPOCH = 125  # MNIST-1D: 4,000 training examples at batch size 32


def _multinode_main(cfg_path: str) -> None:
    """Runs in a subprocess: a head (0 CPUs) and two 1-CPU worker nodes on 127.0.0.1, token
    authentication on; submits the grid twice through the Jobs API (a local root not
    declared shared: refused; declared shared: runs), kills one worker node mid-grid and
    writes what it saw to the result file."""
    import socket

    import requests
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobStatus, JobSubmissionClient

    cfg = json.loads(Path(cfg_path).read_text())
    out: dict = {"events": []}
    t0 = time.monotonic()

    def event(what: str) -> None:
        out["events"].append(f"{time.monotonic() - t0:6.1f}s {what}")

    def save() -> None:
        Path(cfg["result"]).write_text(json.dumps(out))

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port = free_port()
    head_args = {
        "num_cpus": 0,  # no trial may run on the head: they must go to the worker nodes
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        # A killed node is declared dead after ~5 missed 1 s health checks (default ~15 s).
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5},
        "dashboard_port": port,
        # The head's job agent must not take Ray's default port 52365: any other Ray on this
        # machine (the session's `ray_local`) holds it, the agent then never registers and
        # every submission answers "No available agent to submit job".
        "dashboard_agent_listen_port": free_port(),
    }
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
        cluster.wait_for_nodes()
        out["worker_node_ids"] = [w.node_id for w in workers]
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/api/jobs/", headers=auth, timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        event("cluster up: head + 2 workers, dashboard answering")
        out["status_no_token"] = requests.get(f"{url}/api/jobs/", timeout=10).status_code
        out["status_wrong_token"] = requests.get(
            f"{url}/api/jobs/", headers={"Authorization": "Bearer not-the-token"}, timeout=10
        ).status_code
        out["status_token"] = requests.get(f"{url}/api/jobs/", headers=auth, timeout=10).status_code

        client = JobSubmissionClient(url)  # the token comes from $RAY_AUTH_TOKEN
        entry = f"batchlab run grid.yaml --storage {cfg['root']} --no-progress"
        env = {"working_dir": cfg["grid_dir"]}

        def wait(job: str, timeout_s: float, each=None) -> str:
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                status = client.get_job_status(job)
                if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    return str(status.value)
                if each:
                    each()
                time.sleep(0.25)
            return "TIMEOUT"

        def submit_job(**kwargs) -> str:
            # Right after start the head may answer "No available agent to submit job,
            # please try again later" (its job agent registers a little later, up to minutes
            # on a loaded 2-core machine): retry.
            end = time.monotonic() + 180
            while True:
                try:
                    return client.submit_job(**kwargs)
                except RuntimeError as exc:
                    if time.monotonic() > end:
                        raise
                    event(f"submit_job retried: {str(exc).strip()[:120]}")
                    time.sleep(1)

        refused = submit_job(entrypoint=entry, runtime_env=env)
        out["refused_status"] = wait(refused, 90)
        out["refused_logs"] = _job_logs(client, refused)
        event(f"job without BATCHLAB_STORAGE_SHARED: {out['refused_status']}")

        shared_env = {**env, "env_vars": {"BATCHLAB_STORAGE_SHARED": "1"}}
        job = submit_job(entrypoint=entry, runtime_env=shared_env)
        ray_init_for_state_api(cluster.address)
        killed: dict = {}

        def maybe_kill() -> None:
            if killed:
                return
            victim = _victim(cfg["root"], MULTINODE_GRID["experiment"], out["worker_node_ids"])
            if victim is not None:
                node = next(w for w in workers if w.node_id == victim)
                # A lost machine takes its processes with it: the node's worker processes die
                # with its raylet (left alone, a worker busy in PyTorch finished and committed
                # its trial from the dead node before it noticed, and nothing was retried).
                from ray.util.state import list_workers

                try:
                    pids = [w.pid for w in list_workers(
                        filters=[("node_id", "=", victim)], raise_on_missing_output=False
                    ) if w.worker_type == "WORKER" and w.pid]  # fmt: skip
                except Exception:  # the state API timed out: try again next poll
                    return
                cluster.remove_node(node, allow_graceful=False)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                killed["node_id"] = victim
                event(f"killed worker node {victim[:8]} while it ran a checkpointed trial")

        out["grid_status"] = wait(job, cfg["timeout_s"], maybe_kill)
        out["killed_node_id"] = killed.get("node_id")
        out["grid_logs"] = _job_logs(client, job)
        event(f"grid job: {out['grid_status']}")
    except BaseException:
        out["error"] = traceback.format_exc()
        raise
    finally:
        save()
        import ray

        ray.shutdown()
        cluster.shutdown()
        event("cluster shut down")
        save()


def _job_logs(client, job: str) -> str:
    """A job's output without the raylets' periodic state dumps."""
    lines = client.get_job_logs(job).splitlines()
    return "\n".join(x for x in lines if "[state-dump]" not in x)[-6000:]


def ray_init_for_state_api(address: str) -> None:
    """Connect this harness as a second driver (the state API lists running tasks)."""
    import ray

    ray.init(address=address, log_to_driver=False)


def _victim(root: str, experiment: str, worker_ids: list[str]) -> str | None:
    """A worker node to kill now: it has committed a trial, it runs a trial at this moment,
    and every trial in flight has an epoch checkpoint to resume from."""
    import pyarrow.parquet as pq
    from ray.util.state import list_tasks

    layout = Layout.open(root)
    committed = {}
    for f in layout.list_files("trials", experiment):
        t = pq.read_table(f, columns=["trial_id", "node_id"]).to_pylist()[0]
        committed[t["trial_id"]] = t["node_id"]
    ckpt_dir = Path(layout.base, "checkpoints", f"experiment={experiment}")
    started = (
        [d for d in ckpt_dir.iterdir() if (d / "attempts.json").exists()]
        if ckpt_dir.exists()
        else []
    )
    in_flight = [d for d in started if d.name not in committed]
    if not in_flight or not all((d / "resume.pt").exists() for d in in_flight):
        return None
    try:
        running = list_tasks(filters=[("state", "=", "RUNNING")], raise_on_missing_output=False)
    except Exception:  # the state API can time out on a busy machine: ask again next poll
        return None
    # A trial task: scheduler/ray_backend.py ray_task (named _ray_trial before issue 25).
    busy = {t.node_id for t in running if (t.name or "").endswith(("ray_task", "_ray_trial"))}
    for node_id in worker_ids:
        if node_id in busy and node_id in committed.values():
            return node_id
    return None


@pytest.fixture(scope="module")
def multinode_run(tmp_path_factory, data_cache):
    """Runs `_multinode_main` in a subprocess (its own Ray and token; the session's
    `ray_local` is untouched) and returns (result dict, storage root)."""
    import yaml

    from workers.config import DatasetConfig
    from workers.data import load_dataset

    load_dataset(DatasetConfig(name="mnist1d"))  # generate MNIST-1D once, before the workers
    base = tmp_path_factory.mktemp("multinode")
    grid_dir = base / "job"
    grid_dir.mkdir()
    (grid_dir / "grid.yaml").write_text(yaml.safe_dump(MULTINODE_GRID))
    root = str(base / "shared-root")
    ray_tmp = tempfile.mkdtemp(prefix="blmn-", dir="/tmp")  # short: Ray's socket paths
    cfg = {
        "root": root,
        "grid_dir": str(grid_dir),
        "result": str(base / "result.json"),
        "timeout_s": 150,
    }
    (base / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN="batchlab-test-" + os.urandom(16).hex(),
        RAY_TMPDIR=ray_tmp,  # its own session dirs and `address="auto"` file
        RAY_USAGE_STATS_ENABLED="0",
        BATCHLAB_DATA_CACHE=str(data_cache),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    code = (
        "import sys; from tests.scheduler.test_cluster import _multinode_main as m; m(sys.argv[1])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(base / "cfg.json")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # lets the harness shut its cluster down
        try:
            log, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        log = "TIMED OUT\n" + log
    finally:
        leftovers = _kill_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result_file = Path(cfg["result"])
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    result["harness_log"] = log[-6000:]
    result["leftover_pids"] = leftovers
    return result, root


def _kill_leftovers(marker: str) -> list[int]:
    """Kill, by pid, any process of the harness's cluster still alive (their command lines
    name its unique temp dir); returns their pids."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


def _why(result: dict) -> str:
    keys = ("events", "error", "refused_status", "grid_status", "grid_logs", "harness_log")
    return json.dumps({k: result.get(k) for k in keys}, indent=1)[-8000:]


@pytest.mark.slow
def test_jobs_api_refuses_requests_without_the_token(multinode_run):
    result, _ = multinode_run
    assert result.get("status_token") == 200, _why(result)
    assert result["status_no_token"] == 401
    assert result["status_wrong_token"] == 403


@pytest.mark.slow
def test_local_root_not_declared_shared_is_refused_on_a_multinode_cluster(multinode_run):
    result, _ = multinode_run
    assert result.get("refused_status") == "FAILED", _why(result)
    logs = result["refused_logs"]
    assert "is a local path, but trials run on other nodes" in logs, logs
    assert "BATCHLAB_STORAGE_SHARED=1" in logs


@pytest.mark.slow
def test_grid_survives_a_killed_worker_node_with_one_set_of_rows_per_trial(multinode_run):
    from warehouse.db import connect

    result, root = multinode_run
    assert result.get("grid_status") == "SUCCEEDED", _why(result)
    killed = result["killed_node_id"]
    assert killed, (
        "the harness found no moment when a worker node ran a checkpointed trial\n" + _why(result)
    )
    survivor = next(n for n in result["worker_node_ids"] if n != killed)
    spec = parse_spec(MULTINODE_GRID)
    exp, n_epochs = spec.experiment, MULTINODE_GRID["max_epochs"]

    con = connect(root)
    rows = con.execute(
        "SELECT trial_id, status, node_id, host, attempt, resumed_from_epoch, epochs_run "
        "FROM trials WHERE experiment = ? ORDER BY trial_id",
        [exp],
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(t.trial_id for t in spec.trials())
    assert {r[1] for r in rows} == {"completed"}
    assert all(r[3] for r in rows)  # provenance: the host of every trial
    nodes = {r[2] for r in rows}
    assert nodes == {killed, survivor}, rows  # trials ran on both worker nodes, none on the head
    resumed = [r for r in rows if r[4] >= 2]
    assert resumed, f"no trial was retried after the node was killed: {rows}\n" + _why(result)
    for r in resumed:
        assert r[2] == survivor and r[5] >= 1, r  # retried elsewhere, from its checkpoint
    assert all(r[6] == n_epochs for r in rows)
    # Exactly one set of rows per trial in every per-epoch table: no duplicates from the retry.
    for table, per_epoch in (("epochs", 1), ("steps", STEPS_PER_EPOCH)):
        n, distinct = con.execute(
            f"SELECT count(*), count(DISTINCT (trial_id, epoch{', step' if table == 'steps' else ''})) "
            f"FROM {table} WHERE experiment = ?",
            [exp],
        ).fetchone()
        assert n == distinct == len(rows) * n_epochs * per_epoch, (table, n, distinct)
