"""Process-global torch settings, put back after every trial and pack.

A Ray worker process trains many trials one after another. User code (a model factory, a
data loader, a loss, a trainable) may change a process-global torch setting: a factory that
calls `torch.set_default_dtype(torch.float64)` used to make every later trial on that worker
train in float64. `isolated()` snapshots every global setting user code can change and
restores it when the trial or pack ends, however it ends, so a trial's numbers depend on its
config only, never on what ran before it in the same process.

What is snapshotted (`snapshot()`): default dtype, default device, grad mode, anomaly
detection (and its NaN check), deterministic algorithms (and warn-only), intra-op threads,
float32 matmul precision, the fp32_precision of every backend (torch >= 2.9) or the TF32
flags (older torch), cuDNN enabled / benchmark / deterministic, the reduced-precision
reductions of CUDA matmuls, the scaled-dot-product attention backends, mkldnn enabled,
autocast per device type. Flush-denormal has no getter: it is set back to torch's default
(off) on exit.

One owner for the three ways a trial runs: `workers.train.run_trial` (lone trials and user
loops, `trainable:`) and `workers.pack.run_pack` enter it. No Ray here.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

_NEW_TF32_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")
_AUTOCAST_DEVICES = ("cpu", "cuda")


def _fp32_precision_objects() -> dict[str, Any]:
    """Every object with an `fp32_precision` attribute (torch >= 2.9), by dotted name."""
    b = torch.backends
    objs = {
        "backends": b,
        "cuda.matmul": b.cuda.matmul,
        "cudnn": b.cudnn,
        "cudnn.conv": getattr(b.cudnn, "conv", None),
        "cudnn.rnn": getattr(b.cudnn, "rnn", None),
        "mkldnn": b.mkldnn,
        "mkldnn.matmul": getattr(b.mkldnn, "matmul", None),
        "mkldnn.conv": getattr(b.mkldnn, "conv", None),
        "mkldnn.rnn": getattr(b.mkldnn, "rnn", None),
    }
    return {k: v for k, v in objs.items() if v is not None and hasattr(v, "fp32_precision")}


def _settings() -> list[tuple[str, Callable[[], Any], Callable[[Any], None]]]:
    """(name, get, set) of every global setting, in the order they are restored (the
    float32 matmul precision before the per-backend precisions it also sets)."""
    b = torch.backends
    out: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = [
        ("default_dtype", torch.get_default_dtype, torch.set_default_dtype),
        ("grad_enabled", torch.is_grad_enabled, torch.set_grad_enabled),
        (
            "anomaly",
            lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
            lambda v: torch.set_anomaly_enabled(*v),
        ),
        (
            "deterministic_algorithms",
            lambda: (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            ),
            lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1]),
        ),
        ("num_threads", torch.get_num_threads, torch.set_num_threads),
        (
            "float32_matmul_precision",
            torch.get_float32_matmul_precision,
            torch.set_float32_matmul_precision,
        ),
    ]
    if _NEW_TF32_API:
        for name, obj in _fp32_precision_objects().items():
            out.append(
                (
                    f"{name}.fp32_precision",
                    lambda o=obj: o.fp32_precision,
                    lambda v, o=obj: setattr(o, "fp32_precision", v),
                )
            )
    else:  # pragma: no cover - torch < 2.9
        out += [
            (
                "cuda.matmul.allow_tf32",
                lambda: b.cuda.matmul.allow_tf32,
                lambda v: setattr(b.cuda.matmul, "allow_tf32", v),
            ),
            (
                "cudnn.allow_tf32",
                lambda: b.cudnn.allow_tf32,
                lambda v: setattr(b.cudnn, "allow_tf32", v),
            ),
        ]
    for flag in ("enabled", "benchmark", "deterministic"):
        out.append(
            (
                f"cudnn.{flag}",
                lambda f=flag: getattr(b.cudnn, f),
                lambda v, f=flag: setattr(b.cudnn, f, v),
            )
        )
    for flag in (
        "allow_fp16_reduced_precision_reduction",
        "allow_bf16_reduced_precision_reduction",
    ):
        if hasattr(b.cuda.matmul, flag):
            out.append(
                (
                    f"cuda.matmul.{flag}",
                    lambda f=flag: getattr(b.cuda.matmul, f),
                    lambda v, f=flag: setattr(b.cuda.matmul, f, v),
                )
            )
    for sdp in ("flash", "mem_efficient", "math", "cudnn"):
        get, put = (
            getattr(b.cuda, f"{sdp}_sdp_enabled", None),
            getattr(b.cuda, f"enable_{sdp}_sdp", None),
        )
        if get is not None and put is not None:
            out.append((f"cuda.{sdp}_sdp", get, put))
    out.append(
        ("mkldnn.enabled", lambda: b.mkldnn.enabled, lambda v: setattr(b.mkldnn, "enabled", v))
    )
    for d in _AUTOCAST_DEVICES:
        out.append(
            (
                f"autocast.{d}",
                lambda d=d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)),
                lambda v, d=d: _set_autocast(d, *v),
            )
        )
    if hasattr(torch, "get_default_device"):
        out.append(("default_device", torch.get_default_device, _set_default_device))
    return out


def _set_autocast(device_type: str, enabled: bool, dtype: torch.dtype) -> None:
    torch.set_autocast_enabled(device_type, enabled)
    torch.set_autocast_dtype(device_type, dtype)


def _set_default_device(dev: torch.device) -> None:
    # torch.set_default_device(None) removes the device mode: CPU, as in a fresh process.
    torch.set_default_device(None if dev == torch.device("cpu") else dev)


def snapshot() -> dict[str, Any]:
    """Every global torch setting of `_settings()`, by name (unreadable ones left out)."""
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the flags being read
        for name, get, _ in _settings():
            with contextlib.suppress(Exception):
                out[name] = get()
    return out


def restore(saved: dict[str, Any]) -> list[str]:
    """Put back the settings of `saved`; returns the names of those that had changed."""
    changed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, get, put in _settings():
            if name not in saved:
                continue
            with contextlib.suppress(Exception):
                if get() == saved[name]:
                    continue
                put(saved[name])
                changed.append(name)
    with contextlib.suppress(Exception):
        torch.set_flush_denormal(False)  # no getter: torch's default
    return changed


@contextlib.contextmanager
def isolated(num_threads: int | None = None) -> Iterator[dict[str, Any]]:
    """Run a trial or pack with the process's torch settings put back afterwards.

    `num_threads`: the intra-op threads for the duration (None: as the process has them).
    Yields a record: `torch_threads` (the threads the trial starts with; part of the trials
    row's perf_json) and, after exit, `restored` (settings the trial had changed)."""
    saved = snapshot()
    if num_threads is not None and num_threads >= 1:
        torch.set_num_threads(int(num_threads))
    rec: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    try:
        yield rec
    finally:
        rec["restored"] = restore(saved)
