"""Starting or joining Ray for a run (`init_ray`): the embedded local instance on
127.0.0.1 with its watchdog, the driver's SIGTERM/SIGHUP handlers installed after
`ray.init`, and the one node such an instance would have (`embedded_node`, for the
resource checks before it starts). Ray itself is called through scheduler/ray_backend.py;
scheduler/runner.py re-exports `init_ray`."""

from __future__ import annotations

import os
from pathlib import Path

from scheduler import interrupts
from scheduler.cluster import NodeInfo


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> str:
    """Connect to `address` / $RAY_ADDRESS, or start the embedded local Ray instance.
    Returns a description of what it connected to."""
    import scheduler.ray_backend as ray_backend

    address = address or os.environ.get("RAY_ADDRESS")
    if ray_backend.is_initialized():
        return "already connected"
    if address:
        ray_backend.connect(address, quiet)
        interrupts.install()  # after ray.init, which sets SIGTERM to sys.exit
        return f"Ray cluster at {address}"
    session = ray_backend.start_embedded(num_cpus, worker_env(), quiet)
    interrupts.install()  # after ray.init, which sets SIGTERM to sys.exit
    from scheduler.watchdog import start_watchdog

    start_watchdog(session)
    return "embedded local Ray instance"


def worker_env() -> dict[str, str]:
    """The environment of an embedded instance's workers: the project importable (a source
    checkout that is not installed ships its path) and every BATCHLAB_* variable."""
    project = str(Path(__file__).resolve().parent.parent)
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH", "")) if p)
    }
    for k, v in os.environ.items():
        if k.startswith("BATCHLAB_"):
            env[k] = v
    return env


def embedded_node(num_cpus: int | None, gpus_wanted: float) -> NodeInfo:
    """The one node an embedded Ray instance would have (Ray's own CPU count, which honours
    cgroup limits; GPUs as torch sees them, looked up only when the grid wants some)."""
    if num_cpus is None:
        from scheduler.ray_backend import local_cpu_count

        num_cpus = local_cpu_count()
    gpus = 0
    if gpus_wanted > 0:
        import torch

        gpus = torch.cuda.device_count()
    return NodeInfo("embedded", "127.0.0.1", "localhost", float(num_cpus), float(gpus))
