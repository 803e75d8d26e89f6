"""`run_probes`: the probes a MeasureConfig enables, as warehouse rows."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.config import MeasureConfig
from workers.probes.common import LossFn
from workers.probes.curvature import adaptive_sharpness, batch_sharpness
from workers.probes.hessian import hessian_top_eigenvalue
from workers.probes.noise import noise_scale_exact, noise_scale_two_batch
from workers.probes.sharpness import keskar_sharpness, keskar_sharpness_max

PROBES = (
    "keskar_sharpness",
    "hessian_top_eig",
    "noise_scale_two_batch",
    "noise_scale_exact",
    "batch_sharpness",
    "adaptive_sharpness_worst_linf",
    "adaptive_sharpness_worst_l2",
    "adaptive_sharpness_average",
)
# (probe name, settings field of AdaptiveSharpnessConfig with its rho grid, kind, norm)
ADAPTIVE = (
    ("adaptive_sharpness_worst_linf", "worst_linf_rho", "worst", "linf"),
    ("adaptive_sharpness_worst_l2", "worst_l2_rho", "worst", "l2"),
    ("adaptive_sharpness_average", "average_rho", "average", "l2"),
)
ROW_KEYS = ("probe", "epoch", "value", "seconds", "n_examples", "settings_json", "status")


def probe_subset(x: Tensor, y: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed seeded subset of min(n, len(x)) examples: the first n of a seeded permutation.

    The same seed gives nested subsets for different n, so probes of one trial share examples,
    and the same subset at every epoch (sorted indices, so chunking is order-stable).
    """
    N = int(x.shape[0])
    if n >= N:
        return x, y
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:n]
    idx = perm.sort().values.to(x.device)
    return x[idx], y[idx]


def json_value(v: Any) -> Any:
    """Strict JSON: non-finite floats become null (their status is in the row)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_value(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(w) for w in v]
    if isinstance(v, (np.floating, np.integer)):
        return json_value(v.item())
    return v


def probe_row(probe: str, epoch: int, res: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    value = float(res["value"])
    settings = {k: v for k, v in res.items() if k not in ("value", "seconds", "n_examples")}
    settings.update(extra)
    status = "ok" if math.isfinite(value) and not res.get("nonfinite", False) else "diverged"
    return {
        "probe": probe,
        "epoch": int(epoch),
        "value": value,
        "seconds": float(res["seconds"]),
        "n_examples": int(res["n_examples"]),
        "settings_json": json.dumps(json_value(settings), sort_keys=True, allow_nan=False),
        "status": status,
    }


def run_probes(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    measure: MeasureConfig,
    *,
    seed: int,
    epoch: int,
    loss_fn: LossFn = F.cross_entropy,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Run every probe `measure` enables and return one warehouse row per measurement.

    - measure.sharpness: one "keskar_sharpness" row per eps.
    - measure.hessian: one "hessian_top_eig" row.
    - measure.noise_scale: one "noise_scale_two_batch" row (batches drawn from the whole
      training set: the config names no subset for it), plus "noise_scale_exact" when the model
      has <= exact_max_params trainable parameters.
    - measure.batch_sharpness (workers/probe_settings.py; read with getattr, so a MeasureConfig
      without the field runs none):
      one "batch_sharpness" row, mini-batches of its batch_size or else `batch_size` (the
      trial's training batch size; the probe is skipped when neither is given).
    - measure.adaptive_sharpness (likewise): one "adaptive_sharpness_<kind>[_<norm>]" row per
      rho of each non-empty grid.

    Each probe uses a fixed subset of the training set: the first n_examples of a permutation
    seeded with `seed` (recorded as "subset_seed"); probe randomness also uses `seed`. Rows have
    exactly the keys ROW_KEYS; a non-finite loss or eigenvalue gives value NaN and status
    "diverged" (never an exception). Runs on whatever device the model and tensors are on.
    """
    rows: list[dict[str, Any]] = []
    common = {"model_mode": "eval", "subset_seed": seed, "n_train": int(x_train.shape[0])}
    loss_name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    common["loss"] = loss_name

    if measure.sharpness is not None:
        cfg = measure.sharpness
        xs, ys = probe_subset(x_train, y_train, cfg.n_examples, seed)
        for eps in cfg.eps:
            if cfg.restarts or cfg.solver == "both":
                res = keskar_sharpness_max(
                    model,
                    xs,
                    ys,
                    eps=eps,
                    solver=cfg.solver,
                    restarts=cfg.restarts,
                    max_iter=cfg.max_iter,
                    subspace_dim=cfg.subspace_dim,
                    seed=seed,
                    loss_fn=loss_fn,
                )
            else:
                res = keskar_sharpness(
                    model,
                    xs,
                    ys,
                    eps=eps,
                    solver=cfg.solver,
                    max_iter=cfg.max_iter,
                    subspace_dim=cfg.subspace_dim,
                    seed=seed,
                    start="zero",
                    loss_fn=loss_fn,
                )
            rows.append(probe_row("keskar_sharpness", epoch, res, common))

    if measure.hessian is not None:
        cfg_h = measure.hessian
        xs, ys = probe_subset(x_train, y_train, cfg_h.n_examples, seed)
        res = hessian_top_eigenvalue(
            model, xs, ys, max_iter=cfg_h.max_iter, tol=cfg_h.tol, seed=seed, loss_fn=loss_fn
        )
        rows.append(probe_row("hessian_top_eig", epoch, res, {**common, "tol": cfg_h.tol}))

    if measure.noise_scale is not None:
        cfg_n = measure.noise_scale
        res = noise_scale_two_batch(
            model,
            x_train,
            y_train,
            b_small=cfg_n.b_small,
            b_big=cfg_n.b_big,
            n_batches=cfg_n.n_batches,
            seed=seed,
            loss_fn=loss_fn,
        )
        rows.append(probe_row("noise_scale_two_batch", epoch, res, common))
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n_params <= cfg_n.exact_max_params:
            xs, ys = probe_subset(x_train, y_train, cfg_n.exact_n_examples, seed)
            res = noise_scale_exact(model, xs, ys, loss_fn=loss_fn)
            rows.append(
                probe_row("noise_scale_exact", epoch, res, {**common, "n_params": n_params})
            )

    cfg_b = getattr(measure, "batch_sharpness", None)
    bs = None if cfg_b is None else (cfg_b.batch_size or batch_size)
    if cfg_b is not None and bs is not None:
        xs, ys = probe_subset(x_train, y_train, cfg_b.n_examples, seed)
        res = batch_sharpness(
            model,
            xs,
            ys,
            batch_size=min(int(bs), int(xs.shape[0])),
            n_batches=cfg_b.n_batches,
            seed=seed,
            loss_fn=loss_fn,
        )
        rows.append(probe_row("batch_sharpness", epoch, res, common))

    cfg_a = getattr(measure, "adaptive_sharpness", None)
    if cfg_a is not None:
        xs, ys = probe_subset(x_train, y_train, cfg_a.n_examples, seed)
        for probe, field, kind, norm in ADAPTIVE:
            for rho in getattr(cfg_a, field):
                res = adaptive_sharpness(
                    model,
                    xs,
                    ys,
                    rho=rho,
                    norm=norm,
                    kind=kind,
                    n_iter=cfg_a.n_iter,
                    n_samples=cfg_a.n_samples,
                    eta=cfg_a.eta,
                    seed=seed,
                    loss_fn=loss_fn,
                )
                rows.append(probe_row(probe, epoch, res, common))
    return rows
