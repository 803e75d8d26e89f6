"""Starting or joining Ray for a run (`init_ray`): the embedded local instance on
127.0.0.1 with its watchdog, the driver's SIGTERM/SIGHUP handlers installed after
`ray.init`, and the one node such an instance would have (`embedded_node`, for the
resource checks before it starts). Split out of scheduler/runner.py, which re-exports
`init_ray`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from scheduler import interrupts


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> str:
    """Connect to `address` / $RAY_ADDRESS, or start the embedded local Ray instance.
    Returns a description of what it connected to."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return "already connected"
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "include_dashboard": False}
    if address:
        ray.init(address=address, log_to_driver=not quiet)
        interrupts.install()  # after ray.init, which sets SIGTERM to sys.exit
        return f"Ray cluster at {address}"
    # Worker processes need the project importable; in a source checkout that is not
    # installed, ship the path through the runtime environment.
    project = str(Path(__file__).resolve().parent.parent)
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH", "")) if p)
    }
    for k, v in os.environ.items():
        if k.startswith("BATCHLAB_"):
            env[k] = v
    with localhost_only():
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env}, **kwargs)
    interrupts.install()  # after ray.init, which sets SIGTERM to sys.exit
    from scheduler.watchdog import start_watchdog

    start_watchdog()
    return "embedded local Ray instance"


# Ray picks a "remotely reachable" node IP even for a one-machine instance, so its agents
# (metrics export, dashboard agent, runtime-env agent) listen on the machine's network
# address, unauthenticated. Its own switch for one-machine mode (ray_constants
# .ENABLE_RAY_CLUSTER, from $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) makes the node IP 127.0.0.1,
# and every agent then binds 127.0.0.1 (ray/dashboard/agent.py, reporter_agent.py).
LOCAL_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def localhost_only():
    """While the embedded instance starts: node IP 127.0.0.1 for it and the processes it
    spawns (they inherit the environment), then the driver's settings back."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(LOCAL_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(LOCAL_ENV, None)
        else:
            os.environ[LOCAL_ENV] = old_env


def embedded_node(num_cpus: int | None, gpus_wanted: float):
    """The one node an embedded Ray instance would have (Ray's own CPU count, which honours
    cgroup limits; GPUs as torch sees them, looked up only when the grid wants some)."""
    from scheduler.cluster import NodeInfo

    if num_cpus is None:
        try:
            from ray._private.utils import get_num_cpus

            num_cpus = get_num_cpus()
        except Exception:
            num_cpus = len(os.sched_getaffinity(0))
    gpus = 0
    if gpus_wanted > 0:
        import torch

        gpus = torch.cuda.device_count()
    return NodeInfo("embedded", "127.0.0.1", "localhost", float(num_cpus), float(gpus))
