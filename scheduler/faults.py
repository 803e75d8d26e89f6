"""Fault injection for the reliability tests (off unless the environment asks for it).

Every fault is set by an environment variable `BATCHLAB_FAULT_<NAME>`; `scheduler.runner`
ships every `BATCHLAB_FAULT_*` variable of the driver to the Ray tasks of a run, and
`scheduler.tasks.execute_trial` wraps `run_trial` in `inject(...)`. Nothing here runs, and
no hook is installed, when no such variable is set. See docs/reliability.md.

Which trials and attempts:
- `TRIAL_PREFIX`: only trials whose id starts with it (default: every trial).
- `PLAN`: JSON `{"<trial id prefix>": {"<NAME>": "<value>", ...}, ...}`: per-trial settings
  that override the plain variables for the trials whose id starts with a key (one grid,
  a different fault in each trial).
- `KILL_ATTEMPTS`: the attempts (1 = first run of the trial) the kill faults apply to,
  comma-separated (default "1").

Faults:
- `KILL_AT_EPOCH=N[,M,...]`: SIGKILL the worker process at the end of epoch N, after its
  validation and before its resume checkpoint is written (so the retry resumes from epoch
  N-1). With several epochs, the i-th applies to the i-th attempt of `KILL_ATTEMPTS`.
- `KILL_SEED=S` (with `KILL_MAX_STEP`, default 100): SIGKILL the worker process right after
  a random optimizer step of each attempt in `KILL_ATTEMPTS`: step `kill_step(S, trial_id,
  attempt, KILL_MAX_STEP)`, counted from the first step of that attempt (1-based).
- `OOM_AT_EPOCH=N`: raise `torch.cuda.OutOfMemoryError` at the end of epoch N (what a GPU
  that runs out of memory raises; `run_trial` lets it through on purpose).
- `NONFINITE_AT_STEP=K` (with `NONFINITE=nan|inf`, default nan): the K-th training step of
  the attempt (1-based) sees a NaN (or inf) batch, so its loss is non-finite.
- `NONFINITE_EVAL_AFTER_EPOCH=E`: every eval-mode forward pass after the end of epoch E
  returns NaN: with E < max_epochs the validation of epoch E+1 diverges; with E = max_epochs
  only the end-of-training probes (sharpness, Hessian) see NaN.
- `CRASH_WRITING=<path substring>`: read by `warehouse.layout.Layout.put_bytes` (the
  warehouse does not import the scheduler): a process writing a file whose path contains the
  substring writes half of the bytes to its hidden temporary file, then SIGKILLs itself (a
  writer that dies between write and rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

PREFIX = "BATCHLAB_FAULT_"


def active() -> bool:
    """Whether any fault variable is set in this process."""
    return any(k.startswith(PREFIX) for k in os.environ)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """No fault variable in this process for the block: the driver's own bookkeeping writes
    (a lost trial's `failed` row) are not the workers' writes the faults are aimed at."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(PREFIX)}
    try:
        yield
    finally:
        os.environ.update(saved)


def settings(trial_id: str) -> dict[str, str]:
    """The fault settings that apply to `trial_id`: `{NAME: value}` (names without the
    prefix), plain variables overridden by the first matching `PLAN` entry."""
    env = {k.removeprefix(PREFIX): v for k, v in os.environ.items() if k.startswith(PREFIX)}
    plan = env.pop("PLAN", "")
    if plan:
        for prefix, over in json.loads(plan).items():
            if trial_id.startswith(prefix):
                env.update({str(k): str(v) for k, v in over.items()})
                env.pop("TRIAL_PREFIX", None)
                return env
    if not trial_id.startswith(env.get("TRIAL_PREFIX", "")):
        return {}
    return env


def kill_step(seed: int, trial_id: str, attempt: int, max_step: int) -> int:
    """The optimizer step (1-based, counted from the attempt's first step) at which the
    seeded random kill of `attempt` fires: uniform in 1..max_step, a pure function of its
    arguments so a test can compute where each attempt died."""
    h = hashlib.sha256(f"{seed}/{trial_id}/{attempt}".encode()).digest()
    return 1 + int.from_bytes(h[:8], "big") % max_step


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _attempts(s: dict[str, str]) -> list[int]:
    return [int(a) for a in s.get("KILL_ATTEMPTS", "1").split(",") if a.strip()]


def kill_hook(trial_id: str, attempt: int) -> Callable[[dict[str, Any]], None] | None:
    """The `on_epoch` hook of `KILL_AT_EPOCH` for this attempt (None when it does not apply)."""
    s = settings(trial_id)
    if not s.get("KILL_AT_EPOCH"):
        return None
    attempts = _attempts(s)
    epochs = [int(e) for e in s["KILL_AT_EPOCH"].split(",")]
    if attempt not in attempts:
        return None
    epoch = epochs[attempts.index(attempt)] if len(epochs) > 1 else epochs[0]

    def hook(row: dict[str, Any]) -> None:
        if row["epoch"] == epoch:
            _die()

    return hook


@contextlib.contextmanager
def inject(trial_id: str, attempt: int) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """Install the faults that apply to this attempt of `trial_id` for the duration of the
    block; yields the `on_epoch` hook to pass to `run_trial` (None when there is none).

    Step-level faults use PyTorch's global hooks (`register_optimizer_step_post_hook`,
    `register_module_forward_pre_hook`), removed on exit: a Ray worker process that runs
    other trials afterwards is left clean.
    """
    s = settings(trial_id) if active() else {}
    if not s:
        yield None
        return
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handles = []
    state = {"steps": 0, "eval_nan": False}
    epoch_hooks: list[Callable[[dict[str, Any]], None]] = []

    if (h := kill_hook(trial_id, attempt)) is not None:
        epoch_hooks.append(h)
    kill_at = None
    if s.get("KILL_SEED") and attempt in _attempts(s):
        kill_at = kill_step(
            int(s["KILL_SEED"]), trial_id, attempt, int(s.get("KILL_MAX_STEP", "100"))
        )

    def after_step(opt, args, kwargs) -> None:
        state["steps"] += 1
        if kill_at is not None and state["steps"] == kill_at:
            _die()

    handles.append(register_optimizer_step_post_hook(after_step))

    nonfinite_at = int(s["NONFINITE_AT_STEP"]) if s.get("NONFINITE_AT_STEP") else None
    fill = math.inf if s.get("NONFINITE", "nan") == "inf" else math.nan
    eval_after = s.get("NONFINITE_EVAL_AFTER_EPOCH")

    if nonfinite_at is not None or eval_after:

        def before_forward(module, args):
            # Training forwards: the one of step `nonfinite_at` (steps done + 1). Eval-mode
            # forwards (validation, probes): every one once armed by the epoch hook below.
            hit = (module.training and state["steps"] + 1 == nonfinite_at) or (
                not module.training and state["eval_nan"]
            )
            if not hit:
                return None
            # `x * nan` / `x + inf`, not a new tensor: the autograd graph stays connected, so
            # backward still gives every parameter a (non-finite) gradient, as a real NaN does.
            return tuple(
                (a * fill if math.isnan(fill) else a + fill)
                if torch.is_tensor(a) and a.is_floating_point()
                else a
                for a in args
            )

        handles.append(register_module_forward_pre_hook(before_forward))

    if eval_after:
        arm_epoch = int(eval_after)

        def arm(row: dict[str, Any]) -> None:
            if row["epoch"] >= arm_epoch:
                state["eval_nan"] = True

        epoch_hooks.append(arm)

    if s.get("OOM_AT_EPOCH"):
        oom_epoch = int(s["OOM_AT_EPOCH"])

        def oom(row: dict[str, Any]) -> None:
            if row["epoch"] == oom_epoch:
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                    "BATCHLAB_FAULT_OOM_AT_EPOCH)"
                )

        epoch_hooks.append(oom)

    def on_epoch(row: dict[str, Any]) -> None:
        for hook in epoch_hooks:
            hook(row)

    try:
        yield on_epoch if epoch_hooks else None
    finally:
        for handle in handles:
            handle.remove()
