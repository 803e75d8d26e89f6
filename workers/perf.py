"""How the device executes a trial: the `performance:` switches (docs/grid.md), applied with a
CPU fallback for each, and a record of what was actually in effect (the trial's `perf_json`).

- `applied(perf, dev)`: a context for one trial or one pack. It sets the process-global
  numerics flags (TF32 for matmuls and cuDNN convolutions, cuDNN autotuning) on CUDA and puts
  back what was there on exit, so a Ray worker process that trains many trials never leaks one
  trial's flags into the next. It yields the record the other functions fill in.
- `training_forward(...)`: the lone trial's training forward (channels_last, torch.compile,
  CUDA graphs). With every switch off it returns the module itself, so the default training
  step is the very same call as before these switches existed (bit-identical results).
- `prepare_pack(...)`: what a pack can use (channels_last in PackNet's convolutions); the
  rest is recorded as not applied, with the reason.

Nothing here raises because a switch cannot be honoured: compiling or capturing is tried on
a sample batch before training (model, buffers, gradients and RNG put back afterwards), and a
failure falls back to eager execution with the reason in the record.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from workers.config import PerformanceConfig

# torch >= 2.9 controls TF32 with `fp32_precision` ("tf32" / "ieee"); older torch with
# `allow_tf32` (setting the old flags on a new torch warns, mixing both is refused).
_NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")
_GRAPHING_MODES = ("reduce-overhead", "max-autotune")  # inductor captures CUDA graphs itself
_NOTE_CHARS = 300  # a fallback's reason, first line, at most this long


def new_record(perf: PerformanceConfig, dev: torch.device) -> dict[str, Any]:
    """The record of one trial: what was asked, what was in effect, and why not (notes)."""
    off = (
        "tf32_matmul",
        "tf32_cudnn_conv",
        "cudnn_benchmark",
        "compile",
        "channels_last",
        "cuda_graphs",
    )
    return {
        "requested": perf.model_dump(mode="json"),
        "device": dev.type,
        "in_effect": dict.fromkeys(off, False),
        "notes": {},
    }


def to_json(record: dict[str, Any]) -> str:
    """The record as the trials row stores it (`perf_json`: key-sorted compact JSON)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:_NOTE_CHARS]


# ============================================================================ global numerics


def _tf32_now() -> tuple[bool, bool]:
    """(matmul, cuDNN convolution) TF32 as torch will run them now."""
    if _NEW_TF32_API:
        # "none" inherits the parent setting (torch.backends.fp32_precision), "none" there
        # meaning full fp32.
        top = torch.backends.fp32_precision
        m = torch.backends.cuda.matmul.fp32_precision
        c = torch.backends.cudnn.conv.fp32_precision
        if c == "none":
            c = torch.backends.cudnn.fp32_precision
        return (m if m != "none" else top) == "tf32", (c if c != "none" else top) == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def _snapshot() -> tuple[Any, ...]:
    if _NEW_TF32_API:
        flags: tuple[Any, ...] = (
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
        )
    else:
        flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    return (*flags, torch.backends.cudnn.benchmark)


def _restore(saved: tuple[Any, ...]) -> None:
    matmul, conv, bench = saved
    if _NEW_TF32_API:
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.conv.fp32_precision = conv
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv
    torch.backends.cudnn.benchmark = bench


def _set_tf32(on: bool) -> None:
    if _NEW_TF32_API:
        mode = "tf32" if on else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


