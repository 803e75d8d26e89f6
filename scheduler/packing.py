"""Trial packs: group a grid's trials by shape, size the packs, run them on Ray.

With `resources.pack: true`, trials that share `TrialConfig.shape_key()` (data set, model,
batch size, optimizer: everything that fixes tensor shapes and the update rule) are trained
together by one worker as a vectorized ensemble (`workers/pack.py`, docs/packs.md).

Pack size: at most `resources.max_pack_size`, and
- on a GPU, as many members as fit in MEMORY_FRACTION of the GPU's free memory, from the
  bytes per member *measured* on the GPU by one probe task per run (`measure_packs`: one
  training step of packs of 1 and 2 members per shape), at most GPU_MAX_PACK;
- on CPU, at most CPU_MAX_PACK (a CPU gains little from packing; bigger packs only delay
  results).
A group larger than the size is cut into equal packs. The Ray request of a pack: on a GPU,
the larger of (gpus_per_trial x members) and the pack's share of the GPU's memory, at most 1;
CPUs: cpus_per_trial. A pack's torch threads are `trial_threads(cpus_per_trial)`, as a lone
trial's: never a function of the cluster's CPUs or of the packs running beside it (CPU
reductions sum in an order set by the thread count, so a trial's numbers would depend on
the grid it ran in).
A CUDA out-of-memory error re-queues the pack's unfinished members as two halves.

The planning functions here are pure (tested without Ray); `execute_packs` is the loop over
pack tasks, called by `scheduler.execute.execute`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.dispatch import TaskArgs, drain, task_env
from workers.config import TrialConfig

GPU_MAX_PACK = 64  # members; beyond this small-batch throughput stops growing (PERFORMANCE.md)
CPU_MAX_PACK = 8  # members
MEMORY_FRACTION = 0.85  # of the GPU's free memory a pack may plan to use
CUDA_CONTEXT_BYTES = 600 * 2**20  # per worker process, on top of allocated memory


@dataclass(frozen=True, eq=False)
class Pack:
    """Trials trained together; its id is a hash of the member trial ids."""

    trials: tuple[TrialConfig, ...]

    @property
    def pack_id(self) -> str:
        ids = ",".join(sorted(t.trial_id for t in self.trials))
        return hashlib.sha256(ids.encode()).hexdigest()[:16]

    @property
    def shape_key(self) -> str:
        return self.trials[0].shape_key()

    def __len__(self) -> int:
        return len(self.trials)

    def halves(self) -> tuple[Pack, Pack]:
        """The pack split in two (for an out-of-memory retry); needs at least 2 members."""
        if len(self.trials) < 2:
            raise ValueError("a pack of one trial cannot be split")
        mid = (len(self.trials) + 1) // 2
        return Pack(self.trials[:mid]), Pack(self.trials[mid:])

    def cost(self) -> float:
        """Relative work, to start the longest packs first: members x steps."""
        t = self.trials[0]
        return len(self.trials) * max(c.max_epochs for c in self.trials) / t.batch_size


def group_by_shape(trials: Sequence[TrialConfig]) -> dict[str, list[TrialConfig]]:
    """Trials by shape key, groups and members in grid order."""
    groups: dict[str, list[TrialConfig]] = {}
    for t in trials:
        groups.setdefault(t.shape_key(), []).append(t)
    return groups


def chunk(trials: Sequence[TrialConfig], max_size: int) -> list[Pack]:
    """Cut one shape group into the fewest packs of at most `max_size`, of equal sizes
    (100 trials at most 64 -> 50 + 50, not 64 + 36: both packs finish together)."""
    if max_size < 1:
        raise ValueError(f"max_size: {max_size} is not allowed: a pack holds at least 1 trial")
    k = math.ceil(len(trials) / max_size)
    base, extra = divmod(len(trials), k)
    out, i = [], 0
    for j in range(k):
        size = base + (1 if j < extra else 0)
        out.append(Pack(tuple(trials[i : i + size])))
        i += size
    return out


@dataclass
class GpuFacts:
    """What the probe task measured on a GPU (see scheduler/pack_tasks.measure_packs)."""

    free_bytes: int
    total_bytes: int
    data_bytes: dict[str, int] = field(default_factory=dict)  # dataset config JSON -> bytes
    members: dict[str, tuple[int, int]] = field(default_factory=dict)  # shape key -> per, fixed
    device_name: str = ""

    def pack_bytes(self, t: TrialConfig, n: int) -> int:
        per, fixed = self.members[t.shape_key()]
        return self.data_bytes.get(t.dataset.model_dump_json(), 0) + fixed + n * per

    def max_members(self, t: TrialConfig) -> int:
        """Members of `t`'s shape that fit in MEMORY_FRACTION of the free memory."""
        per = self.members[t.shape_key()][0]
        room = MEMORY_FRACTION * self.free_bytes - self.pack_bytes(t, 0) - CUDA_CONTEXT_BYTES
        return max(1, int(room // per))


def pack_size(
    trials: Sequence[TrialConfig], device: str, max_pack_size: int | None, gpu: GpuFacts | None
) -> int:
    """Members per pack for one shape group (see the module docstring)."""
    cap = CPU_MAX_PACK if device == "cpu" else GPU_MAX_PACK
    if max_pack_size is not None:
        cap = max_pack_size
    if device != "cpu" and gpu is not None:
        cap = min(cap, gpu.max_members(trials[0]))
    return max(1, min(cap, len(trials)))


# Fault-injection settings (scheduler/faults.py) that hook a lone trial's optimizer steps
# and forwards; packs do not have those hooks, so `pack: auto` trains lone while one is set.
STEP_FAULTS = ("KILL_SEED", "OOM_AT_EPOCH", "NONFINITE_AT_STEP", "NONFINITE_EVAL_AFTER_EPOCH")


def split_for_packs(
    trials: Sequence[TrialConfig], pack: bool | str
) -> tuple[list[TrialConfig], list[TrialConfig]]:
    """(trials trained in packs, trials trained alone) for `resources.pack`.

    `true`: every trial but the data-parallel ones is packed (a group of one is a pack of
    one). `auto` (the default): only shape groups of at least 2 trials that a pack can train:
    not data-parallel, not the user's own training loop (`trainable`), no budget a pack
    cannot train (`TrialConfig.unpackable_reason`: stop:, until:, measure.at best), no step-level
    fault injection set (STEP_FAULTS); the rest trains alone, exactly as with `false`. A user
    model that PackNet and torch.func cannot batch is found out in the pack's worker, which
    then trains its members one after another as lone trials (`pack_id` empty)."""
    if pack is False:
        return [], list(trials)
    if pack is True:
        return (
            [t for t in trials if t.data_parallel_workers == 1],
            [t for t in trials if t.data_parallel_workers > 1],
        )
    if _step_faults_set():
        return [], list(trials)
    packed: list[TrialConfig] = []
    for group in group_by_shape(trials).values():
        ok = [
            t
            for t in group
            if t.data_parallel_workers == 1 and t.trainable is None and t.unpackable_reason is None
        ]
        if len(ok) >= 2:
            packed += ok
    ids = {t.trial_id for t in packed}
    return packed, [t for t in trials if t.trial_id not in ids]


def _step_faults_set() -> bool:
    env = {
        k.removeprefix("BATCHLAB_FAULT_"): v
        for k, v in os.environ.items()
        if k.startswith("BATCHLAB_FAULT_")
    }
    names = set(env)
    if env.get("PLAN"):
        with contextlib.suppress(ValueError, AttributeError):  # faults.py reports a bad PLAN
            names |= {n for v in json.loads(env["PLAN"]).values() for n in v}
    return any(n in names for n in STEP_FAULTS)


def plan_packs(
    trials: Sequence[TrialConfig], device: str, max_pack_size: int | None, gpu: GpuFacts | None
) -> list[Pack]:
    """All packs of a grid, the most expensive first."""
    packs = []
    for group in group_by_shape(trials).values():
        packs += chunk(group, pack_size(group, device, max_pack_size, gpu))
    return sorted(packs, key=lambda p: -p.cost())


def trial_threads(cpus_per_trial: float) -> int:
    """The intra-op torch threads of a lone trial and of a pack: from `cpus_per_trial`
    only, so a trial computes the same numbers in any grid, pack, cluster or resume."""
    return max(1, int(cpus_per_trial))


def pack_resources(
    pack: Pack, cpus_per_trial: float, gpus_per_trial: float, device: str, gpu: GpuFacts | None
) -> tuple[float, float]:
    """(num_cpus, num_gpus) a pack asks Ray for (see the module docstring).

    On CPU: `cpus_per_trial`, the pack's threads (`trial_threads`), whatever the pack's
    size, the cluster's CPUs or the number of packs: one single-threaded pack per core by
    default (small ops do not scale over threads: docs/packs.md, the CPU profile). It used to be cpus_per_trial x
    members, at most the cluster's CPUs over the packs, and the same number of threads,
    which made a trial's numbers depend on the grid it ran in (issue 24)."""
    n = len(pack)
    if device == "cpu":
        return cpus_per_trial, 0.0
    share = gpus_per_trial * n
    if gpu is not None and gpu.total_bytes > 0:
        need = gpu.pack_bytes(pack.trials[0], n) + CUDA_CONTEXT_BYTES
        share = max(share, need / (MEMORY_FRACTION * gpu.total_bytes))
    # Ray accepts fractions of a GPU to 4 decimals; round up so the share is never short.
    return cpus_per_trial, min(1.0, math.ceil(max(share, 1e-4) * 1e4) / 1e4)


# ================================================================ the loop over pack tasks


def execute_packs(
    spec: Any,
    trials: list[TrialConfig],
    layout: Any,
    report: Any,
    progress: bool,
    out: Any,
    *,
    task: TaskArgs,
    backend: Any,
) -> None:
    """Run `trials` as packs on the connected task system (scheduler/ray_backend.py);
    fills `report` as the lone-trial loop of scheduler/execute.py does. `task`: the
    arguments every pack task gets (scheduler/dispatch.py)."""
    from scheduler.progress import EpochBar

    gpu = measure_gpu(spec, trials, out, task.device, backend)
    packs = plan_packs(trials, task.device, spec.resources.max_pack_size, gpu)
    print(
        f"{len(trials)} trials in {len(packs)} packs (sizes "
        f"{', '.join(str(len(p)) for p in packs)})",
        file=out,
    )
    loop = PackLoop(spec, task, gpu, report, backend, out)
    for p in packs:
        loop.submit(p)
    loop.bar = EpochBar(layout, spec.experiment, trials, enabled=progress, out=out)

    def cancelled() -> None:
        report.cancelled = True
        print(
            "\ncancelled: running packs were stopped; finished members are stored. "
            "Run the same command again to resume.",
            file=out,
        )

    try:
        drain(backend, loop.pending, loop.on_result, poll=loop.bar.poll, on_cancel=cancelled)
    finally:
        loop.bar.close()
        report.counts = loop.counts


def measure_gpu(
    spec: Any, trials: list[TrialConfig], out: Any, device: str, backend: Any
) -> GpuFacts | None:
    """On a GPU: what one probe task measures there (scheduler/pack_tasks.measure_packs),
    for sizing the packs; None on CPU."""
    if device == "cpu":
        return None
    from scheduler.pack_tasks import measure_packs

    if not backend.cluster_resources().get("GPU"):
        raise RuntimeError(
            f"resources.device is {device!r} but the Ray cluster has no GPU "
            f"({backend.cluster_resources()}); set resources.device: cpu or connect to a GPU "
            "cluster (--address)"
        )
    one_per_shape = [g[0].model_dump_json() for g in group_by_shape(trials).values()]
    probe = backend.remote(measure_packs, num_cpus=spec.resources.cpus_per_trial, num_gpus=1)
    facts = backend.get(probe.remote(one_per_shape, "cuda", spec.data_dir))
    gpu = GpuFacts(
        facts["free_bytes"],
        facts["total_bytes"],
        facts["data_bytes"],
        {k: tuple(v) for k, v in facts["members"].items()},
        facts.get("device_name", ""),
    )
    print(
        f"GPU {gpu.device_name}: {gpu.free_bytes / 2**30:.1f} GiB free; measured MiB per "
        "pack member: " + ", ".join(f"{v[0] / 2**20:.0f}" for v in gpu.members.values()),
        file=out,
    )
    return gpu


class PackLoop:
    """The driver's bookkeeping of a run's pack tasks: submissions, retries of failed
    members (`retry_failed`), out-of-memory splits, the run's counts and results."""

    def __init__(
        self,
        spec: Any,
        task: TaskArgs,
        gpu: GpuFacts | None,
        report: Any,
        backend: Any,
        out: Any,
    ) -> None:
        self.spec, self.task, self.gpu, self.report = spec, task, gpu, report
        self.backend, self.out = backend, out
        self.env = task_env()
        self.pending: dict[Any, Pack] = {}
        self.tries: dict[str, int] = {}
        self.counts = {"completed": 0, "diverged": 0, "failed": 0}
        self.said: set[str] = set()  # reasons a pack trained its members alone, said once
        self.bar: Any = None

    def submit(self, p: Pack) -> None:
        from scheduler.pack_tasks import execute_pack

        r = self.spec.resources
        for t in p.trials:
            self.tries[t.trial_id] = self.tries.get(t.trial_id, 0) + 1
        cpus, gpus = pack_resources(
            p, r.cpus_per_trial, r.gpus_per_trial, self.task.device, self.gpu
        )
        remote = self.backend.remote(
            self.backend.ray_task,
            num_cpus=cpus,
            num_gpus=gpus,
            max_retries=r.max_retries,
            retry_exceptions=False,
            **self.env,
        )
        ref = remote.remote(
            execute_pack,
            [t.model_dump_json() for t in p.trials],
            self.task.experiment,
            self.task.root,
            pack_id=p.pack_id,
            attempt_base=0,
            **self.task.options(),  # num_threads: trial_threads(cpus_per_trial), as lone
        )
        self.pending[ref] = p

    def finish(self, rec: dict[str, Any]) -> None:
        self.counts[rec["status"]] = self.counts.get(rec["status"], 0) + 1
        self.report.results.append(rec)
        self.bar.finished(rec)

    def on_result(self, p: Pack, res: Any, exc: Exception | None) -> None:
        r = self.spec.resources
        if exc is not None:  # the task failed: worker died too often, storage error
            res = {"members": [failed_member(t, exc, p) for t in p.trials], "oom": []}
        if (why := res.get("unsupported")) and why not in self.said:
            self.said.add(why)
            self.bar.bar.write(
                f"packs of this shape train one trial at a time: {why}", file=self.out
            )
        by_id = {t.trial_id: t for t in p.trials}
        retry = []
        for rec in res["members"]:
            if rec["status"] == "failed" and self.tries[rec["trial_id"]] <= r.retry_failed:
                retry.append(by_id[rec["trial_id"]])
                continue
            self.finish(rec)
        if retry:
            self.submit(Pack(tuple(retry)))
        if not res["oom"]:
            return
        left = Pack(tuple(TrialConfig.model_validate_json(j) for j in res["oom"]))
        if len(left) > 1:
            a, b = left.halves()
            print(
                f"pack {p.pack_id}: CUDA out of memory, re-queued as two packs of "
                f"{len(a)} and {len(b)}",
                file=self.out,
            )
            for half in (a, b):
                for t in half.trials:
                    self.tries[t.trial_id] -= 1  # a split is not a retry
                self.submit(half)
        else:
            t = left.trials[0]
            self.finish(failed_member(t, "CUDA out of memory with a single trial in the pack", p))


def failed_member(t: TrialConfig, exc: BaseException | str, p: Pack) -> dict[str, Any]:
    """The driver's record of a pack member whose task failed."""
    if isinstance(exc, BaseException):
        lines = str(exc).strip().splitlines()
        exc = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return {"trial_id": t.trial_id, "status": "failed", "error": exc, "pack_id": p.pack_id}
