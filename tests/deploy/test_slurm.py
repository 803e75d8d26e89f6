"""deploy/slurm/batchlab.sbatch on a real single-node SLURM cluster started on localhost.

The cluster (slurmctld + slurmd as root, munged with a fresh key, slurm.conf in a temporary
folder: `ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`, no cgroups, no
accounting) runs only for this module. `sbatch` submits the script with a tiny grid; the
test waits for the job and reads the warehouse. The second test sends the batch script
SIGTERM mid-grid (what `--signal=B:TERM@60` does before the time limit): `batchlab run` stops
(exit 143), the script requeues the job, and the next run finishes the grid from the
storage root without re-running committed trials. Skips, saying why, where the SLURM
packages are not installed (`.ci/run` installs them: slurmctld slurmd slurm-client munge)
or the daemons cannot start (not root, no munged).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SCRIPT = REPO / "deploy" / "slurm" / "batchlab.sbatch"
pytestmark = pytest.mark.slow


def _skip(reason: str) -> None:
    print(f"SLURM test skipped: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(d: Path) -> str:
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    return f"""ClusterName=batchlabtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _kill_pidfile(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text().strip()), signal.SIGTERM)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM cluster; yields the environment its clients need."""
    need = ["sbatch", "squeue", "scontrol", "slurmctld", "slurmd", "munged"]
    missing = [b for b in need if shutil.which(b) is None]
    if missing:
        _skip(
            f"SLURM not installed ({', '.join(missing)} missing; apt-get install slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        _skip("the SLURM daemons of this test run as root; not root here")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = d / "slurm.conf"
    conf.write_text(_conf(d))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    m = d / "munge"
    started: list[Path] = []
    try:
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={m}/munge.sock",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/seed",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        started.append(m / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run(
                [daemon, "-f", str(conf)], check=True, env=env, capture_output=True, timeout=60
            )
            started.append(d / f"{daemon}.pid")
    except (subprocess.SubprocessError, OSError) as exc:
        for p in started:
            _kill_pidfile(p)
        _skip(f"the SLURM daemons did not start: {exc}")
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
        if out.stdout.strip() == "idle":
            break
        time.sleep(1)
    else:
        for p in reversed(started):
            _kill_pidfile(p)
        _skip(f"the SLURM node never became idle: {(d / 'slurmd.log').read_text()[-500:]}")
    # The job's shell finds this interpreter's `batchlab` and `ray` first.
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)
    yield env
    subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
    for p in reversed(started):
        _kill_pidfile(p)


def _grid(path: Path, epochs: int, batch_sizes: list[int]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "experiment": "slurm",
                "dataset": "mnist1d",
                "model": {"name": "mlp", "hidden": [16]},
                "max_epochs": epochs,
                "grid": {"batch_size": batch_sizes, "lr": [0.05], "seed": [0]},
                "resources": {"cpus_per_trial": 1},
            }
        )
    )
    return path


def _submit(env: dict, tmp: Path, grid: Path, **more: str) -> tuple[str, Path]:
    out = tmp / "job-%j.out"
    exports = {"BATCHLAB_GRID": str(grid), "BATCHLAB_STORAGE": str(tmp / "runs"), **more}
    cmd = [
        "sbatch",
        "--parsable",
        f"--output={out}",
        f"--chdir={tmp}",
        "--export=ALL," + ",".join(f"{k}={v}" for k, v in exports.items()),
        str(SCRIPT),
    ]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
    return job, tmp / f"job-{job}.out"


def _state(env: dict, job: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", job, "-o"], env=env, capture_output=True, text=True
    )
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


def _wait(env: dict, job: str, log: Path, timeout: float, until=None) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = _state(env, job)
        if until is not None and until():
            return st
        if until is None and st in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE"):
            return st
        time.sleep(2)
    raise AssertionError(
        f"job {job} still {_state(env, job)} after {timeout} s:\n"
        f"{log.read_text() if log.exists() else '(no output)'}"
    )


def _other_ray() -> str | None:
    """The pid of a Ray GCS server running on this machine, if any."""
    import psutil

    for p in psutil.process_iter(["name", "pid"]):
        if p.info["name"] == "gcs_server":
            return f"gcs_server pid {p.info['pid']}"
    return None


def _trials(root: Path) -> list[tuple]:
    from warehouse.db import connect

    return (
        connect(str(root))
        .execute("SELECT batch_size, status, attempt FROM trials ORDER BY 1")
        .fetchall()
    )


@pytest.mark.parametrize("mode", ["embedded", "symmetric", "manual"])
def test_sbatch_runs_a_grid_into_the_shared_storage(slurm, tmp_path, data_cache, mode):
    if mode == "symmetric" and _other_ray():
        # `ray symmetric-run` refuses a node where any Ray runs ("Ray is already started on
        # this node"), another user's included: on SLURM, symmetric mode wants --exclusive.
        _skip(f"symmetric mode: another Ray instance runs on this machine ({_other_ray()})")
    grid = _grid(tmp_path / "grid.yaml", epochs=2, batch_sizes=[64, 256])
    job, log = _submit(
        slurm, tmp_path, grid, BATCHLAB_DATA_CACHE=str(data_cache), BATCHLAB_RAY_MODE=mode
    )
    state = _wait(slurm, job, log, timeout=480)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert f"mode {mode}" in text and "run ended with exit code 0" in text, text[-3000:]
    assert [(bs, st) for bs, st, _ in _trials(tmp_path / "runs")] == [
        (64, "completed"),
        (256, "completed"),
    ]


def test_sigterm_requeues_and_the_next_allocation_finishes_the_grid(slurm, tmp_path, data_cache):
    grid = _grid(tmp_path / "grid.yaml", epochs=40, batch_sizes=[512, 64, 32, 16])
    job, log = _submit(slurm, tmp_path, grid, BATCHLAB_DATA_CACHE=str(data_cache))
    root = tmp_path / "runs"

    def one_committed() -> bool:
        try:
            return len(_trials(root)) >= 1
        except Exception:
            return False

    _wait(slurm, job, log, timeout=480, until=one_committed)
    before = {bs: attempt for bs, _, attempt in _trials(root)}
    # What --signal=B:TERM@60 does before the time limit: SIGTERM to the batch script only.
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=slurm, check=True)
    _wait(
        slurm,
        job,
        log,
        timeout=600,
        until=lambda: (
            "restart 1" in log.read_text() and "run ended with exit code 0" in log.read_text()
        ),
    )
    state = _wait(slurm, job, log, timeout=120)
    text = log.read_text()
    assert "SIGTERM" in text and "run ended with exit code 143" in text, text[-3000:]
    assert "requeueing job" in text and state == "COMPLETED", text[-3000:]
    after = _trials(root)
    assert sorted(bs for bs, st, _ in after if st == "completed") == [16, 32, 64, 512]
    assert all(dict((bs, a) for bs, _, a in after)[bs] == a for bs, a in before.items())