@contextlib.contextmanager
def applied(perf: PerformanceConfig, dev: torch.device) -> Iterator[dict[str, Any]]:
    """Set TF32 / cuDNN autotuning for the duration of one trial or pack (CUDA only; on CPU
    they do not exist and are recorded as such) and restore the previous flags on exit.
    Yields the trial's record (`new_record`)."""
    rec = new_record(perf, dev)
    notes, eff = rec["notes"], rec["in_effect"]
    if dev.type != "cuda":
        if perf.tf32 is not None:
            notes["tf32"] = "cpu: TF32 is a CUDA tensor-core format; full fp32"
        if perf.cudnn_benchmark:
            notes["cudnn_benchmark"] = "cpu: no cuDNN"
        yield rec
        return
    saved = _snapshot()
    try:
        if perf.tf32 is not None:
            _set_tf32(perf.tf32)
        if perf.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        eff["tf32_matmul"], eff["tf32_cudnn_conv"] = _tf32_now()
        eff["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        if perf.tf32 is None:
            notes["tf32"] = "torch defaults (not set by batchlab)"
        yield rec
    finally:
        _restore(saved)


def not_applied(
    rec: dict[str, Any],
    perf: PerformanceConfig,
    why: str,
    keys: tuple[str, ...] = ("compile", "channels_last", "cuda_graphs"),
) -> None:
    """Record that the per-model switches `keys` that were asked for did not apply to this
    trial, and why (a trainable, a pack, ...)."""
    for key in keys:
        if getattr(perf, key) and key not in rec["notes"]:
            rec["notes"][key] = why


# ============================================================================ lone trials


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def _no_side_effects(model: nn.Module, dev: torch.device) -> Iterator[None]:
    """Run a trial forward/backward (compiling, capturing) and leave no trace of it: the
    parameters and buffers (BatchNorm running statistics) are copied back in place, the
    gradients cleared and the RNG states (dropout) restored, so training then starts exactly
    where it would have started without it."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng_cpu = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(state[k])
        for p in model.parameters():
            p.grad = None
        torch.set_rng_state(rng_cpu)
        if rng_cuda is not None:
            torch.cuda.set_rng_state(rng_cuda, dev)


def _sample_batches(x: Tensor, y: Tensor, batch_size: int, n: int) -> list[tuple[Tensor, Tensor]]:
    """One sample batch of each shape training will see: the full batch and, when the epoch
    ends on a partial batch, that one too (each shape is its own compiled graph)."""
    sizes = [min(batch_size, x.shape[0])]
    rest = n % batch_size
    if rest > 1 and rest != sizes[0]:  # steps_per_epoch drops a lone last example
        sizes.append(rest)
    return [(x[:s], y[:s]) for s in sizes]


def training_forward(
    perf: PerformanceConfig,
    rec: dict[str, Any],
    model: nn.Module,
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch_size: int,
    n_train: int,
    dev: torch.device,
    *,
    data_parallel: bool = False,
) -> Callable[[Tensor], Tensor]:
    """The forward the lone trial's training step calls (`net` itself when every switch is
    off). `model` is the raw module, `net` what the step calls (the same module, or its DDP
    wrapper); `x`, `y` device-resident training examples for the sample batches."""
    notes, eff = rec["notes"], rec["in_effect"]
    if data_parallel:
        not_applied(rec, perf, "not applied to data-parallel trials (DDP): eager")
        return net
    prep: Callable[[Tensor], Tensor] | None = None
    if perf.channels_last:
        if has_conv2d(model) and x.dim() == 4:
            # NHWC weights and batches: tensor cores read convolutions in this layout without
            # transposes (the airbench recipe). Parameters keep their identity (`.data` is
            # swapped), so the optimizer, the init copy and checkpoints are unaffected.
            model.to(memory_format=torch.channels_last)
            eff["channels_last"] = True

            def prep(xb: Tensor) -> Tensor:
                return xb.contiguous(memory_format=torch.channels_last)
        else:
            notes["channels_last"] = "no Conv2d on image batches (an MLP or 1-D convolutions)"
    call: Callable[[Tensor], Tensor] = net
    samples = _sample_batches(x, y, batch_size, n_train)
    if perf.compile:
        call = _compiled(perf, rec, model, net, samples, prep, loss_fn, dev)
    if perf.cuda_graphs:
        if dev.type != "cuda":
            notes["cuda_graphs"] = "cpu: CUDA graphs need a CUDA device; eager"
        elif eff["compile"]:
            notes["cuda_graphs"] = (
                "not applied: torch.compile is on (compile: reduce-overhead captures CUDA "
                "graphs itself)"
            )
        else:
            call = _graphed(rec, model, net, samples[0], prep, loss_fn, dev)
    if prep is None:
        return call
    return lambda xb: call(prep(xb))


def _compiled(
    perf: PerformanceConfig,
    rec: dict[str, Any],
    model: nn.Module,
    net: nn.Module,
    samples: list[tuple[Tensor, Tensor]],
    prep: Callable[[Tensor], Tensor] | None,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    dev: torch.device,
) -> Callable[[Tensor], Tensor]:
    """torch.compile of `net`, compiled for every sample shape before training (forward and
    backward: AOTAutograd compiles the backward at its first call), else `net` with the reason.
    Shapes are static (dynamic=False): at most two graphs per trial, full and last batch."""
    mode = "default" if perf.compile is True else str(perf.compile)
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(net, mode=mode, dynamic=False)
        with _no_side_effects(model, dev):
            for xb, yb in samples:
                if mode in _GRAPHING_MODES:
                    torch.compiler.cudagraph_mark_step_begin()
                loss_fn(compiled(prep(xb) if prep else xb), yb).backward()
    except torch.cuda.OutOfMemoryError:
        raise  # the scheduler splits packs / retries on OOM: never hidden by a fallback
    except Exception as exc:  # no compiler, unsupported op, no C++ toolchain...
        rec["notes"]["compile"] = f"fell back to eager: {_reason(exc)}"
        return net
    rec["in_effect"]["compile"] = mode
    rec["compile_s"] = time.perf_counter() - t0
    state = {"fn": compiled}

    def call(xb: Tensor) -> Tensor:
        fn = state["fn"]
        if fn is net:
            return net(xb)
        try:
            if mode in _GRAPHING_MODES:
                # A new training iteration: the previous step's graph outputs may be reused.
                torch.compiler.cudagraph_mark_step_begin()
            return fn(xb)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a recompilation that fails (a shape not seen above)
            rec["in_effect"]["compile"] = False
            rec["notes"]["compile"] = f"fell back to eager during training: {_reason(exc)}"
            state["fn"] = net
            return net(xb)

    return call


class _Whole(nn.Module):
    """A hook-free module around `net` for make_graphed_callables (which patches the forward
    of what it is given: `net` itself stays an ordinary module for evaluation and probes)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _graphed(
    rec: dict[str, Any],
    model: nn.Module,
    net: nn.Module,
    sample: tuple[Tensor, Tensor],
    prep: Callable[[Tensor], Tensor] | None,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    dev: torch.device,
) -> Callable[[Tensor], Tensor]:
    """The full-batch training forward + backward captured as CUDA graphs
    (torch.cuda.make_graphed_callables: one launch per pass instead of one per kernel, what
    small batches are bound by). Other shapes (the last partial batch) and eval mode run
    eagerly. Capture warms up on the sample batch; its effects are undone."""
    xs = sample[0]
    xs = prep(xs) if prep else xs
    shape = tuple(xs.shape)
    t0 = time.perf_counter()
    try:
        with _no_side_effects(model, dev):
            graphed = torch.cuda.make_graphed_callables(_Whole(net), (xs.clone(),))
            loss_fn(graphed(xs), sample[1]).backward()  # one replay: fails here, not mid-run
            torch.cuda.synchronize(dev)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        rec["notes"]["cuda_graphs"] = f"fell back to eager: {_reason(exc)}"
        return net
    rec["in_effect"]["cuda_graphs"] = True
    rec["capture_s"] = time.perf_counter() - t0

    def call(xb: Tensor) -> Tensor:
        if tuple(xb.shape) == shape and model.training:
            return graphed(xb)
        return net(xb)

    return call


# ============================================================================ packs


def prepare_pack(perf: PerformanceConfig, rec: dict[str, Any], net: Any) -> None:
    """Apply to a pack's executor what a pack can use, record the rest: channels_last in
    PackNet's grouped 2-D convolutions; torch.compile and CUDA graphs are not applied to packs
    (their stacks shrink as members finish, so shapes are not static)."""
    if perf.channels_last:
        if getattr(net, "has_conv2d", False):
            net.channels_last = True
            rec["in_effect"]["channels_last"] = True
        elif hasattr(net, "has_conv2d"):
            rec["notes"]["channels_last"] = "no Conv2d on image batches: nothing to convert"
        else:
            rec["notes"]["channels_last"] = "not applied: this pack runs through torch.func.vmap"
    not_applied(
        rec,
        perf,
        "not applied to packs (members leave the stack: shapes change); eager",
        keys=("compile", "cuda_graphs"),
    )
