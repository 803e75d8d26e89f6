"""Every use of Ray by the scheduler, in one module: starting or joining Ray, the remote
tasks and their wrapper in the worker (node id, Ray version, attempt number), waiting for
results, the cluster's nodes and resources, tasks pinned to a node (the storage probe),
and Ray Train (data-parallel trials).

The rest of `scheduler/` is plain Python: it gets these functions passed in or imports this
module where it talks to Ray, so a test drives the grid's bookkeeping without Ray
(scheduler/dispatch.py `drain` takes any object with `wait` and `get`). Private Ray APIs
are used only where Ray has no public one, each said where it is.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
from ray.exceptions import NodeDiedError, WorkerCrashedError

# ---------------------------------------------------------------- starting or joining Ray


def is_initialized() -> bool:
    return ray.is_initialized()


def connect(address: str, quiet: bool = True) -> None:
    """Join the running Ray cluster at `address` ("auto": the one on this machine)."""
    ray.init(address=address, log_to_driver=not quiet)


def start_embedded(
    num_cpus: int | None, env_vars: dict[str, str], quiet: bool = True
) -> str | None:
    """Start a local Ray instance on 127.0.0.1 (`localhost_only`) whose workers get
    `env_vars`; returns its session folder (None when Ray does not say)."""
    with localhost_only():
        ctx = ray.init(
            num_cpus=num_cpus,
            runtime_env={"env_vars": env_vars},
            log_to_driver=not quiet,
            include_dashboard=False,
        )
    info = getattr(ctx, "address_info", None) or {}
    return info.get("session_dir")


# Ray picks a "remotely reachable" node IP even for a one-machine instance, so its agents
# (metrics export, dashboard agent, runtime-env agent) listen on the machine's network
# address, unauthenticated. Its own switch for one-machine mode (ray_constants
# .ENABLE_RAY_CLUSTER, from $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) makes the node IP 127.0.0.1,
# and every agent then binds 127.0.0.1 (ray/dashboard/agent.py, reporter_agent.py).
LOCAL_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def localhost_only() -> Iterator[None]:
    """While the embedded instance starts: node IP 127.0.0.1 for it and the processes it
    spawns (they inherit the environment), then the driver's settings back. Private API:
    Ray reads the switch from `ray._private.ray_constants`, and has no public one."""
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


def local_cpu_count() -> int:
    """The CPUs Ray would give an embedded instance on this machine (it honours cgroup
    limits). Private API: Ray has no public one; falls back to this process's affinity."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except Exception:
        return len(os.sched_getaffinity(0))


# ------------------------------------------------------------------- tasks and results


def remote(fn: Callable[..., Any], **options: Any) -> Any:
    """`fn` as a Ray remote function with these options (num_cpus, max_retries, ...)."""
    return ray.remote(fn).options(**options)


def shutdown() -> None:
    """Stop this driver's running trials now and disconnect; quiet when Ray's own processes
    are already gone (after SIGTERM to the whole process group).

    The embedded instance's worker processes (named `ray::...`, descendants of this driver)
    are SIGKILLed first: `ray.shutdown` alone stops them gracefully, which took 8-9 s after
    SIGTERM, long enough for the running trials to finish and commit (a run stopped this way
    committed all 12 of its trials). A trial killed mid-way leaves nothing half-written
    (commits are atomic renames), exactly as a killed worker does. On a cluster the driver has
    no such descendants: its job's workers are killed by Ray when it disconnects."""
    with contextlib.suppress(Exception):
        import psutil  # a dependency of Ray

        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error, IndexError):
                if proc.cmdline()[0].startswith("ray::"):
                    proc.kill()
    with contextlib.suppress(Exception):
        ray.shutdown()


def wait(refs: Sequence[Any], timeout: float = 1.0) -> list[Any]:
    """The refs among `refs` whose tasks ended, at most one, waiting up to `timeout` s."""
    done, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
    return done


def get(ref: Any) -> Any:
    """The value of a finished task; raises what the task raised (Ray's wrapping)."""
    return ray.get(ref)


