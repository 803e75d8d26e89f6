"""Clean shutdown and infeasible resources (scheduler/runner.py, scheduler/cluster.py):

- a driver SIGKILLed on its own (not its process group) leaves no process of its embedded
  Ray after 10 s: the watchdog tears the instance down;
- every port the embedded Ray listens on (GCS, raylet, agents, metrics export, workers) is
  bound to 127.0.0.1;
- `--dry-run` on a populated root exits 0 (a plan, never a teardown abort);
- a grid no node can run (`cpus_per_trial` above the cluster's CPUs, `gpus_per_trial` with
  no GPU, `--num-cpus 0`) is refused with exit 2 and a message, before anything is queued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import REPO, CliRun, pids_mentioning, tiny_grid, write_grid
from warehouse.layout import Layout

LOCAL = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _ip(hex_addr: str) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    v6 = ipaddress.IPv6Address(words)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped else str(v6)


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of `pids`."""
    inode_pid = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inode_pid[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inode_pid:  # 0A: LISTEN
                addr, port = f[1].split(":")
                out.append((inode_pid[f[9]], _ip(addr), int(port, 16)))
    return out


@pytest.mark.slow
def test_killed_driver_leaves_no_ray_process_and_ports_are_local(tmp_path, ray_tmp):
    exp = "shutdown"
    # Slow enough trials (batch 8, 3 epochs) that the grid is still running when killed.
    seeds = list(range(6))
    grid = write_grid(
        tmp_path / "grid.yaml",
        tiny_grid(exp, seeds, grid={"batch_size": [8], "lr": [0.05], "seed": seeds}),
    )
    root = str(tmp_path / "runs")
    run = CliRun(grid, root, ray_tmp).start()
    try:
        run.wait_committed(exp, 1)
        pids = [p for p in pids_mentioning(ray_tmp) if p != run.proc.pid]
        ports = listening([run.proc.pid, *pids])
        assert len(ports) >= 4, ports  # GCS, raylet, agents, the driver's core worker
        public = [p for p in ports if p[1] not in LOCAL]
        assert public == [], f"embedded Ray ports not on 127.0.0.1: {public}"
        os.kill(run.proc.pid, signal.SIGKILL)  # the driver alone, not its process group
        assert run.proc.wait(30) == -signal.SIGKILL
        t0 = time.monotonic()
        left = run.wait_ray_gone(10.0)
        gone_s = time.monotonic() - t0
        assert left == [], f"processes of the killed driver's Ray alive after 10 s: {left}"
        print(f"\nembedded Ray gone {gone_s:.1f} s after the driver's SIGKILL; ports {ports}")
    finally:
        run.cleanup()
    # --dry-run on the populated root: a plan and exit 0, every time.
    assert Layout.open(root).list_files("trials", exp)
    for _ in range(3):
        p = subprocess.run(
            [sys.executable, "-m", "batchlab.cli", "run", str(grid), "--storage", root,
             "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert p.returncode == 0 and "already in storage" in p.stdout, (p.returncode, p.stderr)


def _refused(tmp_path: Path, ray_tmp: str, resources: dict, *args: str) -> tuple[str, float]:
    grid = write_grid(tmp_path / "grid.yaml", tiny_grid("infeasible", [0], resources=resources))
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "batchlab.cli", "run", str(grid), "--storage",
         str(tmp_path / "runs"), "--no-progress", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert not Layout.open(tmp_path / "runs").list_files("trials", "infeasible")
    return p.stderr.strip().splitlines()[-1], took


INFEASIBLE = {
    "cpus": ({"cpus_per_trial": 1000}, ("--num-cpus", "2"),
             "needs 1000 CPUs per trial (resources.cpus_per_trial); the largest node of the "
             "embedded local Ray instance has 2"),
    "gpus": ({"cpus_per_trial": 1, "gpus_per_trial": 1}, ("--num-cpus", "2"),
             "embedded local Ray instance has no GPU"),
    "num_cpus_0": ({"cpus_per_trial": 1}, ("--num-cpus", "0"), "--num-cpus: 0 is not allowed"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(INFEASIBLE))
def test_infeasible_resources_are_refused_before_anything_is_queued(tmp_path, ray_tmp, case):
    resources, args, message = INFEASIBLE[case]
    if case == "gpus":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: gpus_per_trial 1 is feasible here")
    err, took = _refused(tmp_path, ray_tmp, resources, *args)
    assert err.startswith("error: ") and message in err, err
    assert took < 90, f"refused after {took:.0f} s"
    print(f"\n{case}: refused in {took:.1f} s: {err[:160]}")