def get_all(refs: Sequence[Any]) -> list[Any]:
    return ray.get(list(refs))


def run_all(fn: Callable[..., Any], calls: Sequence[tuple[tuple, dict]], **options: Any) -> list:
    """Run `fn(*args, **kwargs)` for each call as Ray tasks with `options`, at once, and
    return their values in order (analyses)."""
    task = remote(fn, **options)
    return get_all([task.remote(*a, **kw) for a, kw in calls])


def worker_died(exc: BaseException) -> bool:
    """Whether a task's exception says its worker process or node died."""
    return isinstance(exc, (WorkerCrashedError, NodeDiedError))


def ray_task(fn: Callable[..., Any], *args: Any, attempt_base: int | None = None, **kwargs: Any):
    """Runs in a Ray worker: calls `fn` with the node id and Ray version for the
    provenance, and, when `attempt_base` is given and `fn` takes an `attempt`, the trial's
    attempt number (`attempt_base` + `ray_attempt()`)."""
    ctx = ray.get_runtime_context()
    if attempt_base is not None and "attempt" in inspect.signature(fn).parameters:
        kwargs["attempt"] = attempt_base + ray_attempt()
    return fn(*args, node_id=ctx.get_node_id(), ray_version=ray.__version__, **kwargs)


def ray_attempt() -> int:
    """This execution's number among the executions of the running Ray task (1 first; Ray
    counts every retry, also of a worker killed while it was starting or unpickling the
    arguments, before any trial code ran). The driver adds the executions of earlier
    submissions of the same trial (`retry_failed`), so an attempt counts what *this run*
    tried: two concurrent runs of one grid each give a never-retried trial attempt 1.
    Private API: the runtime context has no public attempt number."""
    try:
        worker = ray._private.worker.global_worker
        return 1 + int(worker.core_worker.get_current_task_attempt_number())
    except Exception:  # not in a Ray task (tests call the function directly)
        return 1


def node_id() -> str:
    """The id of the node this process runs on (in a task: the task's node)."""
    return ray.get_runtime_context().get_node_id()


def driver_node_id() -> str | None:
    """The driver's node id; None for a Ray Client driver (outside the cluster)."""
    try:
        return node_id()
    except Exception:
        return None


def version() -> str:
    return ray.__version__


# ------------------------------------------------------------------------- the cluster


def cluster_resources() -> dict[str, float]:
    return ray.cluster_resources()


def alive_node_table() -> list[dict[str, Any]]:
    """`ray.nodes()` entries of the alive nodes."""
    return [n for n in ray.nodes() if n.get("Alive")]


def run_on_nodes(
    fn: Callable[..., Any], args: tuple, node_ids: Sequence[str], timeout_s: float
) -> tuple[dict[str, Any], list[str]]:
    """Run `fn(*args)` once on each node (a zero-CPU task pinned there) and wait up to
    `timeout_s` for all. Returns ({node id: value, or the exception it raised}, the node ids
    that did not answer in time; their tasks are force-cancelled)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(fn)
    refs = {
        task.options(
            num_cpus=0,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False),
        ).remote(*args): n
        for n in node_ids
    }
    ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in not_ready:  # a probe, not a trial: no result on its way to race with
        ray.cancel(ref, force=True)
    answers: dict[str, Any] = {}
    for ref in ready:
        try:
            answers[refs[ref]] = ray.get(ref)
        except Exception as exc:
            answers[refs[ref]] = exc
    return answers, [refs[r] for r in not_ready]


# --------------------------------------------------------------------------- Ray Train


def train_context() -> tuple[int, int, str]:
    """In a Ray Train worker: (world rank, world size, torch device of this worker)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), str(ray.train.torch.get_device())


def fit_torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    *,
    name: str,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    max_failures: int,
    storage_path: str,
) -> None:
    """Run `loop(config)` on `num_workers` Ray Train workers (DDP: NCCL on GPUs, gloo on
    CPU); Ray Train restarts the group up to `max_failures` times when a worker dies."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    ).fit()
